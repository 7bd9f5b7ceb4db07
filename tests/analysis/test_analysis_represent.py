"""Exact representation of ReLU / ReLU^2 nets by PolyReLU nets, and the sawtooth ReLU constructions."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from polycom import PolyReLU
from polycom.analysis.theory.represent import (
    construction_curve,
    cube_net,
    random_relu_net,
    square_net,
    to_polyrelu,
    verify_representation,
)

SHAPES = [(1, [1], 1), (1, [8], 1), (3, [16, 16], 2), (5, [32, 7, 19], 4), (2, [64, 64, 64, 64], 1), (17, [3], 9)]


def _reference_forward(net: nn.Sequential, x: torch.Tensor, activation: str) -> torch.Tensor:
    """fp64 forward written from the definition: affine maps with relu (or relu^2) between them."""
    h = x.double()
    linears = [m for m in net if isinstance(m, nn.Linear)]
    for i, lin in enumerate(linears):
        h = h @ lin.weight.double().T + lin.bias.double()
        if i < len(linears) - 1:
            h = torch.clamp(h, min=0.0)
            if activation == "relu2":
                h = h * h
    return h


@pytest.mark.parametrize("activation", ["relu", "relu2"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}-{'x'.join(map(str, s[1]))}-{s[2]}")
def test_polyrelu_net_computes_the_same_function(activation, shape):
    in_dim, widths, out_dim = shape
    gen = torch.Generator().manual_seed(hash((activation, in_dim, tuple(widths))) % 2**31)
    source = random_relu_net(in_dim, widths, out_dim, activation, generator=gen)
    poly = to_polyrelu(source)

    # Same architecture: every activation is a PolyReLU, linear layers identical in shape and value.
    src_lin = [m for m in source if isinstance(m, nn.Linear)]
    poly_lin = [m for m in poly if isinstance(m, nn.Linear)]
    assert [tuple(m.weight.shape) for m in src_lin] == [tuple(m.weight.shape) for m in poly_lin]
    assert all(torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias) for a, b in zip(src_lin, poly_lin))
    acts = [m for m in poly if not isinstance(m, nn.Linear)]
    assert len(acts) == len(widths) and all(isinstance(a, PolyReLU) for a in acts)
    assert not any(isinstance(m, nn.ReLU) for m in poly)

    x = (2 * torch.rand(2048, in_dim, generator=gen) - 1) * 3.0
    with torch.no_grad():
        y_src, y_poly = source(x), poly(x)
    # Bitwise equal in fp32 (the unused powers get exact zero coefficients) ...
    assert torch.equal(y_src, y_poly)
    # ... and both match the fp64 definition of the source network.
    ref = _reference_forward(source, x, activation)
    scale = ref.abs().max().item() + 1.0
    assert (y_poly.double() - ref).abs().max().item() <= 1e-5 * scale


def test_polyrelu_net_gradients_match():
    gen = torch.Generator().manual_seed(3)
    source = random_relu_net(4, [12, 12], 3, "relu", generator=gen)
    poly = to_polyrelu(source)
    x = torch.randn(64, 4, generator=gen)
    source(x).square().sum().backward()
    poly(x).square().sum().backward()
    for a, b in zip([m for m in source if isinstance(m, nn.Linear)], [m for m in poly if isinstance(m, nn.Linear)]):
        torch.testing.assert_close(a.weight.grad, b.weight.grad, rtol=0, atol=0)


def test_verify_representation_reports_sizes():
    gen = torch.Generator().manual_seed(1)
    source = random_relu_net(3, [5, 6], 2, "relu", generator=gen)
    check = verify_representation(source, n_inputs=100, generator=gen)
    linear = 3 * 5 + 5 + 5 * 6 + 6 + 6 * 2 + 2
    assert check.source_params == linear
    assert check.polyrelu_linear_params == linear
    assert check.polyrelu_params == linear + 2 * 4  # r + 1 = 4 coefficients per activation layer
    assert check.bitwise_equal and check.max_abs_diff == 0.0


def test_to_polyrelu_rejects_other_layers():
    with pytest.raises(ValueError, match="Tanh"):
        to_polyrelu(nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)))
    with pytest.raises(ValueError, match="no ReLU"):
        to_polyrelu(nn.Sequential(nn.Linear(2, 3)))
    with pytest.raises(ValueError, match="nn.Sequential"):
        to_polyrelu(nn.Linear(2, 3))
    with pytest.raises(ValueError, match="activation"):
        random_relu_net(2, [3], 1, "tanh")
    with pytest.raises(ValueError, match="widths"):
        random_relu_net(2, [], 1)


@pytest.mark.parametrize("m", [1, 2, 3, 6])
def test_square_net_is_the_piecewise_linear_interpolant_of_x_squared(m):
    net = square_net(m)
    x = np.linspace(0, 1, 2 ** (m + 4) + 1)
    knots = np.linspace(0, 1, 2**m + 1)
    interp = np.interp(x, knots, knots**2)  # Yarotsky: f_m interpolates x^2 at k / 2^m
    np.testing.assert_allclose(net(x[:, None])[:, 0], interp, rtol=0, atol=1e-12)
    err = np.max(np.abs(net(x[:, None])[:, 0] - x**2))
    assert err == pytest.approx(4.0 ** -(m + 1), rel=1e-9)
    assert net.depth == m
    # torch version computes the same function
    with torch.no_grad():
        out = net.to_torch()(torch.from_numpy(x[:, None])).numpy()[:, 0]
    np.testing.assert_allclose(out, interp, rtol=0, atol=1e-12)


def test_cube_net_error_bound_and_size_growth():
    x = np.linspace(0, 1, 2**12 + 1)[:, None]
    prev_err, prev_size = math.inf, 0
    for m in range(1, 8):
        net = cube_net(m)
        err = float(np.max(np.abs(net(x)[:, 0] - x[:, 0] ** 3)))
        # y = f_m(x) has error d = 4^-(m+1); |xy - x^3| <= d; each of the three squares adds <= d,
        # weighted 2 + 1/2 + 1/2: total <= 4 d.
        assert err <= 4 * 4.0 ** -(m + 1) + 1e-12
        assert err < prev_err
        size = net.nonzero_params()
        assert size > prev_size
        prev_err, prev_size = err, size


def test_construction_curve_size_grows_linearly_in_log_eps():
    curve = construction_curve("x^2", max_level=8, eps_list=[1e-1, 1e-2, 1e-3, 1e-4])
    assert curve["torch_matches_numpy"]
    levels = curve["levels"]
    # each sawtooth level adds the same number of weights: size is affine in m (= log4(1/error))
    diffs = {b["params"] - a["params"] for a, b in zip(levels[1:-1], levels[2:])}
    assert len(diffs) == 1
    for need in curve["size_for_eps"]:
        lv = levels[need["level"] - 1]
        assert lv["sup_error"] <= need["eps"]
        if need["level"] > 1:
            assert levels[need["level"] - 2]["sup_error"] > need["eps"]  # smallest level that reaches eps
    assert curve["size_vs_log_eps_fit"]["slope"] > 0
    with pytest.raises(ValueError, match="unknown function"):
        construction_curve("x^4")
