"""Model configs and presets: validation, dict round trip, parameter counts derived from the formula."""

from __future__ import annotations

import math

import pytest
import torch

from polycom.models import PRESETS, ModelConfig, MoEConfig, build_model, get_preset

PLAIN = ["gelu", "relu", "relu2", "polyrelu", "polynorm", "silu"]
GATED = ["swiglu", "geglu", "polyrelu_glu", "polynorm_glu"]
POLY = {"polyrelu", "polynorm", "polyrelu_glu", "polynorm_glu"}


def count(cfg: ModelConfig, non_embedding: bool = False) -> int:
    return build_model(cfg, device="meta").num_parameters(non_embedding)


# ---------------------------------------------------------------------------------------------------
def test_from_dict_round_trip_dense_and_moe():
    for name in PRESETS:
        cfg = get_preset(name)
        again = ModelConfig.from_dict(cfg.to_dict())
        assert again == cfg
    d = get_preset("moe-tiny").to_dict()
    assert isinstance(d["moe"], dict) and d["moe"]["num_experts"] == 8


def test_from_dict_unknown_key_lists_valid_keys():
    with pytest.raises(ValueError, match=r"unknown model config key\(s\) d_modle.*valid keys: .*d_model"):
        ModelConfig.from_dict({"d_modle": 64})
    with pytest.raises(ValueError, match=r"moe\.experts.*moe\.num_experts"):
        ModelConfig.from_dict({"moe": {"experts": 4}})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"d_model": 130, "n_heads": 4}, "divisible by n_heads"),
        ({"d_model": 96, "n_heads": 32}, "must be even for RoPE"),
        ({"n_heads": 4, "n_kv_heads": 3}, "n_kv_heads"),
        ({"activation": "swish9"}, "unknown activation 'swish9'"),
        ({"vocab_size": 0}, "vocab_size must be a positive integer"),
        ({"moe": MoEConfig(num_experts=4, top_k=5)}, "top_k"),
        ({"moe": {"num_experts": 0}}, "num_experts"),
    ],
)
def test_invalid_config_names_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


def test_get_preset_unknown_lists_presets_and_returns_copies():
    with pytest.raises(ValueError, match="unknown model preset 'huge'.*tiny.*paper-moe-1b-7b"):
        get_preset("huge")
    a = get_preset("moe-tiny")
    a.moe.num_experts = 3
    a.d_model = 64
    assert PRESETS["moe-tiny"].moe.num_experts == 8 and get_preset("moe-tiny").d_model == 128
    b = get_preset("tiny", activation="polynorm", n_layers=3)
    assert (b.activation, b.n_layers) == ("polynorm", 3)
    with pytest.raises(ValueError, match="valid keys"):
        get_preset("tiny", layers=3)


def test_required_presets_exist():
    for name in ("tiny", "small", "125m", "350m", "paper-1b", "moe-tiny", "paper-moe-1b-7b"):
        assert name in PRESETS


# ---------------------------------------------------------------------------------------------------
def dense_formula(V, d, L, h, gated, tied, kv_dim=None, coeffs=0):
    """Parameters of the dense LM written out: embeddings, attention, MLP, norms, coefficients."""
    kv_dim = d if kv_dim is None else kv_dim
    attn = d * d + 2 * d * kv_dim + d * d
    mlp = (3 if gated else 2) * d * h
    per_layer = attn + mlp + 2 * d + coeffs
    return V * d * (1 if tied else 2) + L * per_layer + d


def test_paper_1b_parameter_count_from_formula():
    # Paper: 24 layers, d 2048, 16 heads, vocab 32000, SwiGLU 5504 vs 8256 non-gated, untied embeddings.
    sw = dense_formula(32000, 2048, 24, 5504, gated=True, tied=False)
    pn = dense_formula(32000, 2048, 24, 8256, gated=False, tied=False, coeffs=4)
    assert count(get_preset("paper-1b")) == sw
    assert count(get_preset("paper-1b", activation="polynorm")) == pn
    assert 1.33e9 < sw < 1.37e9  # "1B": ~1.35B incl. embeddings
    non_emb = count(get_preset("paper-1b"), non_embedding=True)
    assert non_emb == sw - 2 * 32000 * 2048
    assert abs(pn - sw) / sw < 1e-6  # parity is exact up to the 4 scalars per layer


def test_paper_moe_parameter_count_from_formula():
    # OLMoE-1B-7B: 16 layers, d 2048, 64 experts top-8, vocab 50304, QK-norm; expert 1024 SwiGLU vs 1536 PolyNorm.
    V, d, L, E, k = 50304, 2048, 16, 64, 8
    per_layer_common = 4 * d * d + 2 * d + 2 * d + E * d  # attention, q/k norms, block norms, router
    sw_expert, pn_expert = 3 * d * 1024, 2 * d * 1536
    assert sw_expert == pn_expert == 6_291_456
    sw = 2 * V * d + d + L * (per_layer_common + E * sw_expert)
    pn = 2 * V * d + d + L * (per_layer_common + E * pn_expert + 4)
    assert count(get_preset("paper-moe-1b-7b")) == sw
    assert count(get_preset("paper-moe-1b-7b", activation="polynorm")) == pn
    assert 6.8e9 < sw < 7.0e9
    model = build_model(get_preset("paper-moe-1b-7b"), device="meta")
    active = 2 * V * d + d + L * (per_layer_common + k * sw_expert)
    assert model.num_active_parameters() == active
    assert 1.2e9 < active < 1.35e9
    assert model.layers[0].mlp.experts.hidden_size == 1024
    assert (
        build_model(get_preset("paper-moe-1b-7b", activation="polynorm"), device="meta")
        .layers[0]
        .mlp.experts.hidden_size
        == 1536
    )


@pytest.mark.parametrize("preset", ["tiny", "small", "125m", "350m", "anchor", "paper-1b", "moe-tiny"])
def test_parameter_parity_across_activations(preset):
    base = count(get_preset(preset))
    # Every activation on the small presets; one per kind on the large ones (each meta build costs ~0.3 s).
    activations = PLAIN + GATED if preset in ("tiny", "small", "moe-tiny") else ["gelu", "polynorm", "polyrelu_glu"]
    for act in activations:
        n = count(get_preset(preset, activation=act))
        assert abs(n - base) / base < 0.01, (preset, act, n, base)


def test_small_preset_is_about_20m_non_embedding():
    n = count(get_preset("small"), non_embedding=True)
    assert 17e6 < n < 23e6


def test_gqa_and_tied_counts_from_formula():
    cfg = ModelConfig(vocab_size=100, d_model=64, n_layers=3, n_heads=8, n_kv_heads=2, tie_embeddings=True)
    kv_dim = 2 * (64 // 8)
    h = 64 * math.ceil(8 * 64 / 3 / 64)
    assert count(cfg) == dense_formula(100, 64, 3, h, gated=True, tied=True, kv_dim=kv_dim)


def test_shared_vs_per_expert_coefficient_counts():
    for act in ("polynorm", "polyrelu", "polynorm_glu"):
        shared = get_preset("moe-tiny", activation=act, activation_order=4)
        per_expert = get_preset("moe-tiny", activation=act, activation_order=4)
        per_expert.moe.shared_coefficients = False
        E, L, r = shared.moe.num_experts, shared.n_layers, 4
        assert count(per_expert) - count(shared) == L * (E - 1) * (r + 1)
    # Non-PolyCom activations have no coefficients: no difference.
    sw = get_preset("moe-tiny")
    sw_pe = get_preset("moe-tiny")
    sw_pe.moe.shared_coefficients = False
    assert count(sw) == count(sw_pe)


def test_activation_order_only_reaches_polycom_activations():
    for act in PLAIN + GATED:
        model = build_model(ModelConfig(activation=act, activation_order=5))
        act_mod = model.layers[0].mlp.act
        if act in POLY:
            assert act_mod.weight.shape == (5,)
            torch.testing.assert_close(act_mod.weight, torch.full((5,), 0.2))
            assert act_mod.bias.item() == 0.0
        else:
            assert not list(act_mod.parameters())


def test_explicit_widths_are_used_literally():
    cfg = ModelConfig(activation="polynorm", hidden_size=200)
    assert build_model(cfg).layers[0].mlp.hidden_size == 200
    moe = ModelConfig(activation="gelu", moe=MoEConfig(num_experts=4, top_k=2, expert_hidden_size=40))
    assert build_model(moe).layers[0].mlp.experts.hidden_size == 40
    # Default MoE width: gated d/2 rounded up to multiple_of, plain 1.5x.
    assert ModelConfig(d_model=128, moe=MoEConfig()).expert_hidden_size() == 64
    assert ModelConfig(d_model=128, activation="polyrelu", moe=MoEConfig()).expert_hidden_size() == 96
