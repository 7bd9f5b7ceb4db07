"""PolyNorm for rows with large entries (fp32 x**6 overflows above ~2.6e6) and the eps > 0 rule.

Implementations: the reference (autograd) and the torch backend's closed form (`polycom.poly_norm` /
`poly_norm_gated` on the ``torch`` backend, and the fused MLP's activation functions, which share its
forward, statistics and backward). The Triton kernels have the same cases in
tests/ops_triton/test_triton_kernels_numerics.py, the tensor-parallel path in
tests/distributed/test_tp_polynorm.py.

Oracle: the PolyNorm formula written here in fp64 (x**6 of 1e8 is 1e48, fine in fp64):

    y = b + sum_{i=1..r} w[r-i] * x**i / sqrt(mean(x**(2i)) + eps)
"""

from __future__ import annotations

import pytest
import torch

import polycom
from polycom.ops import closed_form, fused_mlp
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


# ------------------------------------------------------------------ torch backend (closed form)


def _closed_form_public(x, up, w, b):
    with polycom.use_backend("torch"):
        return polycom.poly_norm(x, w, b) if up is None else polycom.poly_norm_gated(x, up, w, b)


class _FusedMLPActivation(torch.autograd.Function):
    """The fused MLP's activation forward / recompute / backward (closed form on CPU) as one autograd node."""

    @staticmethod
    def forward(ctx, x, up, w, b):
        with polycom.use_backend("torch"):
            a, stats = fused_mlp.activation_forward("polynorm", x, up, w, b, 1e-6)
            again = fused_mlp.activation_recompute("polynorm", x, up, w, b, stats, 1e-6)
        assert torch.equal(again, a)
        ctx.save_for_backward(x, up, w, b, stats)
        return a

    @staticmethod
    def backward(ctx, grad):
        x, up, w, b, stats = ctx.saved_tensors
        with polycom.use_backend("torch"):
            return fused_mlp.activation_backward("polynorm", grad, x, up, w, b, stats, (True, up is not None, True))


CLOSED_FORM = {"public": _closed_form_public, "fused_mlp": _FusedMLPActivation.apply}


def _grads_vs_fp64(fn, x, up, w, b, dtype=torch.float32):
    """fn's output and gradients (x, up, w, b) against the fp64 formula by autograd."""
    leaves = [t.detach().clone().to(dtype).requires_grad_(True) if t is not None else None for t in (x, up)]
    coeffs = [t.detach().clone().requires_grad_(True) for t in (w, b)]
    out = fn(leaves[0], leaves[1], *coeffs)
    g = torch.randn_like(out)
    out.backward(g)
    x64, w64, b64 = (t.detach().double().requires_grad_(True) for t in (x, w, b))
    up64 = up.detach().double().requires_grad_(True) if up is not None else None
    ref = _fp64_poly_norm(x64, w64, b64) * (up64 if up64 is not None else 1.0)
    ref.backward(g.double())
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    pairs = [(leaves[0].grad, x64.grad), (coeffs[0].grad, w64.grad), (coeffs[1].grad, b64.grad)]
    if up is not None:
        pairs.append((leaves[1].grad, up64.grad))
    for got, want in pairs:
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


@pytest.mark.parametrize("impl", sorted(CLOSED_FORM))
@pytest.mark.parametrize("gated", [False, True], ids=["plain", "gated"])
def test_closed_form_constant_row_of_1e7(impl, gated):
    w, b = _coefficients()
    x = torch.full((2, 64), 1.0e7)
    up = torch.full((2, 64), 2.0) if gated else None
    out = CLOSED_FORM[impl](x, up, w, b)
    expected = float(w.sum() + b) * (2.0 if gated else 1.0)
    torch.testing.assert_close(out, torch.full_like(out, expected), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", sorted(CLOSED_FORM))
@pytest.mark.parametrize("gated", [False, True], ids=["plain", "gated"])
@pytest.mark.parametrize("scale", [1e-7, 1.0, 1e7, 1e15])
def test_closed_form_scaled_rows_match_fp64_with_gradients(impl, gated, scale):
    torch.manual_seed(4)
    x = torch.randn(4, 96) * scale
    x[1] = torch.randn(96)  # an ordinary row next to the scaled ones
    up = torch.randn(4, 96) if gated else None
    _grads_vs_fp64(CLOSED_FORM[impl], x, up, *_coefficients())


@pytest.mark.parametrize("peak, scaled", [(0.5, False), (1000.0, False), (1030.0, True), (float("inf"), True)])
def test_closed_form_skips_row_scaling_only_below_the_power_limit(monkeypatch, peak, scaled):
    """r = 3: the scaling is skipped (no row scale computed, s = 1 saved) iff max |x|**3 <= 2**30."""
    torch.manual_seed(5)
    x = torch.rand(6, 50) * 2 - 1
    x[3, 7] = peak
    w, b = (t.detach() for t in _coefficients())
    calls = []
    real_row_scale = closed_form.row_scale
    monkeypatch.setattr(closed_form, "row_scale", lambda xc: calls.append(1) or real_row_scale(xc))
    _, stats = closed_form.poly_norm_forward(x, None, w, b, 1e-6)
    assert bool(calls) is scaled
    assert torch.equal(stats[:, 3], torch.ones(6)) is not (scaled and peak > 1)


@pytest.mark.parametrize("impl", sorted(CLOSED_FORM))
@pytest.mark.parametrize("gated", [False, True], ids=["plain", "gated"])
@pytest.mark.parametrize("huge_row", [False, True], ids=["all_rows_below_the_limit", "one_row_1e15"])
def test_closed_form_unit_shortcut_and_scaled_path_match_fp64(impl, gated, huge_row):
    """Every |x| <= 2**10 (r = 3) takes the no-rescale shortcut; one huge row in the batch takes the scaled path."""
    torch.manual_seed(6)
    x = (torch.rand(5, 80) * 2 - 1) * torch.tensor([[1.0], [30.0], [1.0], [1000.0], [0.01]])
    if huge_row:
        x[2] = torch.randn(80) * 1e15
    up = torch.randn(5, 80) if gated else None
    assert closed_form._scaling_needed(x, 3) is huge_row
    _grads_vs_fp64(CLOSED_FORM[impl], x, up, *_coefficients())


@pytest.mark.parametrize("gated", [False, True], ids=["plain", "gated"])
def test_closed_form_unit_shortcut_is_bit_identical_to_the_scaled_path(monkeypatch, gated):
    """Rows with s = 1: skipping x / s, eps / s**(2i) and dx / s changes no bit (all divide by exactly 1)."""
    torch.manual_seed(7)
    x, g = torch.rand(6, 50) * 2 - 1, torch.randn(6, 50)
    up = torch.randn(6, 50) if gated else None
    w, b = (t.detach() for t in _coefficients())

    def run():
        y, stats = closed_form.poly_norm_forward(x, up, w, b, 1e-6)
        return (y, stats, *closed_form.poly_norm_backward(g, x, up, w, b, stats))

    calls = []
    real_row_scale = closed_form.row_scale
    monkeypatch.setattr(closed_form, "row_scale", lambda xc: calls.append(1) or real_row_scale(xc))
    fast = run()
    assert not calls  # the shortcut computed no per-row scale
    monkeypatch.setattr(closed_form, "_scaling_needed", lambda xc, r: True)
    monkeypatch.setattr(closed_form, "_all_unit_scale", lambda scales: False)
    scaled = run()
    assert calls
    for a, b_ in zip(fast, scaled, strict=True):
        assert (a is None and b_ is None) or torch.equal(a, b_)
