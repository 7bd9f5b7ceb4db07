"""Python launchers for the PolyCom Triton kernels: shape handling, allocation, grids.

Every function takes already-validated tensors of shape (..., n) and works on the 2-D (M, n) view
of them: the last dimension must be contiguous, leading dimensions may have any strides that can be
flattened into one row stride (slices along the last dimension, transposed leading dims that still
flatten...). Only tensors that cannot be viewed that way are copied. Outputs are new contiguous
tensors; incoming gradients are only read.

Coefficient gradients come back as per-program fp32 partials [programs, r + 1] (column j = power
j + 1, column r = bias) and are summed here once, in a fixed order (deterministic).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from polycom.ops.dtypes import compute_dtype
from polycom.ops.triton import config
from polycom.ops.triton.partials_kernel import coefficient_grads_kernel
from polycom.ops.triton.polynorm_kernels import poly_norm_bwd_kernel, poly_norm_fwd_kernel
from polycom.ops.triton.polyrelu_kernels import poly_relu_bwd_kernel, poly_relu_fwd_kernel


def as_rows(t: torch.Tensor) -> torch.Tensor:
    """(M, n) view of t (..., n) with a contiguous last dim; copies only when no such view exists."""
    n = t.shape[-1]
    if n > 1 and t.stride(-1) != 1:
        t = t.contiguous()
    try:
        return t.view(-1, n)
    except RuntimeError:  # leading dims cannot be merged into one stride
        return t.reshape(-1, n)


def coefficients_on(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight/bias as contiguous tensors on x's device (the kernels index them as flat arrays)."""
    if weight.device != x.device or bias.device != x.device:
        raise ValueError(
            f"weight ({weight.device}) and bias ({bias.device}) must be on the same device as the input ({x.device})"
        )
    return weight.contiguous(), bias.contiguous()


def _tl_acc(dtype: torch.dtype) -> tl.dtype:
    return tl.float64 if compute_dtype(dtype) == torch.float64 else tl.float32


def _device_guard(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _order_pow2(r: int) -> int:
    return triton.next_power_of_2(r)


def _coefficient_grads(
    part: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum the [programs, r+1] partials once (one deterministic launch); column j is power j+1 = weight[r-1-j]."""
    r = weight.numel()
    dweight = torch.empty_like(weight)
    dbias = torch.empty_like(bias)
    programs = part.shape[0]
    with _device_guard(part):
        coefficient_grads_kernel[(1,)](
            part,
            dweight,
            dbias,
            programs,
            R=r,
            RP1=triton.next_power_of_2(r + 1),
            BLOCK_P=min(1024, triton.next_power_of_2(programs)),
            ACC=_tl_acc(part.dtype),
            num_warps=4,
        )
    return dweight, dbias


def _zero_coefficient_grads(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros_like(weight), torch.zeros_like(bias)


class _BackwardBuffers:
    """Row views of the backward's inputs and freshly allocated outputs (never the incoming gradient).

    x2, g2, up2: (m, n) row views of x, dy and up (x when not gated); dx, dup: outputs shaped like x / up
    (dup None when not gated); dx2, dup2: their (m, n) views (dup2 aliases dx2 when not gated, unused then).
    """

    def __init__(self, grad: torch.Tensor, x: torch.Tensor, up: torch.Tensor | None) -> None:
        self.x2 = as_rows(x)
        self.m, self.n = self.x2.shape
        self.dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        self.dup = torch.empty(up.shape, dtype=up.dtype, device=up.device) if up is not None else None
        if self.m == 0:
            return
        self.g2 = as_rows(grad)
        self.up2 = as_rows(up) if up is not None else self.x2
        self.dx2 = self.dx.view(self.m, self.n)
        self.dup2 = self.dup.view(self.m, self.n) if self.dup is not None else self.dx2


def poly_norm_forward(
    x: torch.Tensor, up: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, rstd): y = PolyNorm(x) (* up) shaped like x; rstd (M, r) fp32 (fp64 for fp64 x) row statistics."""
    weight, bias = coefficients_on(x, weight, bias)
    r = weight.numel()
    x2 = as_rows(x)
    m, n = x2.shape
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    rstd = torch.empty((m, r), dtype=compute_dtype(x.dtype), device=x.device)
    if m == 0:
        return y, rstd
    up2 = as_rows(up) if up is not None else x2
    y2 = y.view(m, n)
    row_bytes = n * x.element_size()  # the looped path re-reads x
    launch = config.row_launch(m, n, backward=False, row_bytes=row_bytes, num_sms=config.num_sms(x.device))
    with _device_guard(x):
        poly_norm_fwd_kernel[launch.grid](
            x2,
            up2,
            y2,
            weight,
            bias,
            rstd,
            m,
            n,
            x2.stride(0),
            up2.stride(0),
            y2.stride(0),
            float(eps),
            R=r,
            RP=_order_pow2(r),
            GATED=up is not None,
            BLOCK_M=launch.block_m,
            BLOCK_N=launch.block_n,
            SINGLE_TILE=launch.single_tile,
            ACC=_tl_acc(x.dtype),
            num_warps=launch.num_warps,
        )
    return y, rstd


def poly_norm_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    up: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor,
    rstd: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(dx, d_up or None, dweight, dbias) of PolyNorm from x, the saved rstd and the output gradient."""
    weight, bias = coefficients_on(x, weight, bias)
    r = weight.numel()
    b = _BackwardBuffers(grad, x, up)
    if b.m == 0:
        return (b.dx, b.dup, *_zero_coefficient_grads(weight, bias))
    x2, g2, up2, dx2, dup2, m, n = b.x2, b.g2, b.up2, b.dx2, b.dup2, b.m, b.n
    row_bytes = n * x.element_size() * (3 if up is not None else 2)  # x, dy (and up) re-read
    launch = config.row_launch(m, n, backward=True, row_bytes=row_bytes, num_sms=config.num_sms(x.device))
    part = torch.empty((launch.grid[0], r + 1), dtype=rstd.dtype, device=x.device)
    with _device_guard(x):
        poly_norm_bwd_kernel[launch.grid](
            g2,
            x2,
            up2,
            rstd,
            weight,
            bias,
            dx2,
            dup2,
            part,
            m,
            n,
            g2.stride(0),
            x2.stride(0),
            up2.stride(0),
            dx2.stride(0),
            dup2.stride(0),
            R=r,
            RP=_order_pow2(r),
            GATED=up is not None,
            BLOCK_M=launch.block_m,
            BLOCK_N=launch.block_n,
            SINGLE_TILE=launch.single_tile,
            ACC=_tl_acc(x.dtype),
            num_warps=launch.num_warps,
        )
    return (b.dx, b.dup, *_coefficient_grads(part, weight, bias))


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
    launch = config.elementwise_launch(m, n)
    with _device_guard(x):
        poly_relu_fwd_kernel[launch.grid](
            x2,
            up2,
            y2,
            weight,
            bias,
            m,
            n,
            x2.stride(0),
            up2.stride(0),
            y2.stride(0),
            R=r,
            GATED=up is not None,
            BLOCK_M=launch.block_m,
            BLOCK_N=launch.block_n,
            ACC=_tl_acc(x.dtype),
            num_warps=launch.num_warps,
        )
    return y


def poly_relu_backward(
    grad: torch.Tensor, x: torch.Tensor, up: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(dx, d_up or None, dweight, dbias) of PolyReLU."""
    weight, bias = coefficients_on(x, weight, bias)
    r = weight.numel()
    b = _BackwardBuffers(grad, x, up)
    if b.m == 0:
        return (b.dx, b.dup, *_zero_coefficient_grads(weight, bias))
    x2, g2, up2, dx2, dup2, m, n = b.x2, b.g2, b.up2, b.dx2, b.dup2, b.m, b.n
    launch = config.elementwise_launch(m, n)
    part = torch.empty((launch.grid[0] * launch.grid[1], r + 1), dtype=compute_dtype(x.dtype), device=x.device)
    with _device_guard(x):
        poly_relu_bwd_kernel[launch.grid](
            g2,
            x2,
            up2,
            weight,
            bias,
            dx2,
            dup2,
            part,
            m,
            n,
            g2.stride(0),
            x2.stride(0),
            up2.stride(0),
            dx2.stride(0),
            dup2.stride(0),
            R=r,
            GATED=up is not None,
            BLOCK_M=launch.block_m,
            BLOCK_N=launch.block_n,
            ACC=_tl_acc(x.dtype),
            num_warps=launch.num_warps,
        )
    return (b.dx, b.dup, *_coefficient_grads(part, weight, bias))
