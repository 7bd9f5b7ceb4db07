"""Tensor-parallel-correct PolyNorm for DTensors sharded on the hidden (last) dimension.

PolyNorm normalises each power of x by its root mean square over the WHOLE hidden dimension:

    y = sum_{i=1..r} w[r-i] * p_i * inv_i + b,   p_i = x**i,   inv_i = rsqrt(S_i / H + eps),
    S_i = sum_j p_ij**2  (per row, over all H columns).

Under tensor parallelism a column-wise linear leaves each rank with a slice of the H columns, so
S_i must be summed over the tensor-parallel group before normalising. Normalising each shard on its
own (what the official PolyCom code does under Megatron TP) gives outputs that depend on the TP
degree; `poly_norm_per_shard` keeps that behaviour for comparison only.

Row scaling (as in `polycom.ops.reference`, so that no power overflows in fp32): every term is
evaluated on q = x / s with s = max(max_j |x_j| over the WHOLE row, 1) and eps / s**(2i) in place of
eps, and dx is divided by s once; p_i below is q**i. The global s is not known before communicating,
so each rank scales its slice by its own s_k = max(max |x| of the slice, 1) and sends s_k with its
sums; the combine is then exact:

    s = max_k s_k,     S_i = sum_k S_ik * (s_k / s)**(2i)     (S_ik: the sum of rank k, on x / s_k)

Communication: forward, one all-gather of the stacked (rows, r + 1) [S_1k .. S_rk, s_k] (an
all-reduce MAX of s before an all-reduce SUM would cost two collectives; every rank combines the same
gathered values in rank order, so the statistics are identical on every rank); backward, one
all-reduce of the stacked (rows, r + 1) partial sums [D_1 .. D_r, G] with

    D_i = sum_j g_ij * p_ij   (the per-row dot products, on q with the saved global s),   G = sum_j g_ij,

from which every rank gets the exact input gradient of its slice

    dL/dx_j = (1/s) * sum_i i * q_j**(i-1) * w[r-i] * inv_i * (g_j - p_ij * inv_i**2 * D_i / H)

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
    "poly_norm_local_shard",
    "poly_norm_gated_local_shard",
    "sum_grad_over_group",
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


def _all_gather(t: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """(world, *t.shape): every rank's t, in rank order."""
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, t.contiguous(), group=group)
    return torch.stack(parts)


def _even_powers(ratio: torch.Tensor, r: int) -> torch.Tensor:
    """(..., r): ratio**(2i) for i = 1..r; ratio (..., 1)."""
    r2 = ratio * ratio
    out = [r2]
    for _ in range(1, r):
        out.append(out[-1] * r2)
    return torch.cat(out, dim=-1)


def _global_stats(x: torch.Tensor, r: int, eps: float, width: int, group: dist.ProcessGroup) -> torch.Tensor:
    """(..., r + 1) [inv_1 .. inv_r, s] of the whole rows from the local slice x (one all-gather)."""
    s_local = x.abs().amax(dim=-1, keepdim=True).clamp_min(1.0)
    q2 = (x / s_local).square()
    even, sums = q2, []
    for i in range(1, r + 1):
        if i > 1:
            even = even * q2
        sums.append(even.sum(dim=-1, keepdim=True))
    gathered = _all_gather(torch.cat([*sums, s_local], dim=-1), group)  # (world, ..., r + 1)
    scales = gathered[..., r:]
    s = scales.amax(dim=0)  # (..., 1), the global row scale
    total = (gathered[..., :r] * _even_powers(scales / s, r)).sum(dim=0)
    inv = torch.rsqrt(total / width + eps * _even_powers(1.0 / s, r))  # inv[..., i-1] normalises q**i
    return torch.cat([inv, s], dim=-1)


def _poly_norm_from_stats(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stats: torch.Tensor):
    """b + sum_i w[r-i] q**i inv_i with q = x / s (stats = [inv_1 .. inv_r, s])."""
    r = weight.numel()
    q = x / stats[..., r:]
    y = bias.expand_as(x)
    power = q
    for i in range(1, r + 1):
        if i > 1:
            power = power * q
        y = y + weight[r - i] * (power * stats[..., i - 1 : i])
    return y


def _forward_core(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, width: int, group: dist.ProcessGroup
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, stats [inv_1 .. inv_r, s]) in the compute dtype; x is the local (rows..., h_local) slice, upcast."""
    stats = _global_stats(x, weight.numel(), eps, width, group)
    return _poly_norm_from_stats(x, weight, bias, stats), stats


def _backward_core(
    x: torch.Tensor, weight: torch.Tensor, stats: torch.Tensor, g: torch.Tensor, width: int, group: dist.ProcessGroup
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias) in the compute dtype from the local slice and its upstream gradient g."""
    r = weight.numel()
    inv, s = stats[..., :r], stats[..., r:]
    q = x / s
    powers = [q]
    for _ in range(1, r):
        powers.append(powers[-1] * q)
    partial = torch.stack([(g * p).sum(dim=-1) for p in powers] + [g.sum(dim=-1)], dim=-1)  # (..., r + 1)
    total = _all_reduce(partial, group)
    dots, gsum = total[..., :r], total[..., r]
    dx = torch.zeros_like(x)
    power_below = torch.ones_like(x)  # q**(i-1)
    for i in range(1, r + 1):
        inv_i = inv[..., i - 1 : i]
        dot_i = dots[..., i - 1 : i]
        dp = weight[r - i] * inv_i * (g - powers[i - 1] * inv_i.square() * dot_i / width)
        dx = dx + i * power_below * dp
        power_below = powers[i - 1]
    dx = dx / s
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
        y, stats = _forward_core(xc, wc, bias.to(cd), eps, width, group)
        ctx.save_for_backward(x, weight, stats)
        ctx.width, ctx.group, ctx.bias_dtype = width, group, bias.dtype
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight, stats = ctx.saved_tensors
        cd = stats.dtype
        dx, dw, db = _backward_core(x.to(cd), weight.to(cd), stats, grad_out.to(cd), ctx.width, ctx.group)
        return dx.to(x.dtype), dw.to(weight.dtype), db.to(ctx.bias_dtype), None, None, None


class _TPPolyNormGated(torch.autograd.Function):
    """PolyNorm(gate) * up on local slices of last-dim-sharded tensors; the product in fp32."""

    @staticmethod
    def forward(ctx, gate, up, weight, bias, eps, width, group):  # type: ignore[override]
        cd = compute_dtype(gate.dtype)
        gc, wc = gate.to(cd), weight.to(cd)
        bc = bias.to(cd)
        pn, stats = _forward_core(gc, wc, bc, eps, width, group)
        ctx.save_for_backward(gate, up, weight, bias, stats)
        ctx.width, ctx.group = width, group
        return (pn * up.to(cd)).to(gate.dtype)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        gate, up, weight, bias, stats = ctx.saved_tensors
        cd = stats.dtype
        gc, wc, g = gate.to(cd), weight.to(cd), grad_out.to(cd)
        # Recompute PolyNorm(gate) from the saved global statistics (no communication needed).
        dup = g * _poly_norm_from_stats(gc, wc, bias.to(cd), stats)
        dgate, dw, db = _backward_core(gc, wc, stats, g * up.to(cd), ctx.width, ctx.group)
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
    others): tensor-parallel fast path, one collective forward (all-gather) and one backward (all-reduce). Any other layout
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


def poly_norm_local_shard(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, group: dist.ProcessGroup, width: int
) -> torch.Tensor:
    """PolyNorm of the local column slice of a row sharded over `group`, for frameworks that pass plain tensors.

    x: (..., h_local), this rank's columns of rows whose full width is `width` (the sum of every rank's
    h_local); weight (r,), bias (1,) plain tensors, identical on every rank. Same collectives and
    exactness as `poly_norm_dtensor`'s fast path: the output equals the columns of the unsharded op, the
    coefficient gradients are complete and identical on every rank (do not reduce them again).
    """
    if isinstance(x, DTensor):
        raise TypeError("poly_norm_local_shard takes this rank's plain tensor; a DTensor goes to polycom.poly_norm")
    return _TPPolyNorm.apply(x, weight, bias, float(eps), int(width), group)


def poly_norm_gated_local_shard(
    gate: torch.Tensor,
    up: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    group: dist.ProcessGroup,
    width: int,
) -> torch.Tensor:
    """PolyNorm(gate) * up on local column slices (see `poly_norm_local_shard`); gate, up (..., h_local)."""
    if isinstance(gate, DTensor) or isinstance(up, DTensor):
        raise TypeError("poly_norm_gated_local_shard takes plain tensors; DTensors go to polycom.poly_norm_gated")
    return _TPPolyNormGated.apply(gate, up, weight, bias, float(eps), int(width), group)


class _SumGradOverGroup(torch.autograd.Function):
    """Identity forward; backward all-reduces (SUM) the gradient over the group (Megatron's "copy to region")."""

    @staticmethod
    def forward(ctx, t, group):  # type: ignore[override]
        ctx.group = group
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return _all_reduce(grad.contiguous().clone(), ctx.group), None


def sum_grad_over_group(t: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """`t` unchanged; its gradient is summed over `group` in backward (no-op without a group).

    For parameters that every rank of `group` holds whole but that each rank uses on a different part
    of the data (an elementwise activation on a column slice, shared coefficients under expert
    parallelism): after the sum each rank holds the complete gradient.
    """
    if group is None or dist.get_world_size(group) == 1:
        return t
    return _SumGradOverGroup.apply(t, group)


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
