"""`PolyComForCausalLM` against the harness `PolyComLM`: logits, loss, save/load, generate with cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hf_tiny_models import one_torch_thread_hf  # noqa: F401  (autouse fixture)

import polycom.hf  # noqa: F401
from polycom.hf import PolyComConfig, PolyComForCausalLM
from polycom.hf.export import harness_to_hf, hf_to_harness
from polycom.models import ModelConfig, MoEConfig, build_model

CONFIGS = {
    "polynorm-plain-gqa": ModelConfig(
        vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, activation="polynorm"
    ),
    "swiglu-tied-qknorm": ModelConfig(
        vocab_size=64, d_model=32, n_layers=2, n_heads=4, activation="swiglu", tie_embeddings=True, qk_norm=True
    ),
    "polyrelu-glu": ModelConfig(vocab_size=64, d_model=32, n_layers=3, n_heads=2, activation="polyrelu_glu"),
    "moe-polynorm": ModelConfig(
        vocab_size=64, d_model=32, n_layers=2, n_heads=4, activation="polynorm", moe=MoEConfig(num_experts=4, top_k=2)
    ),
}


def _pair(name: str):
    harness = build_model(CONFIGS[name]).eval()
    with torch.no_grad():  # non-trivial PolyCom coefficients, so a mix-up between layers would show
        for i, m in enumerate(harness.modules()):
            if hasattr(m, "order") and hasattr(m, "bias"):
                m.weight.add_(0.05 * (i + 1))
                m.bias.add_(0.01 * i)
    return harness, harness_to_hf(harness)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_and_loss_match_harness(name):
    harness, hf = _pair(name)
    ids = torch.randint(0, 64, (2, 12))
    torch.testing.assert_close(hf(ids).logits, harness(ids).logits, rtol=0, atol=1e-6)
    # HF convention: labels = input_ids, shifted inside; cross-entropy written out independently here
    logits = hf(ids).logits
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, 64).double(), ids[:, 1:].reshape(-1))
    out = hf(ids, labels=ids)
    expected = ce + (out.aux_loss.double() if out.aux_loss is not None else 0.0)
    torch.testing.assert_close(out.loss.double(), expected, rtol=1e-5, atol=1e-6)
    assert (out.aux_loss is not None) == CONFIGS[name].is_moe


@pytest.mark.parametrize("name", ["polynorm-plain-gqa", "swiglu-tied-qknorm", "moe-polynorm"])
def test_save_pretrained_round_trip(name, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    harness, hf = _pair(name)
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "polycom"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is PolyComForCausalLM
    ids = torch.randint(0, 64, (2, 9))
    torch.testing.assert_close(loaded(ids).logits, hf(ids).logits, rtol=0, atol=0)
    back = hf_to_harness(loaded)
    torch.testing.assert_close(back(ids).logits, harness(ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["polynorm-plain-gqa", "moe-polynorm"])
def test_generate_with_cache_matches_harness_greedy(name):
    harness, hf = _pair(name)
    prompt = torch.randint(0, 64, (2, 5))
    expected = harness.generate(prompt, 7, temperature=0, use_cache=False)
    with_cache = hf.generate(prompt, max_new_tokens=7, do_sample=False, use_cache=True)
    without = hf.generate(prompt, max_new_tokens=7, do_sample=False, use_cache=False)
    assert with_cache.tolist() == expected.tolist()
    assert without.tolist() == expected.tolist()


def test_left_padded_batch_generates_like_single_rows():
    _, hf = _pair("polynorm-plain-gqa")
    long, short = torch.randint(1, 64, (6,)), torch.randint(1, 64, (3,))
    ids = torch.stack([long, torch.cat([torch.zeros(3, dtype=torch.long), short])])
    mask = torch.tensor([[1] * 6, [0, 0, 0, 1, 1, 1]])
    batch = hf.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    alone = hf.generate(short[None], max_new_tokens=5, do_sample=False)
    assert batch[1, 6:].tolist() == alone[0, 3:].tolist()
    assert batch[0, 6:].tolist() == hf.generate(long[None], max_new_tokens=5, do_sample=False)[0, 6:].tolist()


def test_config_round_trips_model_config():
    for cfg in CONFIGS.values():
        back = PolyComConfig.from_model_config(cfg).to_model_config()
        assert back.mlp_hidden_size() == cfg.mlp_hidden_size()
        assert back.kv_heads == cfg.kv_heads and back.tie_embeddings == cfg.tie_embeddings
        assert (back.moe is None) == (cfg.moe is None)
        if cfg.moe is not None:
            assert back.expert_hidden_size() == cfg.expert_hidden_size()


def test_from_config_init_matches_harness_rules():
    cfg = PolyComConfig(
        vocab_size=64, hidden_size=64, num_hidden_layers=8, num_attention_heads=4, activation="polynorm"
    )
    model = PolyComForCausalLM(cfg)
    layer = model.model.layers[0]
    torch.testing.assert_close(layer.mlp.act.weight.detach(), torch.full((3,), 1 / 3))
    assert torch.equal(layer.attn_norm.weight.detach(), torch.ones(64))
    # o_proj and down_proj get std / sqrt(2 L) = 0.02 / 4
    assert abs(layer.attn.q_proj.weight.std().item() - 0.02) < 0.003
    assert abs(layer.mlp.down_proj.weight.std().item() - 0.005) < 0.001


def test_unknown_activation_is_rejected():
    with pytest.raises(ValueError, match="unknown activation 'polynrm'"):
        PolyComConfig(activation="polynrm")


@pytest.mark.parametrize("name", ["polynorm-plain-gqa", "moe-polynorm"])
def test_gradient_checkpointing_gives_the_same_gradients(name):
    _, hf = _pair(name)
    ids = torch.randint(0, 64, (2, 10))
    hf.train()
    hf(ids, labels=ids).loss.backward()
    expected = {n: p.grad.clone() for n, p in hf.named_parameters() if p.grad is not None}
    hf.zero_grad()
    hf.activation_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in hf.model.layers)
    hf(ids, labels=ids, use_cache=False).loss.backward()
    for n, p in hf.named_parameters():
        if n in expected:
            torch.testing.assert_close(p.grad, expected[n], rtol=1e-5, atol=1e-7)
