"""The ``torch`` backend of `polycom.ops`: autograd Functions over the closed-form math.

Forward and backward come from `polycom.ops.closed_form` (the kernels' formulas), so autograd keeps
x (and up) plus r + 1 statistics per row instead of every intermediate of the reference, and the
backward is a handful of passes. `polycom.ops.reference` stays the readable oracle the tests compare
against. The functions have the same names and signatures as `polycom.ops.triton`'s.
"""

from __future__ import annotations

import torch

from polycom.ops import closed_form
from polycom.ops.cpu_compile import compiled


def _needs(ctx, gated: bool) -> tuple[bool, bool, bool]:
    n = ctx.needs_input_grad  # (x, up, weight, bias, ...)
    return bool(n[0]), bool(gated and n[1]), bool(n[2] or n[3])


class _PolyNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, up, weight, bias, eps):
        y, inv = compiled(closed_form.poly_norm_forward)(x, up, weight, bias, eps)
        ctx.save_for_backward(x, up, weight, bias, inv)
        ctx.gated = up is not None
        return y

    @staticmethod
    def backward(ctx, grad):
        x, up, weight, bias, inv = ctx.saved_tensors
        needs = _needs(ctx, ctx.gated)
        dx, d_up, dw, db = compiled(closed_form.poly_norm_backward)(grad, x, up, weight, bias, inv, needs)
        return dx, d_up, dw, db, None


class _PolyReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, up, weight, bias):
        ctx.save_for_backward(x, up, weight, bias)
        ctx.gated = up is not None
        return compiled(closed_form.poly_relu_forward)(x, up, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, up, weight, bias = ctx.saved_tensors
        needs = _needs(ctx, ctx.gated)
        return compiled(closed_form.poly_relu_backward)(grad, x, up, weight, bias, needs)


def poly_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """PolyNorm (see `polycom.ops.poly_norm`), closed-form backward."""
    return _PolyNorm.apply(x, None, weight, bias, float(eps))


def poly_norm_gated(
    gate: torch.Tensor, up: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """PolyNorm(gate) * up (product in the compute dtype, one cast), closed-form backward."""
    return _PolyNorm.apply(gate, up, weight, bias, float(eps))


def poly_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """PolyReLU (see `polycom.ops.poly_relu`), closed-form backward."""
    return _PolyReLU.apply(x, None, weight, bias)


def poly_relu_gated(gate: torch.Tensor, up: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """PolyReLU(gate) * up, closed-form backward."""
    return _PolyReLU.apply(gate, up, weight, bias)
