"""PolyNorm for rows with large entries (fp32 x**6 overflows above ~2.6e6) and the eps > 0 rule.

Oracle: the PolyNorm formula written here in fp64 (x**6 of 1e8 is 1e48, fine in fp64):

    y = b + sum_{i=1..r} w[r-i] * x**i / sqrt(mean(x**(2i)) + eps)
"""

from __future__ import annotations

import pytest
import torch

import polycom
from polycom.ops.reference import poly_norm_gated_reference, poly_norm_reference


def _fp64_poly_norm(x, w, b, eps=1e-6):
    x, w, b = x.double(), w.double(), b.double()
    r = w.numel()
    y = b.expand_as(x)
    for i in range(1, r + 1):
        p = x**i
        y = y + w[r - i] * p / torch.sqrt((p * p).mean(dim=-1, keepdim=True) + eps)
    return y


def _coefficients(r=3):
    w = torch.tensor([0.7, -0.4, 1.3][:r], requires_grad=True)
    b = torch.tensor([0.25], requires_grad=True)
    return w, b


def test_constant_row_of_1e7_gives_sum_of_weights_plus_bias():
    w, b = _coefficients()
    x = torch.full((2, 64), 1.0e7)
    expected = float(w.sum() + b)  # every normalised power of a constant row is 1
    out = poly_norm_reference(x, w, b)
    torch.testing.assert_close(out, torch.full_like(out, expected), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.double(), _fp64_poly_norm(x, w, b), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("scale", [1e4, 3e6, 1e8, 1e15])
def test_large_rows_match_fp64_with_gradients(scale):
    torch.manual_seed(1)
    x = (torch.randn(4, 96) * scale).requires_grad_(True)
    w, b = _coefficients()
    out = poly_norm_reference(x, w, b)
    ref = _fp64_poly_norm(x, w, b)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out)
    grads = torch.autograd.grad((out * g).sum(), (x, w, b))
    x64, w64, b64 = (t.detach().double().requires_grad_(True) for t in (x, w, b))
    ref_grads = torch.autograd.grad((_fp64_poly_norm(x64, w64, b64) * g.double()).sum(), (x64, w64, b64))
    for got, want in zip(grads, ref_grads):
        assert torch.isfinite(got).all()
        scale_of = want.abs().max().item()
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4 * scale_of)


def test_gated_large_rows_match_fp64():
    torch.manual_seed(2)
    gate, up = torch.randn(3, 40) * 1e7, torch.randn(3, 40)
    w, b = _coefficients()
    out = poly_norm_gated_reference(gate, up, w, b)
    torch.testing.assert_close(out.double(), _fp64_poly_norm(gate, w, b) * up.double(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_ordinary_and_small_rows_unchanged_vs_fp64(dtype, tol):
    torch.manual_seed(3)
    scales = torch.tensor([[1e-4], [0.3], [1.0], [3.0], [50.0]], dtype=dtype)
    x = torch.randn(5, 80, dtype=dtype) * scales
    w, b = _coefficients()
    out = poly_norm_reference(x, w.to(dtype), b.to(dtype))
    torch.testing.assert_close(out.double(), _fp64_poly_norm(x, w, b), rtol=tol, atol=tol)


def test_zero_row_gives_bias():
    w, b = _coefficients()
    out = poly_norm_reference(torch.zeros(2, 8), w, b)
    torch.testing.assert_close(out, torch.full_like(out, 0.25))


@pytest.mark.parametrize("eps", [0.0, 0])
def test_eps_zero_is_refused(eps):
    with pytest.raises(ValueError, match="eps must be > 0"):
        polycom.poly_norm(torch.zeros(2, 3), *_coefficients(), eps=eps)
    with pytest.raises(ValueError, match="eps must be > 0"):
        polycom.PolyNorm(eps=eps)
