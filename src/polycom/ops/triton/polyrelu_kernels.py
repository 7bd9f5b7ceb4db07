"""Triton kernels for PolyReLU (plain and gated), forward and backward. Elementwise, 2-D tiles.

With r = order, t = relu(x) and the official coefficient order (weight[0] multiplies t**r):

    y  = bias + sum_{i=1..r} weight[r-i] t**i            (Horner in t, fp32)
    gated: out = y * up

Backward with g = dy (plain) or dy * up (gated):

    dx = g * [x > 0] * sum_i i weight[r-i] t**(i-1)
    dweight[r-i] = sum of g t**i,  dbias = sum of g        (global sums: fp32 per-program partials)
    d_up = dy * y

Each program handles one [BLOCK_M, BLOCK_N] tile of the (M, N) view with row strides.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _relu_poly(t, w_ptr, b, R: tl.constexpr, ACC: tl.constexpr):
    """b + sum_i weight[R-i] t**i by Horner (weight[0] is the highest power)."""
    acc = tl.load(w_ptr).to(ACC) + tl.zeros_like(t)
    for i in tl.static_range(1, R):
        acc = acc * t + tl.load(w_ptr + i).to(ACC)
    return acc * t + b


@triton.jit
def _relu_poly_derivative(t, w_ptr, R: tl.constexpr, ACC: tl.constexpr):
    """sum_i i weight[R-i] t**(i-1) by Horner."""
    acc = R * tl.load(w_ptr).to(ACC) + tl.zeros_like(t)
    for i in tl.static_range(1, R):
        acc = acc * t + (R - i) * tl.load(w_ptr + i).to(ACC)
    return acc


@triton.jit
def poly_relu_fwd_kernel(
    x_ptr,
    up_ptr,
    y_ptr,
    w_ptr,
    b_ptr,
    M,
    N,
    stride_x,
    stride_up,
    stride_y,
    R: tl.constexpr,
    GATED: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    ACC: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows64 = rows.to(tl.int64)[:, None]
    mask = (rows < M)[:, None] & (cols < N)[None, :]
    x = tl.load(x_ptr + rows64 * stride_x + cols[None, :], mask=mask, other=0.0).to(ACC)
    y = _relu_poly(tl.maximum(x, 0.0), w_ptr, tl.load(b_ptr).to(ACC), R, ACC)
    if GATED:
        y = y * tl.load(up_ptr + rows64 * stride_up + cols[None, :], mask=mask, other=0.0).to(ACC)
    tl.store(y_ptr + rows64 * stride_y + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def poly_relu_bwd_kernel(
    dy_ptr,
    x_ptr,
    up_ptr,
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
    GATED: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    ACC: tl.constexpr,
):
    """dx (and d_up); part[program, i-1] = sum of g t**i over the tile, part[program, R] = sum of g."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows64 = rows.to(tl.int64)[:, None]
    mask = (rows < M)[:, None] & (cols < N)[None, :]
    x = tl.load(x_ptr + rows64 * stride_x + cols[None, :], mask=mask, other=0.0).to(ACC)
    dy = tl.load(dy_ptr + rows64 * stride_dy + cols[None, :], mask=mask, other=0.0).to(ACC)
    t = tl.maximum(x, 0.0)
    if GATED:
        up = tl.load(up_ptr + rows64 * stride_up + cols[None, :], mask=mask, other=0.0).to(ACC)
        g = dy * up
        dup = dy * _relu_poly(t, w_ptr, tl.load(b_ptr).to(ACC), R, ACC)
        tl.store(dup_ptr + rows64 * stride_dup + cols[None, :], dup.to(dup_ptr.dtype.element_ty), mask=mask)
    else:
        g = dy
    dx = tl.where(x > 0.0, g * _relu_poly_derivative(t, w_ptr, R, ACC), 0.0)
    tl.store(dx_ptr + rows64 * stride_dx + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask)

    part_row = part_ptr + (pid_m * tl.num_programs(1) + pid_n).to(tl.int64) * (R + 1)
    p = t
    for i in tl.static_range(R):
        if i > 0:
            p = p * t
        tl.store(part_row + i, tl.sum(tl.sum(g * p, axis=1), axis=0))
    tl.store(part_row + R, tl.sum(tl.sum(g, axis=1), axis=0))


# --------------------------------------------------------------------------------- variant 2: persistent


@triton.jit
def _tile(t, tiles_n, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Row and column indices of tile t of a row-major tiling with tiles_n tiles per row."""
    rows = (t // tiles_n) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = (t % tiles_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    return rows.to(tl.int64)[:, None], cols[None, :]


@triton.jit
def poly_relu_fwd_persistent_kernel(
    x_ptr, up_ptr, y_ptr, w_ptr, b_ptr, M, N, stride_x, stride_up, stride_y,
    R: tl.constexpr, GATED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    NUM_STAGES: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """Same output as poly_relu_fwd_kernel; program p handles tiles p, p + P, ... (pipelined loads)."""
    tiles_n = tl.cdiv(N, BLOCK_N)
    b = tl.load(b_ptr).to(ACC)
    for t in tl.range(tl.program_id(0), tl.cdiv(M, BLOCK_M) * tiles_n, tl.num_programs(0), num_stages=NUM_STAGES):
        rows64, cols = _tile(t, tiles_n, BLOCK_M, BLOCK_N)
        mask = (rows64 < M) & (cols < N)
        x = tl.load(x_ptr + rows64 * stride_x + cols, mask=mask, other=0.0).to(ACC)
        y = _relu_poly(tl.maximum(x, 0.0), w_ptr, b, R, ACC)
        if GATED:
            y = y * tl.load(up_ptr + rows64 * stride_up + cols, mask=mask, other=0.0).to(ACC)
        tl.store(y_ptr + rows64 * stride_y + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def poly_relu_bwd_persistent_kernel(
    dy_ptr, x_ptr, up_ptr, w_ptr, b_ptr, dx_ptr, dup_ptr, part_ptr, M, N,
    stride_dy, stride_x, stride_up, stride_dx, stride_dup,
    R: tl.constexpr, RP: tl.constexpr, GATED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    NUM_STAGES: tl.constexpr, ACC: tl.constexpr,
    NEED_DX: tl.constexpr, NEED_DUP: tl.constexpr, NEED_COEF: tl.constexpr,
):  # fmt: skip
    """dx (and d_up) over this program's tiles; ONE partial row per program: part[p, i-1] = sum of g t**i,
    part[p, R] = sum of g (RP >= R + 1 columns accumulated in registers across tiles)."""
    tiles_n = tl.cdiv(N, BLOCK_N)
    b = tl.load(b_ptr).to(ACC)
    cidx = tl.arange(0, RP)
    part = tl.zeros((RP,), dtype=ACC)
    for t in tl.range(tl.program_id(0), tl.cdiv(M, BLOCK_M) * tiles_n, tl.num_programs(0), num_stages=NUM_STAGES):
        rows64, cols = _tile(t, tiles_n, BLOCK_M, BLOCK_N)
        mask = (rows64 < M) & (cols < N)
        x = tl.load(x_ptr + rows64 * stride_x + cols, mask=mask, other=0.0).to(ACC)
        dy = tl.load(dy_ptr + rows64 * stride_dy + cols, mask=mask, other=0.0).to(ACC)
        t_relu = tl.maximum(x, 0.0)
        g = dy
        if GATED:
            g = dy * tl.load(up_ptr + rows64 * stride_up + cols, mask=mask, other=0.0).to(ACC)
            if NEED_DUP:
                dup = dy * _relu_poly(t_relu, w_ptr, b, R, ACC)
                tl.store(dup_ptr + rows64 * stride_dup + cols, dup.to(dup_ptr.dtype.element_ty), mask=mask)
        if NEED_DX:
            dx = tl.where(x > 0.0, g * _relu_poly_derivative(t_relu, w_ptr, R, ACC), 0.0)
            tl.store(dx_ptr + rows64 * stride_dx + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        if NEED_COEF:
            p = g
            for i in tl.static_range(R):
                p = p * t_relu
                part = tl.where(cidx == i, part + tl.sum(tl.sum(p, axis=1), axis=0), part)
            part = tl.where(cidx == R, part + tl.sum(tl.sum(g, axis=1), axis=0), part)
    if NEED_COEF:
        tl.store(part_ptr + tl.program_id(0) * (R + 1) + cidx, part, mask=cidx < R + 1)
