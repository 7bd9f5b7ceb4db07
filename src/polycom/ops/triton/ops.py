"""`torch.library` custom ops around the PolyCom Triton kernels (``polycom::*``).

Registering the kernels as custom ops with fake (meta) implementations and `register_autograd`
makes them opaque, shape-correct nodes for `torch.compile` (no graph break, no tracing into
Triton) and AOTAutograd, and lets `torch.library.opcheck` verify the registration.

Ops (``up`` is None for the plain forms; ``d_up`` is then an empty tensor, since a custom op cannot
return None):

- ``polycom::poly_norm_fwd(x, up, weight, bias, eps) -> (y, rstd)``: rstd (M, r + 1) fp32 row statistics
  rsqrt(mean(q**(2i)) + eps / s**(2i)) of the scaled row q = x / s and s = max(max|x|, 1), saved for the
  backward (the only state kept besides x and up);
- ``polycom::poly_norm_bwd(grad, x, up, weight, bias, rstd, needs=None) -> (dx, d_up, dweight, dbias)``;
- ``polycom::poly_relu_fwd(x, up, weight, bias) -> y``;
- ``polycom::poly_relu_bwd(grad, x, up, weight, bias, needs=None) -> (dx, d_up, dweight, dbias)``.

``needs`` = [dx, d_up, coefficient gradients] wanted (None: all); the autograd wrapper passes
``ctx.needs_input_grad``, so gradients nobody asked for are not computed (variant 2 kernels): their
dx / d_up come back as empty tensors, their coefficient gradients as zeros, and autograd gets None.

``eps`` is a ``float`` in the schema; it reaches the kernel as an fp32 scalar and is cast to the
compute dtype inside the kernel, so it never promotes the math to fp64 under compile.
"""

# No `from __future__ import annotations` here: torch.library infers the op schemas from these
# annotations; evaluated (non-string) `Tensor | None` annotations work on every supported torch version.

import torch
from torch import Tensor

from polycom.ops.dtypes import compute_dtype
from polycom.ops.triton import launch

_EMPTY_SHAPE = (0,)


def _rows(x: Tensor) -> int:
    """Number of rows M of the (M, n) view (works on fake tensors with symbolic shapes)."""
    m = 1
    for size in x.shape[:-1]:
        m = m * size
    return m


def _outputs(x: Tensor, wanted, dx, dup, dweight, dbias) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The backward ops' outputs: dx / d_up that were not wanted (never written by the kernels) become empty
    tensors, so no uninitialised memory leaves the op; unwanted coefficient gradients are zeros."""
    dx = dx if wanted[0] else x.new_empty(_EMPTY_SHAPE)  # separate empties: outputs must not alias
    return (dx, dup if dup is not None and wanted[1] else x.new_empty(_EMPTY_SHAPE), dweight, dbias)


def _fake_outputs(x, up, weight, bias, wanted) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    dx = x.new_empty(x.shape) if wanted[0] else x.new_empty(_EMPTY_SHAPE)
    dup = up.new_empty(up.shape) if up is not None and wanted[1] else x.new_empty(_EMPTY_SHAPE)
    return dx, dup, weight.new_empty(weight.shape), bias.new_empty(bias.shape)


def _needs(needs: list[bool] | None) -> tuple[bool, bool, bool]:
    """(dx, d_up, coefficient gradients) wanted by the caller; None = all."""
    return (True, True, True) if needs is None else (bool(needs[0]), bool(needs[1]), bool(needs[2]))


def _needed(ctx) -> list[bool]:
    """Which backward outputs autograd needs: x, up, and weight or bias (the kernels produce both together)."""
    n = ctx.needs_input_grad
    return [bool(n[0]), bool(ctx.gated and n[1]), bool(n[2] or n[3])]


def _masked(need: list[bool], dx, dup, dweight, dbias) -> tuple:
    """None for the gradients that were not computed (autograd did not ask for them)."""
    return (dx if need[0] else None, dup if need[1] else None, dweight if need[2] else None, dbias if need[2] else None)


# ---------------------------------------------------------------------------------------- PolyNorm


@torch.library.custom_op("polycom::poly_norm_fwd", mutates_args=())
def poly_norm_fwd(x: Tensor, up: Tensor | None, weight: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    return launch.poly_norm_forward(x, up, weight, bias, eps)


@poly_norm_fwd.register_fake
def _poly_norm_fwd_fake(x, up, weight, bias, eps):
    rstd = x.new_empty((_rows(x), weight.shape[0] + 1), dtype=compute_dtype(x.dtype))
    return x.new_empty(x.shape), rstd


@torch.library.custom_op("polycom::poly_norm_bwd", mutates_args=())
def poly_norm_bwd(
    grad: Tensor,
    x: Tensor,
    up: Tensor | None,
    weight: Tensor,
    bias: Tensor,
    rstd: Tensor,
    needs: list[bool] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    wanted = _needs(needs)
    return _outputs(x, wanted, *launch.poly_norm_backward(grad, x, up, weight, bias, rstd, wanted))


@poly_norm_bwd.register_fake
def _poly_norm_bwd_fake(grad, x, up, weight, bias, rstd, needs=None):
    return _fake_outputs(x, up, weight, bias, _needs(needs))


def _poly_norm_setup(ctx, inputs, output) -> None:
    x, up, weight, bias, eps = inputs
    _, rstd = output
    ctx.mark_non_differentiable(rstd)
    ctx.gated = up is not None
    ctx.save_for_backward(x, up, weight, bias, rstd)


def _poly_norm_backward(ctx, grad_y, _grad_rstd):
    x, up, weight, bias, rstd = ctx.saved_tensors
    need = _needed(ctx)
    dx, dup, dweight, dbias = poly_norm_bwd(grad_y, x, up, weight, bias, rstd, need)
    return _masked(need, dx, dup if ctx.gated else None, dweight, dbias) + (None,)


poly_norm_fwd.register_autograd(_poly_norm_backward, setup_context=_poly_norm_setup)


# ---------------------------------------------------------------------------------------- PolyReLU


@torch.library.custom_op("polycom::poly_relu_fwd", mutates_args=())
def poly_relu_fwd(x: Tensor, up: Tensor | None, weight: Tensor, bias: Tensor) -> Tensor:
    return launch.poly_relu_forward(x, up, weight, bias)


@poly_relu_fwd.register_fake
def _poly_relu_fwd_fake(x, up, weight, bias):
    return x.new_empty(x.shape)


@torch.library.custom_op("polycom::poly_relu_bwd", mutates_args=())
def poly_relu_bwd(
    grad: Tensor, x: Tensor, up: Tensor | None, weight: Tensor, bias: Tensor, needs: list[bool] | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    wanted = _needs(needs)
    return _outputs(x, wanted, *launch.poly_relu_backward(grad, x, up, weight, bias, wanted))


@poly_relu_bwd.register_fake
def _poly_relu_bwd_fake(grad, x, up, weight, bias, needs=None):
    return _fake_outputs(x, up, weight, bias, _needs(needs))


def _poly_relu_setup(ctx, inputs, output) -> None:
    x, up, weight, bias = inputs
    ctx.gated = up is not None
    ctx.save_for_backward(x, up, weight, bias)


def _poly_relu_backward(ctx, grad_y):
    x, up, weight, bias = ctx.saved_tensors
    need = _needed(ctx)
    dx, dup, dweight, dbias = poly_relu_bwd(grad_y, x, up, weight, bias, need)
    return _masked(need, dx, dup if ctx.gated else None, dweight, dbias)


poly_relu_fwd.register_autograd(_poly_relu_backward, setup_context=_poly_relu_setup)
