"""Activation registry and the parameter-matched MLP."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import polycom

REQUIRED = ["relu", "gelu", "silu", "relu2", "swiglu", "geglu", "polyrelu", "polynorm", "polyrelu_glu", "polynorm_glu"]


def test_registry_has_required_names():
    assert set(REQUIRED) <= set(polycom.activation_names())


def test_unknown_activation_lists_known_ones():
    with pytest.raises(ValueError, match="unknown activation 'swishglu'") as info:
        polycom.get_activation("swishglu")
    for name in REQUIRED:
        assert name in str(info.value)


def test_unknown_option_is_named():
    with pytest.raises(TypeError, match="does not take eps"):
        polycom.get_activation("polyrelu", eps=1e-5)


def test_activation_kwargs_reach_the_module():
    act = polycom.get_activation("polynorm", order=4, eps=1e-5)
    assert act.order == 4 and act.eps == 1e-5


@pytest.mark.parametrize(
    "name, fn",
    [
        ("relu", torch.relu),
        ("gelu", F.gelu),
        ("silu", F.silu),
        ("relu2", lambda x: torch.relu(x) ** 2),
    ],
)
def test_plain_activations_compute_their_formula(name, fn):
    x = torch.randn(3, 10)
    torch.testing.assert_close(polycom.get_activation(name)(x), fn(x))


@pytest.mark.parametrize("name, fn", [("swiglu", F.silu), ("geglu", F.gelu)])
def test_glu_activations(name, fn):
    g, u = torch.randn(3, 10), torch.randn(3, 10)
    torch.testing.assert_close(polycom.get_activation(name)(g, u), fn(g) * u)


def test_paper_widths_at_d2048():
    assert polycom.gated_hidden_size(2048) == 5504
    assert polycom.matched_hidden_size(2048, "swiglu") == 5504
    assert polycom.matched_hidden_size(2048, "polynorm") == 8256


@pytest.mark.parametrize("d", [128, 1024, 2048])
def test_plain_polynorm_and_swiglu_parameter_parity(d):
    a = polycom.mlp_param_count(d, "polynorm")
    b = polycom.mlp_param_count(d, "swiglu")
    assert abs(a - b) / b < 0.01
    # independent count: 2 d h_plain + 4 coefficients vs 3 d h_gated
    assert a == 2 * d * polycom.matched_hidden_size(d, "polynorm") + 4
    assert b == 3 * d * polycom.gated_hidden_size(d)


@pytest.mark.parametrize("name", REQUIRED)
def test_mlp_forward_backward_every_activation(name):
    mlp = polycom.MLP(32, name)
    assert (mlp.gate_proj is not None) == name.endswith("glu")
    x = torch.randn(2, 5, 32, requires_grad=True)
    y = mlp(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all()


def test_mlp_formula_plain_and_gated():
    x = torch.randn(4, 16)
    plain = polycom.MLP(16, "relu2", hidden_size=24)
    torch.testing.assert_close(plain(x), torch.relu(x @ plain.up_proj.weight.T) ** 2 @ plain.down_proj.weight.T)
    gated = polycom.MLP(16, "swiglu", hidden_size=24)
    h = F.silu(x @ gated.gate_proj.weight.T) * (x @ gated.up_proj.weight.T)
    torch.testing.assert_close(gated(x), h @ gated.down_proj.weight.T)


def test_mlp_shares_an_activation_module():
    shared = polycom.PolyNorm()
    experts = [polycom.MLP(16, shared, hidden_size=24) for _ in range(3)]
    assert all(e.act is shared for e in experts)
    container = torch.nn.ModuleList(experts)
    assert sum(p.numel() for p in container.parameters()) == 3 * 2 * 16 * 24 + 4


def test_mlp_param_table_reports_each_activation():
    table = polycom.mlp_param_table(2048, ["swiglu", "polynorm"])
    assert table["swiglu"]["hidden_size"] == 5504 and table["polynorm"]["hidden_size"] == 8256
    assert table["polynorm"]["params"] == 2 * 2048 * 8256 + 4
