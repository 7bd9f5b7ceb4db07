"""Converted MoE folders through `polycom eval` and the trained-model analysis (per-expert statistics)."""

from __future__ import annotations

import json

import pytest
import torch
from hf_tiny_models import EXPERT_HIDDEN, NUM_EXPERTS, one_torch_thread_hf  # noqa: F401

import polycom.hf  # noqa: F401
from polycom import PolyNorm
from polycom.hf import convert, load_converted

LAYERS, D = 2, 32
TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer.\n" * 3


def _olmoe_bytes():
    """A tiny OLMoE whose vocabulary is the byte tokenizer's 256 ids."""
    from transformers import OlmoeConfig, OlmoeForCausalLM

    cfg = OlmoeConfig(
        vocab_size=256,
        hidden_size=D,
        intermediate_size=EXPERT_HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts=NUM_EXPERTS,
        num_experts_per_tok=2,
        max_position_embeddings=512,  # the whole text in one window
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    return OlmoeForCausalLM(cfg)


@pytest.mark.parametrize("per_expert", [False, True])
def test_analysis_of_converted_moe_reports_per_expert_statistics(per_expert):
    from polycom.analysis import analyze_model, find_mlp_blocks

    model = _olmoe_bytes()
    convert(model, "polynorm", "replace", per_expert=per_expert)
    experts = model.model.layers[0].mlp.experts
    acts = list(experts.act_fn) if per_expert else [experts.act_fn]
    with torch.no_grad():
        for e, act in enumerate(acts):
            act.weight.copy_(torch.tensor([0.1, 0.2, 0.3]) + e)
    blocks = find_mlp_blocks(model)
    assert [b.name for b in blocks] == [f"model.layers.{i}.mlp" for i in range(LAYERS)]
    assert all(b.moe and all(isinstance(a, PolyNorm) for a in b.acts) for b in blocks)
    # gate and up are the two halves of the stacked gate_up_proj (E, 2h, d), gate first
    fused = experts.gate_up_proj
    assert torch.equal(blocks[0].weights["gate_proj"], fused[:, :EXPERT_HIDDEN])
    assert torch.equal(blocks[0].weights["up_proj"], fused[:, EXPERT_HIDDEN:])

    report = analyze_model(model.eval(), torch.randint(0, 256, (2, 16)))
    ranks = report["effective_rank"][0]["weights"]
    assert sorted(ranks) == ["down_proj", "gate_proj", "up_proj"]
    assert ranks["gate_proj"]["shape"] == [NUM_EXPERTS, EXPERT_HIDDEN, D]
    assert all(len(r["erank_per_expert"]) == NUM_EXPERTS for r in ranks.values())
    coefficients = report["polycom_coefficients"]
    assert len(coefficients) == LAYERS
    if per_expert:
        per = coefficients[0]["per_expert"]["weight"]
        expected = torch.tensor([[0.1 + e, 0.2 + e, 0.3 + e] for e in range(NUM_EXPERTS)])
        torch.testing.assert_close(torch.tensor(per), expected)
    else:
        assert "per_expert" not in coefficients[0]
        assert coefficients[0]["weight"] == pytest.approx([0.1, 0.2, 0.3])
    assert len(report["activations"]) == LAYERS and all(a["count"] > 0 for a in report["activations"])


def test_polycom_eval_on_a_converted_moe_folder(tmp_path, capsys):
    import math

    from polycom.cli import main
    from polycom.data import ByteTokenizer
    from polycom.hf.persistence import save_converted
    from polycom.hf.tokenizer import to_hf_tokenizer

    model = _olmoe_bytes()
    convert(model, "polynorm", "ungated", per_expert=True)  # only load_converted can rebuild it
    folder = save_converted(model, to_hf_tokenizer(ByteTokenizer()), tmp_path / "olmoe-ug")
    (tmp_path / "t.txt").write_text(TEXT)
    args = ["eval", "--model", str(folder), "--text", str(tmp_path / "t.txt"), "--out", str(tmp_path / "ev")]
    assert main(args) == 0
    result = json.loads((tmp_path / "ev" / "results.json").read_text())["perplexity"][0]
    reloaded = load_converted(folder)
    ids = [10, *TEXT.encode()]  # byte tokenizer has no EOS: the prefix token is a newline
    with torch.no_grad():
        logp = torch.log_softmax(reloaded(torch.tensor([ids[:-1]])).logits[0].double(), -1)
    nll = -sum(logp[i, ids[i + 1]].item() for i in range(len(ids) - 1))
    assert result["nll"] == pytest.approx(nll, rel=1e-6)
    assert result["bits_per_byte"] == pytest.approx(nll / (len(TEXT.encode()) * math.log(2)), rel=1e-6)
