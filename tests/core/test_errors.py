"""Bad input raises a clear error that names the problem, on every op and module."""

from __future__ import annotations

import pytest
import torch

import polycom

W, B = torch.full((3,), 1 / 3), torch.zeros(1)
OPS = {
    "poly_norm": lambda x, w=W, b=B: polycom.poly_norm(x, w, b),
    "poly_relu": lambda x, w=W, b=B: polycom.poly_relu(x, w, b),
    "poly_norm_gated": lambda x, w=W, b=B: polycom.poly_norm_gated(x, x, w, b),
    "poly_relu_gated": lambda x, w=W, b=B: polycom.poly_relu_gated(x, x, w, b),
}


@pytest.mark.parametrize("op", OPS)
def test_integer_input_is_a_type_error(op):
    with pytest.raises(TypeError, match="floating-point"):
        OPS[op](torch.arange(6).reshape(2, 3))


@pytest.mark.parametrize("op", OPS)
def test_weight_not_1d(op):
    with pytest.raises(ValueError, match="weight must be 1-D"):
        OPS[op](torch.randn(2, 3), w=torch.ones(1, 3))


@pytest.mark.parametrize("op", OPS)
def test_empty_weight_means_order_zero(op):
    with pytest.raises(ValueError, match="order"):
        OPS[op](torch.randn(2, 3), w=torch.ones(0))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("bias", [torch.zeros(2), torch.zeros(()), torch.zeros(1, 1)], ids=["(2,)", "()", "(1,1)"])
def test_bias_shape(op, bias):
    with pytest.raises(ValueError, match=r"bias must have shape \(1,\)"):
        OPS[op](torch.randn(2, 3), b=bias)


@pytest.mark.parametrize("op", OPS)
def test_empty_last_dimension(op):
    with pytest.raises(ValueError, match="empty last dimension"):
        OPS[op](torch.randn(4, 0))


def test_scalar_input():
    with pytest.raises(ValueError, match="at least one dimension"):
        polycom.poly_norm(torch.tensor(1.0), W, B)


def test_non_tensor_input():
    with pytest.raises(TypeError, match="torch.Tensor"):
        polycom.poly_relu([1.0, 2.0], W, B)


@pytest.mark.parametrize("eps", [-1e-6, float("nan")])
def test_negative_or_nan_eps(eps):
    with pytest.raises(ValueError, match="eps must be > 0"):
        polycom.poly_norm(torch.randn(2, 3), W, B, eps=eps)
    with pytest.raises(ValueError, match="eps must be > 0"):
        polycom.PolyNorm(eps=eps)


@pytest.mark.parametrize("order", [0, -2])
@pytest.mark.parametrize("cls", [polycom.PolyNorm, polycom.PolyReLU, polycom.PolyNormGated, polycom.PolyReLUGated])
def test_module_order_below_one(cls, order):
    with pytest.raises(ValueError, match="order must be >= 1"):
        cls(order=order)


def test_module_order_not_int():
    with pytest.raises(TypeError, match="order must be an int"):
        polycom.PolyNorm(order=2.5)


def test_gate_up_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        polycom.poly_norm_gated(torch.randn(2, 3), torch.randn(2, 4), W, B)
    with pytest.raises(TypeError, match="same dtype"):
        polycom.poly_relu_gated(torch.randn(2, 3), torch.randn(2, 3, dtype=torch.float64), W, B)
