"""Python launchers for the PolyCom Triton kernels: shape handling, allocation, grids.

Every function takes already-validated tensors of shape (..., n) and works on the 2-D (M, n) view
of them: the last dimension must be contiguous, leading dimensions may have any strides that can be
flattened into one row stride (slices along the last dimension, transposed leading dims that still
flatten...). Only tensors that cannot be viewed that way are copied. Outputs are new contiguous
tensors; incoming gradients are only read.

Two kernel variants (``config.TILING.variant``, default from ``POLYCOM_KERNEL_VARIANT=v1|v2``):
variant 2 (default) runs the persistent, pipelined kernels of `launch_persistent`; variant 1 the
original one-program-per-row-block kernels launched here (also the fallback when a split row cannot
be co-scheduled). Both return coefficient gradients as fp32 partials [programs, r + 1] summed once in a
fixed order (deterministic).

Backward functions take ``needs = (dx, d_up, coefficients)``: gradients that autograd does not need are
not computed by variant 2 (variant 1 computes all); unneeded outputs are returned uninitialised (dx,
d_up) or as zeros (coefficients) and dropped by the autograd wrapper.
"""

from __future__ import annotations

import torch
import triton

from polycom.ops.dtypes import compute_dtype
from polycom.ops.triton import config, launch_persistent
from polycom.ops.triton.launch_common import (
    BackwardBuffers,
    as_rows,
    coefficient_grads,
    coefficients_on,
    device_guard,
    tl_acc,
    zero_coefficient_grads,
)
from polycom.ops.triton.polynorm_kernels import poly_norm_bwd_kernel, poly_norm_fwd_kernel
from polycom.ops.triton.polyrelu_kernels import poly_relu_bwd_kernel, poly_relu_fwd_kernel

ALL_GRADS = (True, True, True)


def _v2() -> bool:
    return config.TILING.variant == 2


def poly_norm_forward(
    x: torch.Tensor, up: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, rstd): y = PolyNorm(x) (* up) shaped like x; rstd (M, r + 1) fp32 (fp64 for fp64 x) row statistics:
    rho_1 .. rho_r of the scaled row, then its scale s (see `polynorm_kernels`)."""
    weight, bias = coefficients_on(x, weight, bias)
    x2 = as_rows(x)
    m, n = x2.shape
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    rstd = torch.empty((m, weight.numel() + 1), dtype=compute_dtype(x.dtype), device=x.device)
    if m == 0:
        return y, rstd
    up2 = as_rows(up) if up is not None else x2
    y2 = y.view(m, n)
    if not (_v2() and launch_persistent.poly_norm_forward(x2, up2, y2, weight, bias, rstd, float(eps), up is not None)):
        _v1_poly_norm_forward(x2, up2, y2, weight, bias, rstd, float(eps), up is not None)
    return y, rstd


def _v1_poly_norm_forward(x2, up2, y2, weight, bias, rstd, eps: float, gated: bool) -> None:
    m, n = x2.shape
    r = weight.numel()
    row_bytes = n * x2.element_size()  # the looped path re-reads x
    launch = config.row_launch(m, n, backward=False, row_bytes=row_bytes, num_sms=config.num_sms(x2.device))
    with device_guard(x2):
        poly_norm_fwd_kernel[launch.grid](
            x2, up2, y2, weight, bias, rstd, m, n, x2.stride(0), up2.stride(0), y2.stride(0), eps,
            R=r, RP=triton.next_power_of_2(r), GATED=gated, BLOCK_M=launch.block_m, BLOCK_N=launch.block_n,
            SINGLE_TILE=launch.single_tile, ACC=tl_acc(x2.dtype), num_warps=launch.num_warps,
        )  # fmt: skip


def poly_norm_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    up: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor,
    rstd: torch.Tensor,
    needs: tuple[bool, bool, bool] = ALL_GRADS,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(dx, d_up or None, dweight, dbias) of PolyNorm from x, the saved rstd and the output gradient."""
    weight, bias = coefficients_on(x, weight, bias)
    b = BackwardBuffers(grad, x, up)
    if b.m == 0 or not any(needs):
        return (b.dx, b.dup, *zero_coefficient_grads(weight, bias))
    part = launch_persistent.poly_norm_backward(b, weight, bias, rstd, up is not None, needs) if _v2() else None
    if part is None:
        part = _v1_poly_norm_backward(b, weight, bias, rstd, up is not None)
    if not needs[2]:
        return (b.dx, b.dup, *zero_coefficient_grads(weight, bias))
    return (b.dx, b.dup, *coefficient_grads(part, weight, bias))


def _v1_poly_norm_backward(b: BackwardBuffers, weight, bias, rstd, gated: bool) -> torch.Tensor:
    r = weight.numel()
    row_bytes = b.n * b.x2.element_size() * (3 if gated else 2)  # x, dy (and up) re-read
    launch = config.row_launch(b.m, b.n, backward=True, row_bytes=row_bytes, num_sms=config.num_sms(b.x2.device))
    part = torch.empty((launch.grid[0], r + 1), dtype=rstd.dtype, device=b.x2.device)
    with device_guard(b.x2):
        poly_norm_bwd_kernel[launch.grid](
            b.g2, b.x2, b.up2, rstd, weight, bias, b.dx2, b.dup2, part, b.m, b.n,
            b.g2.stride(0), b.x2.stride(0), b.up2.stride(0), b.dx2.stride(0), b.dup2.stride(0),
            R=r, RP=triton.next_power_of_2(r), GATED=gated, BLOCK_M=launch.block_m, BLOCK_N=launch.block_n,
            SINGLE_TILE=launch.single_tile, ACC=tl_acc(b.x2.dtype), num_warps=launch.num_warps,
        )  # fmt: skip
    return part


def poly_relu_forward(
    x: torch.Tensor, up: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """PolyReLU(x) (* up), shaped like x."""
    weight, bias = coefficients_on(x, weight, bias)
    r = weight.numel()
    x2 = as_rows(x)
    m, n = x2.shape
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if m == 0:
        return y
    up2 = as_rows(up) if up is not None else x2
    y2 = y.view(m, n)
    if _v2():
        launch_persistent.poly_relu_forward(x2, up2, y2, weight, bias, up is not None)
        return y
    launch = config.elementwise_launch(m, n)
    with device_guard(x):
        poly_relu_fwd_kernel[launch.grid](
            x2, up2, y2, weight, bias, m, n, x2.stride(0), up2.stride(0), y2.stride(0),
            R=r, GATED=up is not None, BLOCK_M=launch.block_m, BLOCK_N=launch.block_n, ACC=tl_acc(x.dtype),
            num_warps=launch.num_warps,
        )  # fmt: skip
    return y


def poly_relu_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    up: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor,
    needs: tuple[bool, bool, bool] = ALL_GRADS,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(dx, d_up or None, dweight, dbias) of PolyReLU."""
    weight, bias = coefficients_on(x, weight, bias)
    r = weight.numel()
    b = BackwardBuffers(grad, x, up)
    if b.m == 0 or not any(needs):
        return (b.dx, b.dup, *zero_coefficient_grads(weight, bias))
    if _v2():
        part = launch_persistent.poly_relu_backward(b, weight, bias, up is not None, needs)
    else:
        launch = config.elementwise_launch(b.m, b.n)
        part = torch.empty((launch.grid[0] * launch.grid[1], r + 1), dtype=compute_dtype(x.dtype), device=x.device)
        with device_guard(x):
            poly_relu_bwd_kernel[launch.grid](
                b.g2, b.x2, b.up2, weight, bias, b.dx2, b.dup2, part, b.m, b.n,
                b.g2.stride(0), b.x2.stride(0), b.up2.stride(0), b.dx2.stride(0), b.dup2.stride(0),
                R=r, GATED=up is not None, BLOCK_M=launch.block_m, BLOCK_N=launch.block_n, ACC=tl_acc(x.dtype),
                num_warps=launch.num_warps,
            )  # fmt: skip
    if not needs[2]:
        return (b.dx, b.dup, *zero_coefficient_grads(weight, bias))
    return (b.dx, b.dup, *coefficient_grads(part, weight, bias))
