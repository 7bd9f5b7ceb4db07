"""Fused MLP autograd path: the whole feed-forward block as one autograd node that keeps little.

Plain:  h = x W_up^T (+ b_up),                      a = act(h),        y = a W_down^T (+ b_down)
Gated:  g = x W_gate^T (+ b_gate), u = x W_up^T (+ b_up),  a = act(g) * u,  y = a W_down^T (+ b_down)

x (..., d); W_up, W_gate (h, d); W_down (d, h); act in {polynorm, polyrelu, swiglu} (the last gated only).

Saved for backward: x, h (gated: g and u), the weights, and for PolyNorm its r + 1 statistics per row
(fp32; fp64 for fp64 input). The activation output a is never kept: backward recomputes it from h
(elementwise, cheap) for the down projection's weight gradient. Per token that is d + h values
(gated d + 2h) instead of d + 2h (d + 3h) with a separately saved activation output, or far more
with autograd over the reference ops.

The activation's math is `polycom.ops.closed_form` on the ``torch`` backend and the ``polycom::*``
Triton custom ops on the ``triton`` backend (`polycom.ops.backend.backend_for`); the linear algebra
is `torch.nn.functional.linear` and matmuls, so forward outputs equal the unfused module's up to
the activation's fp32 rounding. On the CPU a large activation output is formed and consumed in row
blocks (`_GEMM_BLOCK_ELEMENTS`), so it never exists whole there.

Autocast: like ``torch.amp.custom_fwd(cast_inputs=...)`` for whichever device x is on (the decorator
needs the device type when the class is defined): when autocast is on for x's device, x and the linear
weights and biases are cast to the autocast dtype (what autocast does for ``linear``), the activation
coefficients stay fp32, and the node runs with autocast off; its backward then sees the same dtypes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from polycom.ops import closed_form
from polycom.ops.backend import backend_for
from polycom.ops.closed_form import as_rows, row_block
from polycom.ops.cpu_compile import compiled

ACTIVATIONS = ("polynorm", "polyrelu", "swiglu")

_EMPTY = ()


def _triton_ops():
    from polycom.ops.triton import ops  # registers the polycom::* custom ops

    return ops


def activation_forward(kind: str, h, up, weight, bias, eps: float):
    """(a, stats or None): act(h) (* up); stats is PolyNorm's (..., r + 1) [inv_rms, row scale] (Triton: (rows, r + 1))."""
    if kind == "swiglu":
        return compiled(closed_form.swiglu_forward)(h, up), None
    triton = backend_for(h) == "triton"
    if kind == "polynorm":
        if triton:
            return _triton_ops().poly_norm_fwd(h, up, weight, bias, eps)
        return compiled(closed_form.poly_norm_forward)(h, up, weight, bias, eps)
    if triton:
        return _triton_ops().poly_relu_fwd(h, up, weight, bias), None
    return compiled(closed_form.poly_relu_forward)(h, up, weight, bias), None


def activation_recompute(kind: str, h, up, weight, bias, stats, eps: float) -> torch.Tensor:
    """The forward's activation output again, from h (and PolyNorm's saved statistics on the torch backend)."""
    if kind == "polynorm" and backend_for(h) != "triton":
        return compiled(closed_form.poly_norm_from_stats)(h, up, weight, bias, stats)
    return activation_forward(kind, h, up, weight, bias, eps)[0]


def activation_backward(kind: str, grad, h, up, weight, bias, stats, needs, grad_writable=False):
    """(dh, d_up, dweight, dbias) of `activation_forward`; None for what `needs` does not ask.

    grad_writable (closed form: SwiGLU always, PolyCom on the torch backend): grad is the fused MLP's own
    d(a) and may be overwritten with dh, which saves a fresh (rows, h) tensor (see `polycom.ops.closed_form`)."""
    if kind == "swiglu":
        return (*compiled(closed_form.swiglu_backward)(grad, h, up, needs, grad_writable=grad_writable), None, None)
    if backend_for(h) == "triton":
        ops = _triton_ops()
        if kind == "polynorm":
            dh, d_up, dw, db = ops.poly_norm_bwd(grad, h, up, weight, bias, stats, list(needs))
        else:
            dh, d_up, dw, db = ops.poly_relu_bwd(grad, h, up, weight, bias, list(needs))
        return dh, d_up if up is not None else None, dw, db
    backward = closed_form.poly_norm_backward if kind == "polynorm" else closed_form.poly_relu_backward
    extra = (stats,) if kind == "polynorm" else ()
    return compiled(backward)(grad, h, up, weight, bias, *extra, needs, grad_writable=grad_writable)


# On the CPU a large activation output a = act(h) is formed in row blocks of about this many values (8 MB
# of fp32) and fed to the down projection block by block. A fresh (tokens, h) tensor over glibc's 32 MB
# mmap limit page-faults on every use (~10 ms at 4096 x 2112 fp32; the plain PolyCom MLP's tensors are
# 1.5x SwiGLU's, so they cross that line first), while a block comes back from the allocator's cache and
# a GEMM over ~800 rows still runs at full speed (a one-off timing on the 2-core EPYC, not a benchmark row: a
# few percent off the PolyReLU block at 4096 tokens). Tensors up to twice this size, and CUDA (caching allocator)
# or compiled code, use one block.
_GEMM_BLOCK_ELEMENTS = 1 << 21


def _gemm_row_blocks(h: torch.Tensor) -> list[slice]:
    """Equal row slices of h (..., n) seen as (rows, n) for `_activation_then_down` / `_down_weight_grad`."""
    n = h.shape[-1]
    rows = h.numel() // max(n, 1)
    if h.device.type != "cpu" or torch.compiler.is_compiling() or rows * n <= 2 * _GEMM_BLOCK_ELEMENTS:
        return [slice(None)]
    if backend_for(h) == "triton":  # the interpreted kernels on CPU (tests): their stats stay (rows, r + 1)
        return [slice(None)]
    count = -(-rows * n // _GEMM_BLOCK_ELEMENTS)
    step = -(-rows // count)
    return [slice(i, i + step) for i in range(0, rows, step)]


def _activation_then_down(kind, h, u, act_w, act_b, eps, down_w, down_b):
    """(y = down(act(h) (* u)) (..., d), stats): a = act(h) exists one row block at a time on the CPU."""
    blocks = _gemm_row_blocks(h)
    if len(blocks) == 1:
        a, stats = activation_forward(kind, h, u, act_w, act_b, eps)
        return F.linear(a, down_w, down_b), stats
    h2, u2 = as_rows(h), as_rows(u)
    y = h2.new_empty(h2.shape[0], down_w.shape[0])
    stats = []
    for rows in blocks:
        a, block_stats = activation_forward(kind, h2[rows], row_block(u2, rows), act_w, act_b, eps)
        if down_b is None:
            torch.mm(a, down_w.t(), out=y[rows])
        else:
            torch.addmm(down_b, a, down_w.t(), out=y[rows])
        stats.append(block_stats)
    stats = None if stats[0] is None else torch.cat(stats).view(*h.shape[:-1], -1)
    return y.view(*h.shape[:-1], -1), stats


def _down_weight_grad(kind, g2, h, u, act_w, act_b, stats, eps) -> torch.Tensor:
    """dL/dW_down = g^T a (d, h), a = act(h) (* u) recomputed in the row blocks of `_activation_then_down`;
    g2 is the output gradient as (rows, d)."""
    h2, u2, st2 = as_rows(h), as_rows(u), as_rows(stats)
    d_down_w = None
    for rows in _gemm_row_blocks(h):
        a = as_rows(activation_recompute(kind, h2[rows], row_block(u2, rows), act_w, act_b, row_block(st2, rows), eps))
        d_down_w = g2[rows].t().mm(a) if d_down_w is None else d_down_w.addmm_(g2[rows].t(), a)
    return d_down_w


class FusedMLPFunction(torch.autograd.Function):
    """Inputs: x, gate_w, gate_b, up_w, up_b, down_w, down_b, act_w, act_b, kind, eps (None where absent)."""

    @staticmethod
    def forward(ctx, x, gate_w, gate_b, up_w, up_b, down_w, down_b, act_w, act_b, kind, eps):
        gate = F.linear(x, gate_w, gate_b) if gate_w is not None else None
        up = F.linear(x, up_w, up_b)
        h, u = (gate, up) if gate is not None else (up, None)
        y, stats = _activation_then_down(kind, h, u, act_w, act_b, eps, down_w, down_b)
        ctx.save_for_backward(x, gate, up, gate_w, up_w, down_w, act_w, act_b, stats)
        ctx.kind, ctx.eps = kind, eps
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, gate, up, gate_w, up_w, down_w, act_w, act_b, stats = ctx.saved_tensors
        need = ctx.needs_input_grad
        h, u = (gate, up) if gate is not None else (up, None)
        g2 = as_rows(grad_y)
        d_down_w = None
        if need[5]:  # the activation output is recomputed, never saved
            d_down_w = _down_weight_grad(ctx.kind, g2, h, u, act_w, act_b, stats, ctx.eps)
        d_down_b = g2.sum(0) if need[6] else None
        da = grad_y.matmul(down_w)
        gated = gate is not None
        wants_up = bool(need[0] or need[3] or need[4])  # x, W_up or b_up need d(up)
        if gated:  # (d gate, d up, coefficients)
            needs = (bool(need[0] or need[1] or need[2]), wants_up, bool(need[7] or need[8]))
        else:  # (d up, -, coefficients)
            needs = (wants_up, False, bool(need[7] or need[8]))
        # da is this node's own tensor: the activation's backward writes dh into it
        dh, d_u, d_act_w, d_act_b = activation_backward(ctx.kind, da, h, u, act_w, act_b, stats, needs, True)
        d_gate, d_up = (dh, d_u) if gated else (None, dh)
        dx = None
        if need[0]:
            dx = d_up.matmul(up_w)
            if gated:
                dx = dx + d_gate.matmul(gate_w)
        x2 = as_rows(x)
        grads_in = [
            dx,
            as_rows(d_gate).t().mm(x2) if gated and need[1] else None,
            as_rows(d_gate).sum(0) if gated and need[2] else None,
            as_rows(d_up).t().mm(x2) if need[3] else None,
            as_rows(d_up).sum(0) if need[4] else None,
        ]
        return (*grads_in, d_down_w, d_down_b, d_act_w if need[7] else None, d_act_b if need[8] else None, None, None)


def _autocast_cast(tensors: list, device_type: str) -> list:
    dtype = torch.get_autocast_dtype(device_type)
    return [t.to(dtype) if t is not None and t.is_floating_point() else t for t in tensors]


def fused_mlp(
    x: torch.Tensor,
    up_w: torch.Tensor,
    down_w: torch.Tensor,
    kind: str,
    *,
    gate_w: torch.Tensor | None = None,
    biases: tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None] = (None, None, None),
    act_w: torch.Tensor | None = None,
    act_b: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """The MLP block of the module docstring as one autograd node. biases = (gate_b, up_b, down_b).

    kind: "polynorm" | "polyrelu" (plain, or gated when gate_w is given; act_w (r,), act_b (1,)) or
    "swiglu" (gate_w required). Returns (..., d) in x's dtype (the autocast dtype under autocast).
    """
    if kind not in ACTIVATIONS:
        raise ValueError(f"fused MLP activation must be one of {', '.join(ACTIVATIONS)}, got {kind!r}")
    if kind == "swiglu" and gate_w is None:
        raise ValueError("a fused SwiGLU MLP needs gate_w")
    if kind != "swiglu" and (act_w is None or act_b is None):
        raise ValueError(f"a fused {kind} MLP needs the activation coefficients act_w and act_b")
    gate_b, up_b, down_b = biases
    linear = [x, gate_w, gate_b, up_w, up_b, down_w, down_b]
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        linear = _autocast_cast(linear, device_type)
        with torch.autocast(device_type, enabled=False):
            return FusedMLPFunction.apply(*linear, act_w, act_b, kind, float(eps))
    return FusedMLPFunction.apply(*linear, act_w, act_b, kind, float(eps))
