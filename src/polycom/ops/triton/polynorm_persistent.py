"""Persistent, pipelined PolyNorm kernels (variant 2), forward and backward, plain and gated.

Same formulas as `polynorm_kernels` (see there); what differs is the schedule:

- **persistent grid**: the launcher sizes the grid from the compiled kernel's residency (resident
  CTAs per SM x SMs, `residency.py`); program p handles the row blocks p, p + P, ... in a
  `tl.range(..., num_stages=NUM_STAGES)` loop, so the loads of the next row block are issued
  (cp.async on sm_80+) while the current one is reduced and stored;
- **one register tile per row chunk, no column loop**: a row of up to BLOCK_N columns is read once
  and all its reductions (r power sums forward; r dots and sum g backward) are taken once per row;
- **split rows** (SPLIT > 1, rows wider than one tile): a row is cut into SPLIT chunks of BLOCK_N
  columns handled by SPLIT co-resident programs (program p works on chunk p % SPLIT). Each program
  publishes its chunk's partial sums to ``scratch[row, chunk, :]``; the row's sums are then the
  sum over chunks 0..SPLIT-1 by one fixed reduction (deterministic, identical in every chunk), so each chunk
  stays in registers and every width is a single HBM pass. PHASE selects how the programs meet:
  2 = one launch, the programs wait on a per-row-block arrival counter (GPU; needs every program
  resident, which the launcher guarantees by never launching more than the resident slots);
  0 then 1 = two launches, publish then combine-and-apply (the Triton CPU interpreter runs programs
  one after another, so it cannot wait; the arithmetic is the same). The wait is an inner loop, which
  Triton's pipeliner does not handle, so split rows prefetch the next row block's tiles into registers
  by hand (issued before the current block's reduction and wait).

Row scaling (see `polynorm_kernels`): the forward takes s = max(max|x|, 1) over the tile it already
holds. A split row's chunk k sums the powers of x / t_k with its own scale t_k and publishes t_k with
its sums (column R of the scratch row, so the forward's RP >= R + 1 when split); the combine takes
s = max_k t_k and sum_k partial_k * (t_k / s)**(2i), one exchange as before, exact when no t_k
exceeds 1. The backward reads s from the saved statistics, so its dots need no rescaling.

Coefficient-gradient partials: one fp32 row per program (chunk 0 of a split row counts the row once),
summed by `partials_kernel` in a fixed order.
"""

from __future__ import annotations

import triton
import triton.language as tl

from polycom.ops.triton.polynorm_kernels import (
    _add_even_power_sums,
    _column,
    _even_powers,
    _inv_sqrt,
    _load_stats,
    _poly,
    _poly_dx,
    _row_scale,
    _row_weights,
    _store_stats,
)


@triton.jit
def _add_dot_and_g_sums(dots, g, x, ridx, R: tl.constexpr):
    """dots[:, j] += sum g * x**(j+1) for j < R; dots[:, R] += sum g (the bias gradient of the row)."""
    p = x
    for j in tl.static_range(R):
        if j > 0:
            p = p * x
        dots = tl.where(ridx == j, dots + tl.sum(g * p, axis=1)[:, None], dots)
    return tl.where(ridx == R, dots + tl.sum(g, axis=1)[:, None], dots)


@triton.jit
def _exchange_chunks(sums, scratch_ptr, count_ptr, block, rows64, row_ok, chunk, ridx,
                     SPLIT: tl.constexpr, SPLIT_P: tl.constexpr, RP: tl.constexpr, PHASE: tl.constexpr):  # fmt: skip
    """Partials of a split row (BLOCK_M = 1): publish this chunk's [1, RP] sums, meet the other chunks, and
    return all SPLIT partials as one [SPLIT_P, RP] tile (scratch layout [M, SPLIT, RP], fp32/fp64; padded
    chunks and PHASE 0 give zeros). Callers reduce the tile by one tl.sum: the same compiled reduction order
    in every chunk's program, so every chunk gets bit-identical row sums (deterministic, no atomics on data)."""
    row = scratch_ptr + rows64 * (SPLIT * RP)
    if PHASE != 1:
        tl.store(row + chunk * RP + ridx, sums, mask=row_ok[:, None])
    if PHASE == 2:
        tl.debug_barrier()  # every thread's partial store precedes the release below
        tl.atomic_add(count_ptr + block, 1, sem="release", scope="gpu")
        arrived = tl.atomic_add(count_ptr + block, 0, sem="acquire", scope="gpu")
        while arrived < SPLIT:
            arrived = tl.atomic_add(count_ptr + block, 0, sem="acquire", scope="gpu")
    sidx = tl.arange(0, SPLIT_P)[:, None]
    partials = tl.zeros((SPLIT_P, RP), dtype=sums.dtype)
    if PHASE != 0:
        partials += tl.load(row + sidx * RP + ridx, mask=(sidx < SPLIT) & row_ok[:, None], other=0.0, volatile=True)
    return partials


@triton.jit
def _combine_chunks(sums, scratch_ptr, count_ptr, block, rows64, row_ok, chunk, ridx,
                    SPLIT: tl.constexpr, SPLIT_P: tl.constexpr, RP: tl.constexpr, PHASE: tl.constexpr):  # fmt: skip
    """Row sums of a split row: the sum of the chunks' partials (`_exchange_chunks`)."""
    partials = _exchange_chunks(
        sums, scratch_ptr, count_ptr, block, rows64, row_ok, chunk, ridx, SPLIT, SPLIT_P, RP, PHASE
    )
    return tl.sum(partials, axis=0)[None, :]


@triton.jit
def _combine_scaled_chunks(sums, scratch_ptr, count_ptr, block, rows64, row_ok, chunk, ridx, R: tl.constexpr,
                           SPLIT: tl.constexpr, SPLIT_P: tl.constexpr, RP: tl.constexpr, PHASE: tl.constexpr):  # fmt: skip
    """(power sums of x / s [1, RP], s [1, 1]) of a split row whose chunks carry their scale t_k in column R:
    s = max_k t_k, sums = sum_k partial_k * (t_k / s)**(2i) (padded chunks: t = 0, weight 0)."""
    partials = _exchange_chunks(
        sums, scratch_ptr, count_ptr, block, rows64, row_ok, chunk, ridx, SPLIT, SPLIT_P, RP, PHASE
    )
    scales = _column(partials, ridx, R)  # [SPLIT_P, 1]
    s = tl.maximum(tl.max(scales, axis=0)[None, :], 1.0)  # [1, 1]
    total = tl.sum(partials * _even_powers(scales / s, ridx, R), axis=0)[None, :]
    return tl.where(ridx < R, total, 0.0), s


@triton.jit
def _rows_tile(ptr, stride, block, cols, M, N, BLOCK_M: tl.constexpr):
    """Raw (storage dtype) [BLOCK_M, BLOCK_N] tile of row block `block`; zeros beyond M (no access)."""
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    return tl.load(ptr + rows.to(tl.int64)[:, None] * stride + cols, mask=(rows < M)[:, None] & (cols < N), other=0.0)


@triton.jit
def poly_norm_fwd_persistent_kernel(
    x_ptr, up_ptr, y_ptr, w_ptr, b_ptr, rstd_ptr, scratch_ptr, count_ptr, M, N, stride_x, stride_up, stride_y, eps,
    R: tl.constexpr, RP: tl.constexpr, GATED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    SPLIT: tl.constexpr, SPLIT_P: tl.constexpr, PHASE: tl.constexpr, NUM_STAGES: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """y = PolyNorm(x) (* up), rstd[row, j] = rho_{j+1}, rstd[row, R] = s; persistent over row blocks, rows split
    in SPLIT chunks (RP >= R + 1 when SPLIT > 1: column R carries the chunk's scale)."""
    pid = tl.program_id(0)
    chunk = pid % SPLIT
    lanes = tl.num_programs(0) // SPLIT
    ridx = tl.arange(0, RP)[None, :]
    cols = chunk * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    w = _row_weights(w_ptr, ridx, R, ACC)
    b = tl.load(b_ptr).to(ACC)
    eps_acc = tl.cast(eps, ACC)  # a Python float must not turn the math into fp64 (nor stay fp64 for fp32)
    if SPLIT > 1:  # the wait of split rows stops Triton's pipeliner (inner loop): prefetch the next block by hand
        x_next = _rows_tile(x_ptr, stride_x, pid // SPLIT, cols, M, N, BLOCK_M)
    for block in tl.range(pid // SPLIT, tl.cdiv(M, BLOCK_M), lanes, num_stages=NUM_STAGES):
        rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        rows64 = rows.to(tl.int64)[:, None]
        mask = row_ok[:, None] & (cols < N)
        if SPLIT > 1:
            x = x_next.to(ACC)
            x_next = _rows_tile(x_ptr, stride_x, block + lanes, cols, M, N, BLOCK_M)
        else:
            x = tl.load(x_ptr + rows64 * stride_x + cols, mask=mask, other=0.0).to(ACC)
        sums = tl.zeros((BLOCK_M, RP), dtype=ACC)
        s = _row_scale(x, 1.0)  # this chunk's scale t_k when split
        x = x * (1.0 / s)  # scaled in place (one tile live, not x and q)
        if PHASE != 1:
            sums = _add_even_power_sums(sums, x, ridx, R)
        if SPLIT > 1:
            t = s
            sums, s = _combine_scaled_chunks(
                tl.where(ridx == R, t, sums), scratch_ptr, count_ptr, block, rows64, row_ok, chunk, ridx, R,
                SPLIT, SPLIT_P, RP, PHASE,
            )  # fmt: skip
            x = x * (t / s)  # x / t_k -> x / s (exactly 1 when no chunk exceeds 1)
        if PHASE != 0:
            rstd = _inv_sqrt(sums / N + eps_acc * _even_powers(1.0 / s, ridx, R), ACC)
            y = _poly(x, rstd * w, ridx, b, R)
            if GATED:
                y = y * tl.load(up_ptr + rows64 * stride_up + cols, mask=mask, other=0.0).to(ACC)
            tl.store(y_ptr + rows64 * stride_y + cols, y.to(y_ptr.dtype.element_ty), mask=mask)
            _store_stats(rstd_ptr, rows64, row_ok & (rows * 0 + chunk == 0), ridx, rstd, s, R)  # chunk 0 only


@triton.jit
def poly_norm_bwd_persistent_kernel(
    dy_ptr, x_ptr, up_ptr, rstd_ptr, w_ptr, b_ptr, dx_ptr, dup_ptr, part_ptr, scratch_ptr, count_ptr, M, N,
    stride_dy, stride_x, stride_up, stride_dx, stride_dup,
    R: tl.constexpr, RP: tl.constexpr, GATED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    SPLIT: tl.constexpr, SPLIT_P: tl.constexpr, PHASE: tl.constexpr, NUM_STAGES: tl.constexpr, ACC: tl.constexpr,
    NEED_DX: tl.constexpr, NEED_DUP: tl.constexpr, NEED_COEF: tl.constexpr,
):  # fmt: skip
    """dx (and d_up) of the rows of this program; part[program, j] = sum over its rows of rho_{j+1} S_{j+1}
    (j < R), part[program, R] = sum of g. RP >= R + 1: column R of the dot matrix carries sum g."""
    pid = tl.program_id(0)
    chunk = pid % SPLIT
    lanes = tl.num_programs(0) // SPLIT
    ridx = tl.arange(0, RP)[None, :]
    cols = chunk * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    w = _row_weights(w_ptr, ridx, R, ACC)
    b = tl.load(b_ptr).to(ACC)
    order = (ridx + 1).to(ACC)
    part = tl.zeros((BLOCK_M, RP), dtype=ACC)
    if SPLIT > 1:  # the wait of split rows stops Triton's pipeliner (inner loop): prefetch the next block by hand
        x_next = _rows_tile(x_ptr, stride_x, pid // SPLIT, cols, M, N, BLOCK_M)
        dy_next = _rows_tile(dy_ptr, stride_dy, pid // SPLIT, cols, M, N, BLOCK_M)
        if GATED:
            up_next = _rows_tile(up_ptr, stride_up, pid // SPLIT, cols, M, N, BLOCK_M)
    for block in tl.range(pid // SPLIT, tl.cdiv(M, BLOCK_M), lanes, num_stages=NUM_STAGES):
        rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        rows64 = rows.to(tl.int64)[:, None]
        mask = row_ok[:, None] & (cols < N)
        if SPLIT > 1:
            x = x_next.to(ACC)
            dy = dy_next.to(ACC)
            x_next = _rows_tile(x_ptr, stride_x, block + lanes, cols, M, N, BLOCK_M)
            dy_next = _rows_tile(dy_ptr, stride_dy, block + lanes, cols, M, N, BLOCK_M)
            if GATED:
                up = up_next.to(ACC)
                up_next = _rows_tile(up_ptr, stride_up, block + lanes, cols, M, N, BLOCK_M)
        else:
            x = tl.load(x_ptr + rows64 * stride_x + cols, mask=mask, other=0.0).to(ACC)
            dy = tl.load(dy_ptr + rows64 * stride_dy + cols, mask=mask, other=0.0).to(ACC)
            if GATED:
                up = tl.load(up_ptr + rows64 * stride_up + cols, mask=mask, other=0.0).to(ACC)
        rstd, s = _load_stats(rstd_ptr, rows64, row_ok, ridx, R, ACC)
        inv_s = 1.0 / s
        x = x * inv_s  # q: the backward runs on the scaled row; 1/s of dx is folded into its coefficients
        coef = rstd * w
        g = dy
        if GATED:
            g = dy * up
            if NEED_DUP and PHASE != 0:  # d_up needs no row sum: store it now, so dy and up die before the reduction
                dup = dy * _poly(x, coef, ridx, b, R)
                tl.store(dup_ptr + rows64 * stride_dup + cols, dup.to(dup_ptr.dtype.element_ty), mask=mask)
        dots = tl.zeros((BLOCK_M, RP), dtype=ACC)
        if PHASE != 1:
            dots = _add_dot_and_g_sums(dots, g, x, ridx, R)
        if SPLIT > 1:
            dots = _combine_chunks(
                dots, scratch_ptr, count_ptr, block, rows64, row_ok, chunk, ridx, SPLIT, SPLIT_P, RP, PHASE
            )
        if PHASE != 0:
            if NEED_DX:
                dcoef = order * coef
                kcoef = dcoef * rstd * rstd * dots / N
                dx = _poly_dx(x, g, dcoef * inv_s, kcoef * inv_s, ridx, R)
                tl.store(dx_ptr + rows64 * stride_dx + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
            if NEED_COEF:  # rho_j S_j for j < R, sum g in column R; a split row counts once (chunk 0)
                scale = tl.where(ridx < R, rstd, 1.0)
                part += tl.where(row_ok[:, None] & (ridx + chunk * RP < RP), scale * dots, 0.0)
    if NEED_COEF and PHASE != 0:
        cidx = tl.arange(0, RP)
        tl.store(part_ptr + pid * (R + 1) + cidx, tl.sum(part, axis=0), mask=cidx < R + 1)
