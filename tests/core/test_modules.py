"""PolyNorm / PolyReLU modules: init, state dicts (official layout), dtypes under autocast."""

from __future__ import annotations

import pytest
import torch

import polycom

ALL = [polycom.PolyNorm, polycom.PolyReLU, polycom.PolyNormGated, polycom.PolyReLUGated]


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("order", [1, 3, 6])
def test_init_follows_official_code(cls, order):
    m = cls(order=order)
    assert m.weight.shape == (order,) and m.bias.shape == (1,)
    assert m.weight.dtype == torch.float32 and m.bias.dtype == torch.float32
    assert torch.equal(m.weight, torch.full((order,), 1.0 / order))
    assert torch.equal(m.bias, torch.zeros(1))
    with torch.no_grad():
        m.weight.normal_()
        m.bias.fill_(3.0)
    m.reset_parameters()
    assert torch.equal(m.weight, torch.full((order,), 1.0 / order)) and m.bias.item() == 0.0


def test_extra_repr_names_order_and_eps():
    assert "order=4" in repr(polycom.PolyReLU(order=4))
    text = repr(polycom.PolyNorm(order=2, eps=1e-5))
    assert "order=2" in text and "eps=1e-05" in text


def test_state_dict_keys_and_round_trip():
    a = polycom.PolyNorm()
    with torch.no_grad():
        a.weight.copy_(torch.tensor([0.1, 0.2, 0.3]))
        a.bias.fill_(0.5)
    sd = a.state_dict()
    assert set(sd) == {"weight", "bias"}
    b = polycom.PolyNorm()
    b.load_state_dict(sd)
    x = torch.randn(3, 8)
    torch.testing.assert_close(a(x), b(x))


def test_loads_official_format_state_dict():
    """Official checkpoints hold weight (3,) with the cubic coefficient first, and bias (1,)."""
    official = {"weight": torch.tensor([0.7, -0.2, 0.4]), "bias": torch.tensor([0.05])}
    m = polycom.PolyReLU()
    m.load_state_dict(official)
    x = torch.tensor([[-1.0, 0.5, 2.0]])
    r = torch.relu(x)
    torch.testing.assert_close(m(x), 0.7 * r**3 - 0.2 * r**2 + 0.4 * r + 0.05)


def test_module_matches_functional():
    m = polycom.PolyNorm(order=3, eps=1e-5)
    x = torch.randn(4, 16)
    torch.testing.assert_close(m(x), polycom.poly_norm(x, m.weight, m.bias, 1e-5))
    g = polycom.PolyNormGated()
    up = torch.randn(4, 16)
    torch.testing.assert_close(g(x, up), polycom.poly_norm(x, g.weight, g.bias) * up)


@pytest.mark.parametrize("cls", [polycom.PolyNorm, polycom.PolyReLU])
def test_parameters_stay_fp32_under_bf16_autocast(cls):
    lin = torch.nn.Linear(8, 16)
    act = cls()
    x = torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = act(lin(x))
    assert y.dtype == torch.bfloat16
    assert act.weight.dtype == torch.float32 and act.bias.dtype == torch.float32
    y.float().sum().backward()
    assert act.weight.grad.dtype == torch.float32 and torch.isfinite(act.weight.grad).all()
