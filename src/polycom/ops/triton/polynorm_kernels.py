"""Triton kernels for PolyNorm (plain and gated), forward and backward.

Notation (r = order, powers i = 1..r, one row of n values x). Every term is evaluated on the scaled
row q = x / s, s = max(max_j |x_j|, 1), with e_i = eps / s**(2i) in place of eps (the row scaling of
`polycom.ops.reference`: the same formula exactly, and no power of |q| <= 1 can overflow; rows with
max |x| <= 1 have s = 1 and compute exactly as the unscaled formula):

    m_i   = mean(q**(2i))                      (fp32 row statistics, all r in ONE pass over x)
    rho_i = rsqrt(m_i + e_i)                   (saved for the backward with s: r + 1 fp32 values per row)
    c_i   = weight[r-i] * rho_i
    y     = bias + sum_i c_i q**i              (Horner: no power tensor is materialised)
    gated: out = y * up

s is one more reduction (max |x|) over the tile already loaded for the sums; a row read in column
tiles keeps a running scale m and rescales its sums by (m / m_new)**(2i) when a tile raises it.

Backward, with g = dy (plain) or g = dy * up (gated), s from the saved statistics and the row dots
S_i = sum(g * q**i):

    dx        = (g * sum_i i c_i q**(i-1)  -  q * sum_i k_i q**(2(i-1))) / s,   k_i = i c_i rho_i**2 S_i / n
    dweight[r-i] = sum over rows of rho_i S_i,     dbias = sum of g,      d_up = dy * y

Column j (0-based) of the small per-row matrices [BLOCK_M, RP] holds power i = j + 1; RP is r rounded
up to a power of two (Triton block shapes must be powers of two); padded columns carry zeros.

Rows are addressed through a row stride, the last dimension must be contiguous. Row offsets are
computed in int64 so tensors above 2**31 elements work.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _inv_sqrt(v, ACC: tl.constexpr):
    """rsqrt in fp32; 1 / sqrt in fp64 (sqrt.rn.f64 and div.rn.f64 on CUDA: correctly rounded; rsqrt would be
    rsqrt.approx.f64, ~1e-9 relative error, far above fp64 rounding)."""
    if ACC == tl.float64:  # noqa: SIM300 (ACC is the compile-time dtype)
        return 1.0 / tl.sqrt(v)
    else:
        return tl.rsqrt(v)


@triton.jit
def _column(mat, ridx, j: tl.constexpr):
    """Column j of a [BLOCK_M, RP] matrix as a [BLOCK_M, 1] tensor (select, so padded NaN/inf never leak)."""
    return tl.sum(tl.where(ridx == j, mat, 0.0), axis=1)[:, None]


@triton.jit
def _row_scale(x, floor):
    """max(max_j |x_j| over the tile, floor) per row, [BLOCK_M, 1] (floor 1: the scale s of a whole row)."""
    return tl.maximum(tl.max(tl.abs(x), axis=1)[:, None], floor)


@triton.jit
def _even_powers(ratio, ridx, R: tl.constexpr):
    """[rows, RP] with column j = ratio**(2(j+1)) for j < R (1 beyond); ratio is [rows, 1]."""
    r2 = ratio * ratio
    p = r2
    out = tl.zeros_like(ridx.to(ratio.dtype)) + (tl.zeros_like(r2) + 1.0)  # ones, [rows, RP]
    for j in tl.static_range(R):
        if j > 0:
            p = p * r2
        out = tl.where(ridx == j, p, out)
    return out


@triton.jit
def _add_even_power_sums(sums, x, ridx, R: tl.constexpr):
    """sums[:, j] += sum over the tile of x**(2(j+1)) for j < R (x2, x4, ... from one load)."""
    x2 = x * x
    p = x2
    for j in tl.static_range(R):
        if j > 0:
            p = p * x2
        sums = tl.where(ridx == j, sums + tl.sum(p, axis=1)[:, None], sums)
    return sums


@triton.jit
def _add_dot_sums(dots, g, x, ridx, R: tl.constexpr):
    """dots[:, j] += sum over the tile of g * x**(j+1) for j < R."""
    p = x
    for j in tl.static_range(R):
        if j > 0:
            p = p * x
        dots = tl.where(ridx == j, dots + tl.sum(g * p, axis=1)[:, None], dots)
    return dots


@triton.jit
def _poly(x, coef, ridx, b, R: tl.constexpr):
    """b + sum_j coef[:, j] x**(j+1) by Horner."""
    acc = _column(coef, ridx, R - 1) + tl.zeros_like(x)
    for jj in tl.static_range(R - 1):
        acc = acc * x + _column(coef, ridx, R - 2 - jj)
    return acc * x + b


@triton.jit
def _poly_dx(x, g, dcoef, kcoef, ridx, R: tl.constexpr):
    """g * sum_j dcoef[:, j] x**j  -  x * sum_j kcoef[:, j] (x*x)**j (Horner in x and in x*x)."""
    x2 = x * x
    d = _column(dcoef, ridx, R - 1) + tl.zeros_like(x)
    q = _column(kcoef, ridx, R - 1) + tl.zeros_like(x)
    for jj in tl.static_range(R - 1):
        d = d * x + _column(dcoef, ridx, R - 2 - jj)
        q = q * x2 + _column(kcoef, ridx, R - 2 - jj)
    return g * d - x * q


@triton.jit
def _row_weights(w_ptr, ridx, R: tl.constexpr, ACC: tl.constexpr):
    """[1, RP] row whose column j is weight[R-1-j] (the coefficient of x**(j+1)); zero padding."""
    return tl.load(w_ptr + (R - 1 - ridx), mask=ridx < R, other=0.0).to(ACC)


@triton.jit
def _store_stats(rstd_ptr, rows64, row_ok, ridx, rstd, s, R: tl.constexpr):
    """Saved statistics of a row block: [rows, R + 1] = rho_1 .. rho_R, then s."""
    tl.store(rstd_ptr + rows64 * (R + 1) + ridx, rstd, mask=row_ok[:, None] & (ridx < R))
    tl.store(rstd_ptr + rows64 * (R + 1) + R, s, mask=row_ok[:, None])


@triton.jit
def _load_stats(rstd_ptr, rows64, row_ok, ridx, R: tl.constexpr, ACC: tl.constexpr):
    """(rho [rows, RP] (zero padding), s [rows, 1]) saved by `_store_stats`."""
    rstd = tl.load(rstd_ptr + rows64 * (R + 1) + ridx, mask=row_ok[:, None] & (ridx < R), other=0.0).to(ACC)
    s = tl.load(rstd_ptr + rows64 * (R + 1) + R, mask=row_ok[:, None], other=1.0).to(ACC)
    return rstd, s


@triton.jit
def _fwd_rows(
    block, x_ptr, up_ptr, y_ptr, rstd_ptr, w, b, eps, M, N, stride_x, stride_up, stride_y,
    R: tl.constexpr, RP: tl.constexpr, GATED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    SINGLE_TILE: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """Forward of one block of BLOCK_M rows."""
    cols = tl.arange(0, BLOCK_N)[None, :]
    ridx = tl.arange(0, RP)[None, :]
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    rows64 = rows.to(tl.int64)[:, None]
    x_rows = x_ptr + rows64 * stride_x
    y_rows = y_ptr + rows64 * stride_y
    up_rows = up_ptr + rows64 * stride_up
    sums = tl.zeros((BLOCK_M, RP), dtype=ACC)
    if SINGLE_TILE:  # the whole row is one register tile: x is read once
        mask = row_ok[:, None] & (cols < N)
        x = tl.load(x_rows + cols, mask=mask, other=0.0).to(ACC)
        s = _row_scale(x, 1.0)
        q = x * (1.0 / s)
        sums = _add_even_power_sums(sums, q, ridx, R)
        rstd = _inv_sqrt(sums / N + eps * _even_powers(1.0 / s, ridx, R), ACC)
        coef = rstd * w
        y = _poly(q, coef, ridx, b, R)
        if GATED:
            y = y * tl.load(up_rows + cols, mask=mask, other=0.0).to(ACC)
        tl.store(y_rows + cols, y.to(y_ptr.dtype.element_ty), mask=mask)
    else:  # column tiles: pass 1 = all r sums (running scale s), pass 2 = output (re-reads x, from L2)
        s = tl.full((BLOCK_M, 1), 1.0, ACC)
        for start in range(0, N, BLOCK_N):
            mask = row_ok[:, None] & (start + cols < N)
            x = tl.load(x_rows + start + cols, mask=mask, other=0.0).to(ACC)
            s_new = _row_scale(x, s)
            sums = sums * _even_powers(s / s_new, ridx, R)  # exactly 1 while the scale does not grow
            sums = _add_even_power_sums(sums, x * (1.0 / s_new), ridx, R)
            s = s_new
        rstd = _inv_sqrt(sums / N + eps * _even_powers(1.0 / s, ridx, R), ACC)
        coef = rstd * w
        for start in range(0, N, BLOCK_N):
            mask = row_ok[:, None] & (start + cols < N)
            x = tl.load(x_rows + start + cols, mask=mask, other=0.0).to(ACC)
            y = _poly(x * (1.0 / s), coef, ridx, b, R)
            if GATED:
                y = y * tl.load(up_rows + start + cols, mask=mask, other=0.0).to(ACC)
            tl.store(y_rows + start + cols, y.to(y_ptr.dtype.element_ty), mask=mask)
    _store_stats(rstd_ptr, rows64, row_ok, ridx, rstd, s, R)


@triton.jit
def poly_norm_fwd_kernel(
    x_ptr,
    up_ptr,
    y_ptr,
    w_ptr,
    b_ptr,
    rstd_ptr,
    M,
    N,
    stride_x,
    stride_up,
    stride_y,
    eps,
    R: tl.constexpr,
    RP: tl.constexpr,
    GATED: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SINGLE_TILE: tl.constexpr,
    ACC: tl.constexpr,
):
    """y[row] = PolyNorm(x[row]) (* up[row] if GATED); rstd[row, j] = rho_{j+1}, rstd[row, R] = s (fp32, or fp64 for fp64).

    Single-tile rows: one block of rows per program. Looped (wide) rows: a persistent grid, program p
    handles the row blocks p, p + P, ... (P = grid size, capped by the launcher so that the rows in
    flight fit in L2 and the second pass over x hits L2).
    """
    ridx = tl.arange(0, RP)[None, :]
    w = _row_weights(w_ptr, ridx, R, ACC)
    b = tl.load(b_ptr).to(ACC)
    eps_acc = tl.cast(eps, ACC)  # a Python float must not turn the math into fp64 (nor stay fp64 for fp32)
    if SINGLE_TILE:
        _fwd_rows(
            tl.program_id(0), x_ptr, up_ptr, y_ptr, rstd_ptr, w, b, eps_acc, M, N, stride_x, stride_up, stride_y,
            R, RP, GATED, BLOCK_M, BLOCK_N, SINGLE_TILE, ACC,
        )  # fmt: skip
    else:
        for block in range(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.num_programs(0)):
            _fwd_rows(
                block, x_ptr, up_ptr, y_ptr, rstd_ptr, w, b, eps_acc, M, N, stride_x, stride_up, stride_y,
                R, RP, GATED, BLOCK_M, BLOCK_N, SINGLE_TILE, ACC,
            )  # fmt: skip


@triton.jit
def _bwd_rows(
    block, dy_ptr, x_ptr, up_ptr, rstd_ptr, dx_ptr, dup_ptr, w, b, M, N,
    stride_dy, stride_x, stride_up, stride_dx, stride_dup,
    R: tl.constexpr, RP: tl.constexpr, GATED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    SINGLE_TILE: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """Backward of one block of rows; returns (rho_j S_j per row [BLOCK_M, RP], sum of g per row [BLOCK_M])."""
    cols = tl.arange(0, BLOCK_N)[None, :]
    ridx = tl.arange(0, RP)[None, :]
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    rows64 = rows.to(tl.int64)[:, None]
    dy_rows = dy_ptr + rows64 * stride_dy
    x_rows = x_ptr + rows64 * stride_x
    up_rows = up_ptr + rows64 * stride_up
    dx_rows = dx_ptr + rows64 * stride_dx
    dup_rows = dup_ptr + rows64 * stride_dup
    rstd, s = _load_stats(rstd_ptr, rows64, row_ok, ridx, R, ACC)
    inv_s = 1.0 / s
    coef = rstd * w
    dcoef = (ridx + 1).to(ACC) * coef
    dots = tl.zeros((BLOCK_M, RP), dtype=ACC)
    gsum = tl.zeros((BLOCK_M,), dtype=ACC)
    if SINGLE_TILE:
        mask = row_ok[:, None] & (cols < N)
        x = tl.load(x_rows + cols, mask=mask, other=0.0).to(ACC) * inv_s
        dy = tl.load(dy_rows + cols, mask=mask, other=0.0).to(ACC)
        if GATED:
            up = tl.load(up_rows + cols, mask=mask, other=0.0).to(ACC)
            g = dy * up
        else:
            g = dy
        dots = _add_dot_sums(dots, g, x, ridx, R)
        gsum += tl.sum(g, axis=1)
        kcoef = dcoef * rstd * rstd * dots / N
        dx = _poly_dx(x, g, dcoef * inv_s, kcoef * inv_s, ridx, R)  # 1/s of dx folded into the coefficients
        tl.store(dx_rows + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        if GATED:
            dup = dy * _poly(x, coef, ridx, b, R)
            tl.store(dup_rows + cols, dup.to(dup_ptr.dtype.element_ty), mask=mask)
    else:  # pass 1: row dots S_j and sum g; pass 2: dx (and d_up), re-reading x, dy, up from L2
        for start in range(0, N, BLOCK_N):
            mask = row_ok[:, None] & (start + cols < N)
            x = tl.load(x_rows + start + cols, mask=mask, other=0.0).to(ACC) * inv_s
            g = tl.load(dy_rows + start + cols, mask=mask, other=0.0).to(ACC)
            if GATED:
                g = g * tl.load(up_rows + start + cols, mask=mask, other=0.0).to(ACC)
            dots = _add_dot_sums(dots, g, x, ridx, R)
            gsum += tl.sum(g, axis=1)
        kcoef = dcoef * rstd * rstd * dots / N
        for start in range(0, N, BLOCK_N):
            mask = row_ok[:, None] & (start + cols < N)
            x = tl.load(x_rows + start + cols, mask=mask, other=0.0).to(ACC) * inv_s
            dy = tl.load(dy_rows + start + cols, mask=mask, other=0.0).to(ACC)
            if GATED:
                up = tl.load(up_rows + start + cols, mask=mask, other=0.0).to(ACC)
                g = dy * up
            else:
                g = dy
            dx = _poly_dx(x, g, dcoef * inv_s, kcoef * inv_s, ridx, R)
            tl.store(dx_rows + start + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
            if GATED:
                dup = dy * _poly(x, coef, ridx, b, R)
                tl.store(dup_rows + start + cols, dup.to(dup_ptr.dtype.element_ty), mask=mask)
    return rstd * dots, gsum


@triton.jit
def poly_norm_bwd_kernel(
    dy_ptr,
    x_ptr,
    up_ptr,
    rstd_ptr,
    w_ptr,
    b_ptr,
    dx_ptr,
    dup_ptr,
    part_ptr,
    M,
    N,
    stride_dy,
    stride_x,
    stride_up,
    stride_dx,
    stride_dup,
    R: tl.constexpr,
    RP: tl.constexpr,
    GATED: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SINGLE_TILE: tl.constexpr,
    ACC: tl.constexpr,
):
    """dx (and d_up if GATED) for the row blocks of this program (same schedule as the forward).

    part[program, j] = sum over its rows of rho_{j+1} S_{j+1}; part[program, R] = sum of g. fp32
    partials written once per program, summed by the caller (deterministic, no atomics).
    """
    ridx = tl.arange(0, RP)[None, :]
    w = _row_weights(w_ptr, ridx, R, ACC)
    b = tl.load(b_ptr).to(ACC)
    if SINGLE_TILE:
        w_part, b_part = _bwd_rows(
            tl.program_id(0), dy_ptr, x_ptr, up_ptr, rstd_ptr, dx_ptr, dup_ptr, w, b, M, N,
            stride_dy, stride_x, stride_up, stride_dx, stride_dup, R, RP, GATED, BLOCK_M, BLOCK_N, SINGLE_TILE, ACC,
        )  # fmt: skip
    else:
        w_part = tl.zeros((BLOCK_M, RP), dtype=ACC)
        b_part = tl.zeros((BLOCK_M,), dtype=ACC)
        for block in range(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.num_programs(0)):
            w_rows, b_rows = _bwd_rows(
                block, dy_ptr, x_ptr, up_ptr, rstd_ptr, dx_ptr, dup_ptr, w, b, M, N,
                stride_dy, stride_x, stride_up, stride_dx, stride_dup, R, RP, GATED, BLOCK_M, BLOCK_N, SINGLE_TILE, ACC,
            )  # fmt: skip
            w_part += w_rows
            b_part += b_rows

    # Coefficient-gradient partials of this program (fp32; summed once by the caller, no atomics).
    part_row = part_ptr + tl.program_id(0) * (R + 1)
    tl.store(part_row + tl.arange(0, RP), tl.sum(w_part, axis=0), mask=tl.arange(0, RP) < R)
    tl.store(part_row + R, tl.sum(b_part, axis=0))
