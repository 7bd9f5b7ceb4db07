"""Approximation-rate study: targets, FC nets, slope fits, a tiny end-to-end run, bad input."""

import json
import math

import numpy as np
import pytest
import torch

from polycom.analysis.theory.approx import ApproxConfig, run_approx, write_approx_outputs
from polycom.analysis.theory.fcnet import FCNet, FCNetConfig, fcnet_param_count
from polycom.analysis.theory.stats import fit_loglog_slope
from polycom.analysis.theory.targets import get_target, grid_unit_cube, target_names

ACTIVATIONS = ["relu", "relu2", "gelu", "polyrelu", "polynorm"]


@pytest.mark.parametrize("name", target_names())
def test_targets_shapes_and_values(name):
    t = get_target(name)
    x = grid_unit_cube(5, t.dim)
    y = t(x)
    assert y.shape == (x.shape[0],) and torch.isfinite(y).all()
    if t.theory_slope is not None:
        assert t.theory_slope == pytest.approx(-t.smoothness / t.dim)


def test_abspow_target_formula():
    t = get_target("abspow2d")
    x = torch.tensor([[0.3, 0.4], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    expected = [0.0, math.hypot(0.7, 0.4) ** 1.5, math.hypot(0.3, 0.6) ** 1.5]
    assert t(x).tolist() == pytest.approx(expected, abs=1e-12)
    t3 = get_target("abspow1d_k2")
    assert t3.smoothness == 2.5
    assert t3(torch.tensor([[0.0]], dtype=torch.float64)).item() == pytest.approx(0.3**2.5)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("in_dim,width,depth", [(1, 3, 1), (2, 5, 2), (3, 4, 3)])
def test_fcnet_param_count_and_forward(activation, in_dim, width, depth):
    cfg = FCNetConfig(in_dim, width, depth, activation)
    net = FCNet(cfg, dtype=torch.float64)
    assert net.num_parameters() == fcnet_param_count(cfg)
    linear = in_dim * width + width + (depth - 1) * (width * width + width) + width + 1
    assert fcnet_param_count(cfg) == linear + (depth * 4 if activation.startswith("poly") else 0)
    y = net(torch.rand(7, in_dim, dtype=torch.float64))
    assert y.shape == (7,) and y.dtype == torch.float64


def test_fcnet_polynorm_normalises_over_the_layer_width():
    net = FCNet(FCNetConfig(1, 6, 1, "polynorm"), dtype=torch.float64)
    captured = {}
    net.acts[0].register_forward_hook(lambda m, a, o: captured.update(x=a[0], y=o))
    net(torch.rand(4, 1, dtype=torch.float64))
    x, y = captured["x"], captured["y"]

    def n(u):
        return u / torch.sqrt((u**2).mean(-1, keepdim=True) + 1e-6)

    torch.testing.assert_close(y, (n(x**3) + n(x**2) + n(x)) / 3)


def test_slope_fit_exact_power_law_and_interval():
    x = np.array([10, 30, 100, 300, 1000.0])
    fit = fit_loglog_slope(x, 3.0 * x**-1.5)
    assert fit.slope == pytest.approx(-1.5) and fit.r2 == pytest.approx(1.0)
    assert fit.ci_high - fit.ci_low == pytest.approx(0.0, abs=1e-9)
    rng = np.random.default_rng(0)
    y = 2.0 * x**-0.7 * np.exp(rng.normal(0, 0.2, x.size))
    fit = fit_loglog_slope(x, y)
    # independent reference: ordinary least squares by numpy + t quantile from scipy
    from scipy import stats

    ref = stats.linregress(np.log10(x), np.log10(y))
    assert fit.slope == pytest.approx(ref.slope) and fit.stderr == pytest.approx(ref.stderr)
    half = stats.t.ppf(0.975, x.size - 2) * ref.stderr
    assert (fit.ci_low, fit.ci_high) == pytest.approx((ref.slope - half, ref.slope + half))
    assert fit_loglog_slope([1, 10], [1, 0.1]).ci_low is None
    with pytest.raises(ValueError, match="positive"):
        fit_loglog_slope([1, 2, 3], [1, 0, 1])


def test_tiny_approx_run_error_decreases_with_width(tmp_path):
    cfg = ApproxConfig(
        targets=["sin1d"],
        activations=ACTIVATIONS,
        widths=[2, 12],
        seeds=1,
        adam_steps=200,
        lbfgs_steps=40,
        n_train=128,
        n_test=512,
    )
    result = run_approx(cfg, progress=False)
    assert len(result["fits"]) == 10
    assert all(0 < f["lbfgs_iters"] <= 40 and math.isfinite(f["grad_norm"]) for f in result["fits"])
    assert all(f["train_mse"] <= f["adam_mse"] for f in result["fits"])  # L-BFGS never makes the result worse
    sizes_all = [f["params"] for f in result["fits"]]
    assert result["summary"]["sin1d"]["param_decades"] == pytest.approx(math.log10(max(sizes_all) / min(sizes_all)))
    for act in ACTIVATIONS:
        sizes = result["summary"]["sin1d"]["activations"][act]["sizes"]
        assert [s["width"] for s in sizes] == [2, 12]
        assert sizes[1]["l2_best"] < sizes[0]["l2_best"], act
        assert sizes[1]["sup_best"] < sizes[0]["sup_best"], act
        assert sizes[1]["l2_best"] < 0.05, act
        assert result["summary"]["sin1d"]["activations"][act]["slope_l2"]["slope"] < 0
    paths = write_approx_outputs(result, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["config"]["widths"] == [2, 12] and len(data["fits"]) == 10
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["markdown"].read_text()
    assert "## sin1d" in md and all(f"| {a} |" in md for a in ACTIVATIONS)


def test_fits_are_reproducible():
    from polycom.analysis.theory.approx import fit_one

    cfg = ApproxConfig(targets=["abspow1d"], adam_steps=20, lbfgs_steps=5, n_train=64, n_test=64)
    t = get_target("abspow1d")
    a = fit_one(t, "polyrelu", 4, 1, 3, cfg)
    b = fit_one(t, "polyrelu", 4, 1, 3, cfg)
    assert (a.l2, a.sup) == (b.l2, b.sup)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"targets": ["nope"]}, "unknown target function 'nope'"),
        ({"targets": []}, "targets list is empty"),
        ({"activations": ["tanhh"]}, "unknown activation 'tanhh'"),
        ({"activations": ["swiglu"]}, "gated"),
        ({"widths": []}, "widths list is empty"),
        ({"widths": [4, 0]}, r"widths must be positive integers, got \[0\]"),
        ({"widths": [-3]}, "widths must be positive"),
        ({"depths": [0]}, "depths must be positive"),
        ({"seeds": 0}, "seeds"),
        ({"dtype": "float16"}, "dtype"),
    ],
)
def test_bad_config_is_a_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ApproxConfig(**kwargs)
