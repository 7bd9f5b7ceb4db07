"""Tensor-parallel-correct PolyNorm for DTensors sharded on the hidden (last) dimension.

PolyNorm normalises each power of x by its root mean square over the WHOLE hidden dimension:

    y = sum_{i=1..r} w[r-i] * p_i * inv_i + b,   p_i = x**i,   inv_i = rsqrt(S_i / H + eps),
    S_i = sum_j p_ij**2  (per row, over all H columns).

Under tensor parallelism a column-wise linear leaves each rank with a slice of the H columns, so
S_i must be summed over the tensor-parallel group before normalising. Normalising each shard on its
own (what the official PolyCom code does under Megatron TP) gives outputs that depend on the TP
degree; `poly_norm_per_shard` keeps that behaviour for comparison only.

Communication: forward, one all-reduce of the stacked (rows, r) partial sums S_i; backward, one
all-reduce of the stacked (rows, r + 1) partial sums [D_1 .. D_r, G] with

    D_i = sum_j g_ij * p_ij   (the per-row dot products),   G = sum_j g_ij,

from which every rank gets the exact input gradient of its slice

    dL/dx_j = sum_i i * x_j**(i-1) * w[r-i] * inv_i * (g_j - p_ij * inv_i**2 * D_i / H)

and the coefficient gradients computed from GLOBAL sums (so they are identical on every rank of the
group and must NOT be reduced again over the group):

    dL/dw[r-i] = sum_rows inv_i * D_i,    dL/db = sum_rows G.

This is choice (a) of docs/kernel-design.md "Tensor parallel": no double counting whether the
coefficients are plain tensors (each rank holds a full copy) or replicated DTensors.

All math is in `polycom.ops.dtypes.compute_dtype` (fp32; fp64 for fp64 input) with one final cast, like
`polycom.ops.reference`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard

from polycom.ops import reference
from polycom.ops.dtypes import compute_dtype

__all__ = [
    "is_dtensor",
    "poly_norm_dtensor",
    "poly_norm_gated_dtensor",
    "poly_norm_per_shard",
    "poly_norm_gated_per_shard",
    "tp_shard_group",
]


def is_dtensor(x: object) -> bool:
    """True when `x` is a `torch.distributed.tensor.DTensor`."""
    return isinstance(x, DTensor)


def tp_shard_group(x: DTensor) -> dist.ProcessGroup | None:
    """The process group over which `x`'s last dimension is split, or None when no fast path applies.

    The fast path needs exactly one mesh dimension with a Shard(last dim) placement and every other
    mesh dimension Replicate (the layout a column-wise parallel linear produces, on a 1-D TP mesh or
    on the TP dimension of a 2-D mesh).
    """
    last = x.ndim - 1
    shard_dims = []
    for mesh_dim, placement in enumerate(x.placements):
        if isinstance(placement, Shard) and placement.dim in (last, -1):
            shard_dims.append(mesh_dim)
        elif not isinstance(placement, Replicate):
            return None
    if len(shard_dims) != 1:
        return None
    return x.device_mesh.get_group(shard_dims[0])


def _as_plain(t: torch.Tensor) -> torch.Tensor:
    """A coefficient as a plain tensor, differentiably.

    A replicated DTensor gives its local copy (its gradient is then marked Replicate, which is right
    because our coefficient gradients are identical on every rank); any other placement is gathered.
    """
    if not isinstance(t, DTensor):
        return t
    if all(isinstance(p, Replicate) for p in t.placements):
        return t.to_local()
    return t.full_tensor()


def _all_reduce(t: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


def _forward_core(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, width: int, group: dist.ProcessGroup
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, inv) in the compute dtype; x is the local (rows..., h_local) slice, already upcast."""
    r = weight.numel()
    powers = [x]
    for _ in range(1, r):
        powers.append(powers[-1] * x)
    partial = torch.stack([p.square().sum(dim=-1) for p in powers], dim=-1)  # (..., r)
    total = _all_reduce(partial, group)
    inv = torch.rsqrt(total / width + eps)  # (..., r): inv[..., i-1] normalises x**i
    y = bias.expand_as(x)
    for i in range(1, r + 1):
        y = y + weight[r - i] * (powers[i - 1] * inv[..., i - 1 : i])
    return y, inv


def _backward_core(
    x: torch.Tensor, weight: torch.Tensor, inv: torch.Tensor, g: torch.Tensor, width: int, group: dist.ProcessGroup
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias) in the compute dtype from the local slice and its upstream gradient g."""
    r = weight.numel()
    powers = [x]
    for _ in range(1, r):
        powers.append(powers[-1] * x)
    partial = torch.stack([(g * p).sum(dim=-1) for p in powers] + [g.sum(dim=-1)], dim=-1)  # (..., r + 1)
    total = _all_reduce(partial, group)
    dots, gsum = total[..., :r], total[..., r]
    dx = torch.zeros_like(x)
    power_below = torch.ones_like(x)  # x**(i-1)
    for i in range(1, r + 1):
        inv_i = inv[..., i - 1 : i]
        dot_i = dots[..., i - 1 : i]
        dp = weight[r - i] * inv_i * (g - powers[i - 1] * inv_i.square() * dot_i / width)
        dx = dx + i * power_below * dp
        power_below = powers[i - 1]
    # Coefficient gradients from the global sums: identical on every rank of the group.
    dweight = torch.stack([(inv[..., r - k - 1] * dots[..., r - k - 1]).sum() for k in range(r)])
    dbias = gsum.sum().reshape(1)
    return dx, dweight, dbias


class _TPPolyNorm(torch.autograd.Function):
    """PolyNorm on the local slice of a last-dim-sharded tensor (see module docstring)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, width, group):  # type: ignore[override]
        cd = compute_dtype(x.dtype)
        xc, wc = x.to(cd), weight.to(cd)
        y, inv = _forward_core(xc, wc, bias.to(cd), eps, width, group)
        ctx.save_for_backward(x, weight, inv)
        ctx.width, ctx.group, ctx.bias_dtype = width, group, bias.dtype
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight, inv = ctx.saved_tensors
        cd = inv.dtype
        dx, dw, db = _backward_core(x.to(cd), weight.to(cd), inv, grad_out.to(cd), ctx.width, ctx.group)
        return dx.to(x.dtype), dw.to(weight.dtype), db.to(ctx.bias_dtype), None, None, None


class _TPPolyNormGated(torch.autograd.Function):
    """PolyNorm(gate) * up on local slices of last-dim-sharded tensors; the product in fp32."""

    @staticmethod
    def forward(ctx, gate, up, weight, bias, eps, width, group):  # type: ignore[override]
        cd = compute_dtype(gate.dtype)
        gc, wc = gate.to(cd), weight.to(cd)
        bc = bias.to(cd)
        pn, inv = _forward_core(gc, wc, bc, eps, width, group)
        ctx.save_for_backward(gate, up, weight, bias, inv)
        ctx.width, ctx.group = width, group
        return (pn * up.to(cd)).to(gate.dtype)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        gate, up, weight, bias, inv = ctx.saved_tensors
        cd = inv.dtype
        gc, wc, g = gate.to(cd), weight.to(cd), grad_out.to(cd)
        r = wc.numel()
        # Recompute PolyNorm(gate) from the saved global inverse RMS (no communication needed).
        pn = bias.to(cd).expand_as(gc)
        power = gc
        for i in range(1, r + 1):
            if i > 1:
                power = power * gc
            pn = pn + wc[r - i] * (power * inv[..., i - 1 : i])
        dup = g * pn
        dgate, dw, db = _backward_core(gc, wc, inv, g * up.to(cd), ctx.width, ctx.group)
        return dgate.to(gate.dtype), dup.to(up.dtype), dw.to(weight.dtype), db.to(bias.dtype), None, None, None


def _wrap_like(local: torch.Tensor, like: DTensor) -> DTensor:
    return DTensor.from_local(
        local, device_mesh=like.device_mesh, placements=like.placements, shape=like.shape, stride=like.stride()
    )


def _replicate_all(x: DTensor) -> DTensor:
    return x.redistribute(x.device_mesh, [Replicate()] * x.device_mesh.ndim)


def poly_norm_dtensor(x: DTensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6) -> DTensor:
    """PolyNorm of a DTensor, equal to the unsharded op; returns a DTensor with x's placements.

    x: DTensor (..., H). Sharded on its last dim (Shard(-1) on one mesh dimension, Replicate on the
    others): tensor-parallel fast path, one all-reduce forward and one backward. Any other layout
    (Replicate, Shard on a row dimension, Partial): gathered to Replicate, the plain op applied to the
    full tensor, and the result redistributed back (correct, not fast).
    weight (r,), bias (1,): plain tensors or DTensors (replicated ones are used as their local copy).
    """
    if not isinstance(x, DTensor):
        raise TypeError(f"poly_norm_dtensor expects a DTensor, got {type(x).__name__}; use polycom.poly_norm")
    w, b = _as_plain(weight), _as_plain(bias)
    group = tp_shard_group(x)
    if group is None:
        full = _replicate_all(x)
        y = reference.poly_norm_reference(full.to_local(), w, b, eps)
        y = DTensor.from_local(y, device_mesh=full.device_mesh, placements=full.placements, run_check=False)
        return y.redistribute(x.device_mesh, _no_partial(x.placements))
    y_local = _TPPolyNorm.apply(x.to_local(), w, b, float(eps), int(x.shape[-1]), group)
    return _wrap_like(y_local, x)


def poly_norm_gated_dtensor(
    gate: DTensor, up: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6
) -> DTensor:
    """PolyNorm(gate) * up for DTensors, equal to the unsharded op; returns a DTensor like `gate`.

    `up` is redistributed to `gate`'s placements when it differs (a plain tensor is taken to be the
    full, replicated value). Fast path and fallback as in `poly_norm_dtensor`.
    """
    if not isinstance(gate, DTensor):
        raise TypeError(f"poly_norm_gated_dtensor expects a DTensor gate, got {type(gate).__name__}")
    if not isinstance(up, DTensor):
        up = DTensor.from_local(up, gate.device_mesh, [Replicate()] * gate.device_mesh.ndim, run_check=False)
    if up.device_mesh != gate.device_mesh:
        raise ValueError("gate and up are DTensors on different device meshes")
    if tuple(up.placements) != tuple(gate.placements):
        up = up.redistribute(gate.device_mesh, gate.placements)
    w, b = _as_plain(weight), _as_plain(bias)
    group = tp_shard_group(gate)
    if group is None:
        full_gate, full_up = _replicate_all(gate), _replicate_all(up)
        y = reference.poly_norm_gated_reference(full_gate.to_local(), full_up.to_local(), w, b, eps)
        y = DTensor.from_local(y, device_mesh=full_gate.device_mesh, placements=full_gate.placements, run_check=False)
        return y.redistribute(gate.device_mesh, _no_partial(gate.placements))
    y_local = _TPPolyNormGated.apply(gate.to_local(), up.to_local(), w, b, float(eps), int(gate.shape[-1]), group)
    return _wrap_like(y_local, gate)


def _no_partial(placements) -> list:
    """PolyNorm is not linear: a Partial input is summed first, so its output is Replicate there."""
    return [Replicate() if isinstance(p, Partial) else p for p in placements]


def poly_norm_per_shard(x: DTensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6) -> DTensor:
    """The official PolyCom behaviour under Megatron TP: each shard normalised over its OWN columns.

    For comparison only: its output depends on the TP degree and differs from the unsharded op.
    """
    y = reference.poly_norm_reference(x.to_local(), _as_plain(weight), _as_plain(bias), eps)
    return _wrap_like(y, x)


def poly_norm_gated_per_shard(
    gate: DTensor, up: DTensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6
) -> DTensor:
    """Per-shard (official, TP-degree dependent) gated PolyNorm; for comparison only."""
    y = reference.poly_norm_gated_reference(gate.to_local(), up.to_local(), _as_plain(weight), _as_plain(bias), eps)
    return _wrap_like(y, gate)
