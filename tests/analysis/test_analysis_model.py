"""Model analyses on harness models (dense, MoE) built from configs, and the model report."""

import json

import pytest
import torch
from torch import nn

from polycom.analysis.trained.model_analysis import (
    analyze_model,
    effective_rank,
    find_mlp_blocks,
    hidden_state_similarity,
)
from polycom.analysis.trained.model_report import write_model_outputs
from polycom.errors import UserError
from polycom.models import MoEConfig, build_model, get_preset


def _tiny(activation: str, moe: MoEConfig | None = None):
    cfg = get_preset("tiny", activation=activation, n_layers=3, max_seq_len=64)
    if moe is not None:
        cfg = get_preset("tiny", activation=activation, n_layers=3, max_seq_len=64, moe=moe)
    return build_model(cfg)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 256, (3, 32), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("activation", ["swiglu", "polynorm", "polyrelu", "gelu"])
def test_dense_model_analysis(activation, ids):
    model = _tiny(activation)
    with torch.no_grad():
        model.layers[1].mlp.act.weight.copy_(torch.tensor([0.1, 0.2, 0.7])) if activation.startswith("poly") else None
    res = analyze_model(model, ids)
    assert res["n_layers"] == 3 and not res["moe"]
    # effective ranks equal a direct computation on each weight
    for i, layer in enumerate(res["effective_rank"]):
        mlp = model.layers[i].mlp
        assert layer["weights"]["up_proj"]["erank"] == pytest.approx(effective_rank(mlp.up_proj.weight))
        assert layer["weights"]["down_proj"]["erank"] == pytest.approx(effective_rank(mlp.down_proj.weight))
        assert ("gate_proj" in layer["weights"]) == (activation == "swiglu")
    # coefficients read from the activation modules
    if activation.startswith("poly"):
        assert [c["layer"] for c in res["polycom_coefficients"]] == [0, 1, 2]
        assert res["polycom_coefficients"][1]["weight"] == pytest.approx([0.1, 0.2, 0.7])
        assert res["polycom_coefficients"][0]["weight"] == pytest.approx([1 / 3] * 3)
    else:
        assert res["polycom_coefficients"] == []
    # similarity: (L+1) x (L+1), unit diagonal, adjacent = superdiagonal
    sim = torch.tensor(res["similarity"]["matrix"])
    assert sim.shape == (4, 4)
    torch.testing.assert_close(torch.diagonal(sim), torch.ones(4, dtype=sim.dtype), rtol=0, atol=1e-9)
    assert res["similarity"]["adjacent"] == pytest.approx([sim[i, i + 1].item() for i in range(3)])
    # activation statistics over every hidden value: count = tokens x width; moments vs a direct computation
    width = model.layers[0].mlp.hidden_size
    acts = res["activations"]
    assert len(acts) == 3 and all(a["count"] == ids.numel() * width for a in acts)
    captured = {}
    handle = model.layers[2].mlp.down_proj.register_forward_pre_hook(lambda m, a: captured.setdefault("x", a[0]))
    with torch.no_grad():
        model(ids)
    handle.remove()
    x = captured["x"].double()
    assert acts[2]["mean"] == pytest.approx(x.mean().item(), rel=1e-6, abs=1e-9)
    assert acts[2]["std"] == pytest.approx(x.std(unbiased=False).item(), rel=1e-6)
    assert acts[2]["max"] == pytest.approx(x.max().item(), rel=1e-6)


def test_moe_model_analysis(ids):
    model = _tiny("polynorm", MoEConfig(num_experts=4, top_k=2))
    res = analyze_model(model, ids)
    assert res["moe"]
    w = res["effective_rank"][0]["weights"]["up_proj"]
    expected = effective_rank(model.layers[0].mlp.experts.up_proj)
    assert w["erank_per_expert"] == pytest.approx(expected)
    assert w["erank"] == pytest.approx(sum(expected) / 4)
    assert len(res["polycom_coefficients"]) == 3
    # every (token, expert) assignment passes through the shared activation: tokens x top_k rows
    assert res["activations"][0]["count"] == ids.numel() * 2 * model.layers[0].mlp.experts.hidden_size


def test_identity_blocks_have_similarity_one(ids):
    model = _tiny("polynorm")
    with torch.no_grad():  # blocks that add nothing to the residual stream: all hidden states identical
        for block in model.layers:
            block.attn.o_proj.weight.zero_()
            block.mlp.down_proj.weight.zero_()
    sim = torch.tensor(hidden_state_similarity(model, ids)["matrix"])
    torch.testing.assert_close(sim, torch.ones_like(sim), rtol=0, atol=1e-9)


def test_model_without_mlps_is_a_clear_error(ids):
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(8, 8)

        def forward(self, x):
            return self.proj(x)

    class NoMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(256, 8)
            self.layers = nn.ModuleList([Block(), Block()])

        def forward(self, input_ids):
            x = self.embed(input_ids)
            for b in self.layers:
                x = b(x)
            return x

    with pytest.raises(UserError, match="no MLP blocks"):
        analyze_model(NoMLP(), ids)
    with pytest.raises(UserError, match="no list of transformer blocks"):
        find_mlp_blocks(nn.Sequential(nn.Linear(2, 2)))


def test_report_files(tmp_path, ids):
    runs = []
    for act in ("swiglu", "polynorm"):
        res = analyze_model(_tiny(act), ids)
        res.update(label=act, activation=act, path="-", kind="model", validation_source="random ids")
        runs.append(res)
    report = {"provenance": {}, "config": {}, "runs": runs}
    paths = write_model_outputs(report, tmp_path)
    for key in ("json", "markdown", "erank_png", "similarity_png", "activations_png", "coefficients_png"):
        assert paths[key].is_file() and paths[key].stat().st_size > 0
    data = json.loads(paths["json"].read_text())
    assert [r["label"] for r in data["runs"]] == ["swiglu", "polynorm"]
    assert paths["erank_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["markdown"].read_text()
    assert "| swiglu | swiglu | 3 |" in md and "PolyCom coefficients" in md


def test_transformers_llama_model(ids):
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    res = analyze_model(model, ids)
    assert res["n_layers"] == 3
    assert set(res["effective_rank"][0]["weights"]) == {"gate_proj", "up_proj", "down_proj"}
    # gated MLP: the recorded activation output is the input of down_proj, tokens x intermediate_size values
    assert res["activations"][0]["count"] == ids.numel() * 128
    # hidden states agree with transformers' own output_hidden_states (first L entries: block inputs)
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True).hidden_states
    direct = [
        torch.nn.functional.cosine_similarity(hs[i].double(), hs[i + 1].double(), dim=-1).mean().item()
        for i in range(2)
    ]
    assert res["similarity"]["adjacent"][:2] == pytest.approx(direct, abs=1e-6)


def test_moe_per_expert_coefficients(ids):
    model = _tiny("polyrelu", MoEConfig(num_experts=3, top_k=1, shared_coefficients=False))
    with torch.no_grad():
        for e, act in enumerate(model.layers[0].mlp.expert_acts):
            act.weight.fill_(0.1 * (e + 1))
            act.bias.fill_(-0.01 * e)
    res = analyze_model(model, ids)
    c0 = res["polycom_coefficients"][0]
    torch.testing.assert_close(
        torch.tensor(c0["per_expert"]["weight"]), torch.tensor([[0.1] * 3, [0.2] * 3, [0.3] * 3]), rtol=0, atol=1e-7
    )
    assert c0["weight"] == pytest.approx([0.2] * 3) and c0["bias"] == pytest.approx(-0.01)
    # the per-expert activations are hooked one segment at a time: every assignment is counted once
    assert res["activations"][0]["count"] == ids.numel() * model.layers[0].mlp.experts.hidden_size
