"""Parameter-matched widths with a non-default `multiple_of`, through MLP, ModelConfig and the HF config,
and the values of the `polycom info` table.

Rules written here (paper, Llama rounding):

    gated width  h_g = multiple_of * ceil(8 d / (3 multiple_of))
    plain width  h_p = floor(3 h_g / 2)                  (3 d h_g = 2 d h_p weights, up to rounding)
    MoE expert   e_g = multiple_of * ceil(d / (2 multiple_of)),  plain floor(3 e_g / 2)
    MLP params   gated 3 d h_g, plain 2 d h_p, plus r + 1 coefficients for PolyCom activations
"""

from __future__ import annotations

import re

import pytest
import torch

import polycom
from polycom.cli import main as polycom_main
from polycom.models import ModelConfig, MoEConfig, build_model

GATED = {"swiglu", "geglu", "polyrelu_glu", "polynorm_glu"}
POLYCOM = {"polyrelu", "polynorm", "polyrelu_glu", "polynorm_glu", "polycom", "polyprelu", "polyrelunorm"}
EXTRA_PARAMS = {"polyprelu": 1}  # the PReLU slope of PolyPReLU


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def gated_width(d: int, multiple_of: int) -> int:
    return multiple_of * ceil_div(8 * d, 3 * multiple_of)


def width(d: int, activation: str, multiple_of: int) -> int:
    g = gated_width(d, multiple_of)
    return g if activation in GATED else (3 * g) // 2


def expert_width(d: int, activation: str, multiple_of: int) -> int:
    g = multiple_of * ceil_div(d, 2 * multiple_of)
    return g if activation in GATED else (3 * g) // 2


def mlp_params(d: int, activation: str, multiple_of: int, order: int = 3) -> int:
    h = width(d, activation, multiple_of)
    linear = (3 if activation in GATED else 2) * d * h
    return linear + (order + 1 if activation in POLYCOM else 0) + EXTRA_PARAMS.get(activation, 0)


# (d_model, multiple_of) pairs where the non-default multiple changes the width of both kinds.
CASES = [(100, 7), (100, 48), (50, 1), (200, 24)]


@pytest.mark.parametrize("d,multiple_of", CASES)
def test_cases_differ_from_the_default_multiple(d, multiple_of):
    for act in ("swiglu", "polynorm"):
        assert width(d, act, multiple_of) != width(d, act, 64), (d, multiple_of, act)


def test_known_widths():
    """Paper sizes: d = 2048 -> 5504 gated / 8256 plain; d = 100 with multiple_of 7 -> 273 / 409."""
    assert polycom.gated_hidden_size(2048) == 5504 and width(2048, "polynorm", 64) == 8256
    assert polycom.gated_hidden_size(100, 7) == 273 == 7 * 39
    assert polycom.matched_hidden_size(100, "polynorm", 7) == 409


@pytest.mark.parametrize("d,multiple_of", CASES)
@pytest.mark.parametrize("activation", ["swiglu", "polynorm", "polyrelu_glu", "relu2"])
def test_matched_width_and_mlp_follow_multiple_of(d, multiple_of, activation):
    h = width(d, activation, multiple_of)
    assert polycom.matched_hidden_size(d, activation, multiple_of) == h
    mlp = polycom.MLP(d, activation, multiple_of=multiple_of)
    assert mlp.hidden_size == h
    assert mlp.up_proj.weight.shape == (h, d) and mlp.down_proj.weight.shape == (d, h)
    assert (mlp.gate_proj is not None) == (activation in GATED)
    assert sum(p.numel() for p in mlp.parameters()) == mlp_params(d, activation, multiple_of)
    assert polycom.mlp_param_count(d, activation, multiple_of=multiple_of) == mlp_params(d, activation, multiple_of)


@pytest.mark.parametrize("d,multiple_of", [(100, 48), (200, 24)])
@pytest.mark.parametrize("activation", ["swiglu", "polynorm"])
def test_model_config_and_built_model_follow_multiple_of(d, multiple_of, activation):
    cfg = ModelConfig(vocab_size=16, d_model=d, n_layers=2, n_heads=2, activation=activation, multiple_of=multiple_of)
    h = width(d, activation, multiple_of)
    assert cfg.mlp_hidden_size() == h
    with torch.device("meta"):
        model = build_model(cfg)
    widths = [m.hidden_size for m in model.modules() if isinstance(m, polycom.MLP)]
    assert widths == [h, h]
    moe = ModelConfig(
        vocab_size=16, d_model=d, n_heads=2, activation=activation, multiple_of=multiple_of, moe=MoEConfig(4, 2)
    )
    assert moe.expert_hidden_size() == expert_width(d, activation, multiple_of)
    assert expert_width(d, activation, multiple_of) != expert_width(d, activation, 64)


@pytest.mark.parametrize("activation", ["swiglu", "polynorm"])
@pytest.mark.parametrize("moe", [None, MoEConfig(4, 2)], ids=["dense", "moe"])
def test_hf_config_keeps_the_multiple_of_widths(activation, moe):
    """The HF config stores the resolved widths, so a non-default multiple_of survives the round trip."""
    from polycom.hf import PolyComConfig, PolyComForCausalLM

    d, multiple_of = 200, 24
    cfg = ModelConfig(vocab_size=16, d_model=d, n_layers=1, n_heads=2, activation=activation, multiple_of=multiple_of)
    if moe is not None:
        cfg.moe = moe
    hf_config = PolyComConfig.from_model_config(cfg)
    back = hf_config.to_model_config()
    if moe is None:
        h = width(d, activation, multiple_of)
        assert hf_config.intermediate_size == h and back.mlp_hidden_size() == h
        model = PolyComForCausalLM(hf_config)
        assert [m.hidden_size for m in model.modules() if isinstance(m, polycom.MLP)] == [h]
    else:
        e = expert_width(d, activation, multiple_of)
        assert hf_config.moe_intermediate_size == e and back.expert_hidden_size() == e
    reloaded = PolyComConfig.from_dict(hf_config.to_dict())
    assert reloaded.intermediate_size == hf_config.intermediate_size
    assert reloaded.moe_intermediate_size == hf_config.moe_intermediate_size


# ------------------------------------------------------------------------------ the info table


@pytest.mark.parametrize("d,multiple_of", [(10, 1), (100, 7), (2048, 64)])
def test_param_table_values(d, multiple_of):
    table = polycom.mlp_param_table(d, multiple_of=multiple_of)
    base = mlp_params(d, "swiglu", multiple_of)
    assert set(table) == set(polycom.activation_names())
    for name, row in table.items():
        assert row["hidden_size"] == width(d, name, multiple_of), name
        assert row["params"] == mlp_params(d, name, multiple_of), name
        assert row["ratio_to_swiglu"] == pytest.approx(mlp_params(d, name, multiple_of) / base, rel=1e-12), name


def test_param_table_ratio_direction():
    """d = 10, multiple_of = 1: plain relu 2*10*40 = 800 weights vs SwiGLU 3*10*27 = 810 -> 0.9877 (< 1)."""
    table = polycom.mlp_param_table(10, ["swiglu", "relu", "polynorm"], multiple_of=1)
    assert table["relu"]["ratio_to_swiglu"] == pytest.approx(800 / 810)
    assert table["polynorm"]["ratio_to_swiglu"] == pytest.approx(804 / 810)
    assert table["swiglu"]["ratio_to_swiglu"] == 1.0


def test_polycom_info_prints_the_table_values(capsys, monkeypatch):
    """`polycom info --d-model 10`: widths 64 gated / 96 plain, params and the ratio to SwiGLU per row."""
    monkeypatch.setenv("COLUMNS", "200")  # one line per row
    assert polycom_main(["info", "--d-model", "10"]) == 0
    out = capsys.readouterr().out
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line) if c.strip()]
        if len(cells) == 6 and cells[0] in polycom.activation_names():
            rows[cells[0]] = cells
    assert set(rows) == set(polycom.activation_names())
    base = mlp_params(10, "swiglu", 64)
    assert base == 3 * 10 * 64
    for name, (_, gated, hidden, params, ratio, _formula) in rows.items():
        assert gated == ("yes" if name in GATED else "no")
        assert int(hidden) == width(10, name, 64)
        assert int(params.replace(",", "")) == mlp_params(10, name, 64)
        assert ratio == f"{mlp_params(10, name, 64) / base:.4f}", name
    assert rows["polynorm"][4] == "1.0021"  # 1924 / 1920
