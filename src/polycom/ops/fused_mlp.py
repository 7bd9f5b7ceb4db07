"""Fused MLP autograd path: the whole feed-forward block as one autograd node that keeps little.

Plain:  h = x W_up^T (+ b_up),                      a = act(h),        y = a W_down^T (+ b_down)
Gated:  g = x W_gate^T (+ b_gate), u = x W_up^T (+ b_up),  a = act(g) * u,  y = a W_down^T (+ b_down)

x (..., d); W_up, W_gate (h, d); W_down (d, h); act in {polynorm, polyrelu, swiglu} (the last gated only).

Saved for backward: x, h (gated: g and u), the weights, and for PolyNorm its r + 1 statistics per row
(fp32; fp64 for fp64 input). PolyReLU keeps q = relu(h) in h's place (relu applied in place): its output
and gradient depend on h only through q, since q > 0 exactly where h > 0. The activation output a is
never kept: backward recomputes it from h (elementwise, cheap) for the down projection's weight
gradient. Per token that is d + h values (gated d + 2h) instead of d + 2h (d + 3h) with a separately
saved activation output, or far more with autograd over the reference ops.

The activation's math is `polycom.ops.closed_form` on the ``torch`` backend and the ``polycom::*``
Triton custom ops on the ``triton`` backend (`polycom.ops.backend.backend_for`); the linear algebra
is `torch.nn.functional.linear` and matmuls, so forward outputs equal the unfused module's up to
the activation's fp32 rounding. On the CPU a large block is streamed by rows (`_GEMM_BLOCK_BYTES`): each
row block runs up -> act -> down in forward and down^T -> act' -> up^T in backward, so no (tokens, h)
tensor exists whole there; weight gradients are summed over the blocks.

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


def _triton_ops():
    from polycom.ops.triton import ops  # registers the polycom::* custom ops

    return ops


def activation_forward(kind: str, h, up, weight, bias, eps: float, relu_done: bool = False):
    """(a, stats or None): act(h) (* up); stats is PolyNorm's (..., r + 1) [inv_rms, row scale] (Triton: (rows, r + 1)).

    relu_done (polyrelu): h already holds relu(h), which gives the same output and gradient (PolyReLU sees only
    relu(h), and relu(h) > 0 exactly where h > 0); the closed form then skips its relu pass, the kernels need
    no flag."""
    if kind == "swiglu":
        return compiled(closed_form.swiglu_forward)(h, up), None
    triton = backend_for(h) == "triton"
    if kind == "polynorm":
        if triton:
            return _triton_ops().poly_norm_fwd(h, up, weight, bias, eps)
        return compiled(closed_form.poly_norm_forward)(h, up, weight, bias, eps)
    if triton:
        return _triton_ops().poly_relu_fwd(h, up, weight, bias), None
    return compiled(closed_form.poly_relu_forward)(h, up, weight, bias, relu_done=relu_done), None


def activation_recompute(kind: str, h, up, weight, bias, stats, eps: float, relu_done: bool = False) -> torch.Tensor:
    """The forward's activation output again, from h (and PolyNorm's saved statistics on the torch backend)."""
    if kind == "polynorm" and backend_for(h) != "triton":
        return compiled(closed_form.poly_norm_from_stats)(h, up, weight, bias, stats)
    return activation_forward(kind, h, up, weight, bias, eps, relu_done)[0]


def activation_backward(kind: str, grad, h, up, weight, bias, stats, needs, grad_writable=False, relu_done=False):
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
    if kind == "polynorm":
        return compiled(closed_form.poly_norm_backward)(
            grad, h, up, weight, bias, stats, needs, grad_writable=grad_writable
        )  # fmt: skip
    return compiled(closed_form.poly_relu_backward)(
        grad, h, up, weight, bias, needs, grad_writable=grad_writable, relu_done=relu_done
    )  # fmt: skip


# On the CPU a large block is streamed in row blocks of at most this many bytes of hidden pre-activations
# (h; gated: gate and up together), 16 MB: h, the activation output a, d(a) and dh exist one row block at a
# time, and h is saved as its row blocks. Counting gate and up together gives SwiGLU and the plain PolyCom
# MLP (1.5x wider, half the tensors) the same rows per block at matched parameters. A
# fresh (tokens, h) tensor over glibc's 32 MB mmap limit page-faults on every use (~10 ms per (4096, 2112)
# fp32 GEMM output, a one-off timing on the 2-core EPYC, not a benchmark row; the plain PolyCom MLP's hidden
# tensors are 1.5x SwiGLU's, so they cross that line first), while a block comes back from the allocator's
# cache. Up to 1.5x this size (24 MB, each tensor well under that limit) stays one block, and so do CUDA
# (caching allocator), compiled code and low-precision dtypes (whose weight gradients would be summed across
# blocks in that dtype). In one-off timings at 4096 tokens, d 512, both SwiGLU and PolyReLU ran a few percent
# faster in three blocks of 1366 rows than in one block or in five or more.
_GEMM_BLOCK_BYTES = 16 << 20


def _mlp_row_blocks(x2: torch.Tensor, hidden: int) -> list[slice]:
    """Equal row slices of x2 (rows, d) whose hidden pre-activations, `hidden` values per row (gated: both
    widths), hold at most `_GEMM_BLOCK_BYTES` per block."""
    rows = x2.shape[0]
    total = rows * hidden * x2.element_size()
    if (
        x2.device.type != "cpu"
        or torch.compiler.is_compiling()
        or x2.dtype not in (torch.float32, torch.float64)
        or 2 * total <= 3 * _GEMM_BLOCK_BYTES
        or backend_for(x2) == "triton"  # the interpreted kernels on the CPU (tests): one launch per op
    ):
        return [slice(None)]
    count = -(-total // _GEMM_BLOCK_BYTES)
    step = -(-rows // count)
    return [slice(i, min(i + step, rows)) for i in range(0, rows, step)]


def _linear_into(a: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, out: torch.Tensor | None) -> torch.Tensor:
    """a W^T (+ b), written into out when given (a row block of a larger result), else a new tensor."""
    if out is None:
        return F.linear(a, w, b)
    return torch.mm(a, w.t(), out=out) if b is None else torch.addmm(b, a, w.t(), out=out)


def _input_grad_into(d_up, up_w, d_gate, gate_w, out: torch.Tensor | None) -> torch.Tensor:
    """dx = d_up W_up (+ d_gate W_gate), written into out when given, else a new tensor."""
    if out is None:
        dx = d_up.mm(up_w)
        return dx if d_gate is None else torch.addmm(dx, d_gate, gate_w)
    torch.mm(d_up, up_w, out=out)
    return out if d_gate is None else out.addmm_(d_gate, gate_w)


class _BlockSums:
    """Parameter gradients summed over row blocks: one product or tensor per block, accumulated in place."""

    def __init__(self) -> None:
        self.total: dict[str, torch.Tensor] = {}

    def add_mm(self, name: str, a: torch.Tensor, b: torch.Tensor) -> None:
        if name in self.total:
            self.total[name].addmm_(a, b)
        else:
            self.total[name] = a.mm(b)

    def add(self, name: str, t: torch.Tensor) -> None:
        self.total[name] = self.total[name] + t if name in self.total else t

    def get(self, name: str) -> torch.Tensor | None:
        return self.total.get(name)


class FusedMLPFunction(torch.autograd.Function):
    """Inputs: x, gate_w, gate_b, up_w, up_b, down_w, down_b, act_w, act_b, kind, eps (None where absent).

    Rows of x are processed in the blocks of `_mlp_row_blocks` (one block except on the CPU at large
    sizes); saved: x, the weights, and per block its gate, up and PolyNorm statistics."""

    @staticmethod
    def forward(ctx, x, gate_w, gate_b, up_w, up_b, down_w, down_b, act_w, act_b, kind, eps):
        x2, relu_done = as_rows(x), kind == "polyrelu"
        blocks = _mlp_row_blocks(x2, up_w.shape[0] * (2 if gate_w is not None else 1))
        y = None if len(blocks) == 1 else x2.new_empty(x2.shape[0], down_w.shape[0])
        gates, ups, stats = [], [], []
        for rows in blocks:
            xb = x2[rows]
            gate = F.linear(xb, gate_w, gate_b) if gate_w is not None else None
            up = F.linear(xb, up_w, up_b)
            h, u = (gate, up) if gate is not None else (up, None)
            if relu_done:
                h.relu_()  # q = relu(h) is all PolyReLU's output and backward need: it is what is kept
            a, block_stats = activation_forward(kind, h, u, act_w, act_b, eps, relu_done)
            y_block = _linear_into(a, down_w, down_b, row_block(y, rows))
            y = y_block if y is None else y
            gates.append(gate)
            ups.append(up)
            stats.append(block_stats)
        ctx.gated, ctx.has_stats = gate_w is not None, stats[0] is not None
        per_block = [*(gates if ctx.gated else ()), *ups, *(stats if ctx.has_stats else ())]
        ctx.save_for_backward(x, gate_w, up_w, down_w, act_w, act_b, *per_block)
        ctx.kind, ctx.eps, ctx.blocks, ctx.relu_done = kind, eps, blocks, relu_done
        return y.view(*x.shape[:-1], down_w.shape[0])

    @staticmethod
    def backward(ctx, grad_y):
        x, gate_w, up_w, down_w, act_w, act_b, *per_block = ctx.saved_tensors
        k, gated = len(ctx.blocks), ctx.gated
        gates = per_block[:k] if gated else [None] * k
        ups = per_block[k : 2 * k] if gated else per_block[:k]
        stats = per_block[-k:] if ctx.has_stats else [None] * k
        need = ctx.needs_input_grad
        wants_up = bool(need[0] or need[3] or need[4])  # x, W_up or b_up need d(up)
        if gated:  # (d gate, d up, coefficients)
            needs = (bool(need[0] or need[1] or need[2]), wants_up, bool(need[7] or need[8]))
        else:  # (d up, -, coefficients)
            needs = (wants_up, False, bool(need[7] or need[8]))
        x2, g2 = as_rows(x), as_rows(grad_y)
        dx = x2.new_empty(x2.shape) if need[0] and k > 1 else None
        sums = _BlockSums()
        for rows, gate, up, block_stats in zip(ctx.blocks, gates, ups, stats, strict=True):
            gb, xb = g2[rows], x2[rows]
            h, u = (gate, up) if gated else (up, None)
            if need[5]:  # the activation output is recomputed, never saved
                a = activation_recompute(ctx.kind, h, u, act_w, act_b, block_stats, ctx.eps, ctx.relu_done)
                sums.add_mm("down_w", gb.t(), a)
            da = gb.mm(down_w)
            # da is this node's own tensor: the activation's backward writes dh into it
            dh, d_u, d_act_w, d_act_b = activation_backward(
                ctx.kind, da, h, u, act_w, act_b, block_stats, needs, grad_writable=True, relu_done=ctx.relu_done
            )  # fmt: skip
            d_gate, d_up = (dh, d_u) if gated else (None, dh)
            if need[0]:
                dx_block = _input_grad_into(d_up, up_w, d_gate, gate_w, row_block(dx, rows))
                dx = dx_block if dx is None else dx
            if need[1]:
                sums.add_mm("gate_w", d_gate.t(), xb)
            if need[2]:
                sums.add("gate_b", d_gate.sum(0))
            if need[3]:
                sums.add_mm("up_w", d_up.t(), xb)
            if need[4]:
                sums.add("up_b", d_up.sum(0))
            if need[7]:
                sums.add("act_w", d_act_w)
            if need[8]:
                sums.add("act_b", d_act_b)
        return (
            dx.view(x.shape) if dx is not None else None,
            sums.get("gate_w"),
            sums.get("gate_b"),
            sums.get("up_w"),
            sums.get("up_b"),
            sums.get("down_w"),
            g2.sum(0) if need[6] else None,
            sums.get("act_w"),
            sums.get("act_b"),
            None,
            None,
        )


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
