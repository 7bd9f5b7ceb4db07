"""One small Triton kernel that reduces the backward kernels' coefficient-gradient partials.

The PolyNorm / PolyReLU backward kernels write fp32 partials ``part[programs, r + 1]`` (column j is the
gradient of the coefficient of power j + 1, i.e. ``weight[r-1-j]``; column r is the bias gradient).
This kernel sums them over programs in a fixed order (deterministic: no atomics) and writes
``dweight`` (r,) and ``dbias`` (1,) directly in their dtypes, in one launch instead of several torch
ops (sum, flip, split, copies) after a large kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def coefficient_grads_kernel(
    part_ptr,
    dw_ptr,
    db_ptr,
    P,
    R: tl.constexpr,
    RP1: tl.constexpr,
    BLOCK_P: tl.constexpr,
    ACC: tl.constexpr,
):
    cols = tl.arange(0, RP1)
    acc = tl.zeros((BLOCK_P, RP1), dtype=ACC)
    for start in range(0, P, BLOCK_P):
        rows = start + tl.arange(0, BLOCK_P)
        mask = (rows < P)[:, None] & (cols < R + 1)[None, :]
        acc += tl.load(part_ptr + rows[:, None] * (R + 1) + cols[None, :], mask=mask, other=0.0).to(ACC)
    total = tl.sum(acc, axis=0)
    tl.store(dw_ptr + (R - 1 - cols), total.to(dw_ptr.dtype.element_ty), mask=cols < R)
    tl.store(db_ptr + (cols - R), total.to(db_ptr.dtype.element_ty), mask=cols == R)
