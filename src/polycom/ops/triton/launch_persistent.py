"""Launchers of the persistent kernels (variant 2): tile plan, residency-sized grid, split-row scratch.

The functions take the (M, n) row views and the output buffers prepared by `launch` and launch
`polynorm_persistent` / the persistent PolyReLU kernels:

- grid = at most the resident programs of the compiled kernel (`residency.compiled_resident_slots` on
  CUDA; 2 in the CPU interpreter, so tests exercise the persistent loop), a multiple of the split;
- split rows (rows wider than one register tile): a scratch of [M, split, RP] partial sums and one
  arrival counter per row block; on CUDA one launch in which the split programs wait for each other
  (PHASE 2, requires resident slots >= split, else the row is not split and uses the variant 1 column
  loop), in the interpreter two launches (PHASE 0 publish, PHASE 1 combine and apply).
"""

from __future__ import annotations

import torch
import triton

from polycom.ops.dtypes import compute_dtype
from polycom.ops.triton import config, residency
from polycom.ops.triton.launch_common import device_guard, tl_acc
from polycom.ops.triton.polynorm_persistent import poly_norm_bwd_persistent_kernel, poly_norm_fwd_persistent_kernel
from polycom.ops.triton.polyrelu_kernels import poly_relu_bwd_persistent_kernel, poly_relu_fwd_persistent_kernel

ONE_LAUNCH, PUBLISH, APPLY = 2, 0, 1  # PHASE values of the split-row kernels


def _interpreted(t: torch.Tensor) -> bool:
    return t.device.type != "cuda"


def _resident_slots(kernel, t: torch.Tensor, args: tuple, kwargs: dict) -> int:
    """Resident programs of `kernel` for these arguments (CPU interpreter: config.num_sms = 2, one each)."""
    if _interpreted(t):
        return config.num_sms(t.device)
    key = (kernel.fn.__name__ if hasattr(kernel, "fn") else id(kernel),) + tuple(
        (k, str(v)) for k, v in sorted(kwargs.items())
    ) + tuple(str(a.dtype) if isinstance(a, torch.Tensor) else type(a).__name__ for a in args)  # fmt: skip
    return residency.compiled_resident_slots(kernel, key, t.device, args, kwargs)


def _launch_rows(kernel, t: torch.Tensor, plan: config.PersistentRowLaunch, args: tuple, kwargs: dict) -> int | None:
    """Launch a persistent row kernel (split or not); returns the grid, or None when the split programs
    cannot all be resident (the caller falls back to variant 1)."""
    kwargs = dict(kwargs, BLOCK_M=plan.block_m, BLOCK_N=plan.block_n, SPLIT=plan.split,
                  SPLIT_P=triton.next_power_of_2(plan.split),
                  NUM_STAGES=plan.num_stages, num_warps=plan.num_warps)  # fmt: skip
    phases = (PUBLISH, APPLY) if plan.split > 1 and _interpreted(t) else (ONE_LAUNCH,)
    slots = _resident_slots(kernel, t, args, dict(kwargs, PHASE=phases[-1]))
    if plan.split > 1 and not _interpreted(t) and slots < plan.split:
        return None
    grid = config.persistent_grid(plan.blocks, plan.split, slots)
    with device_guard(t):
        for phase in phases:
            kernel[(grid,)](*args, **dict(kwargs, PHASE=phase))
    return grid


def _split_scratch(plan: config.PersistentRowLaunch, m: int, rp: int, dtype: torch.dtype, device) -> tuple:
    """[M, split, RP] partial sums and one int32 arrival counter per row block (dummies when not split)."""
    if plan.split == 1:
        dummy = torch.empty((1,), dtype=dtype, device=device)
        return dummy, torch.empty((1,), dtype=torch.int32, device=device)
    scratch = torch.empty((m, plan.split, rp), dtype=dtype, device=device)
    return scratch, torch.zeros((plan.blocks,), dtype=torch.int32, device=device)


def poly_norm_forward(x2, up2, y2, weight, bias, rstd, eps: float, gated: bool) -> bool:
    """Variant 2 forward into y2 / rstd; False when the row split cannot be scheduled (use variant 1)."""
    m, n = x2.shape
    r = weight.numel()
    plan = config.persistent_row_launch(m, n, backward=False)
    rp = triton.next_power_of_2(r + 1 if plan.split > 1 else r)  # split rows: column r carries the chunk's scale
    scratch, count = _split_scratch(plan, m, rp, rstd.dtype, x2.device)
    args = (x2, up2, y2, weight, bias, rstd, scratch, count, m, n, x2.stride(0), up2.stride(0), y2.stride(0), eps)
    kwargs = dict(R=r, RP=rp, GATED=gated, ACC=tl_acc(x2.dtype))
    return _launch_rows(poly_norm_fwd_persistent_kernel, x2, plan, args, kwargs) is not None


def poly_norm_backward(b, weight, bias, rstd, gated: bool, needs: tuple[bool, bool, bool]) -> torch.Tensor | None:
    """Variant 2 backward into b.dx2 / b.dup2; returns the [programs, r + 1] partials (None: use variant 1).

    needs: (dx, d_up, coefficient gradients) wanted; the others are neither computed nor stored.
    """
    r = weight.numel()
    rp = triton.next_power_of_2(r + 1)  # column r of the dot matrix carries sum g
    plan = config.persistent_row_launch(b.m, b.n, backward=True, gated=gated)
    scratch, count = _split_scratch(plan, b.m, rp, rstd.dtype, b.x2.device)
    # one row per program, written by every program (rows beyond the grid are never read): no memset
    part = torch.empty((plan.blocks * plan.split, r + 1), dtype=rstd.dtype, device=b.x2.device)
    args = (b.g2, b.x2, b.up2, rstd, weight, bias, b.dx2, b.dup2, part, scratch, count, b.m, b.n,
            b.g2.stride(0), b.x2.stride(0), b.up2.stride(0), b.dx2.stride(0), b.dup2.stride(0))  # fmt: skip
    kwargs = dict(R=r, RP=rp, GATED=gated, ACC=tl_acc(b.x2.dtype),
                  NEED_DX=needs[0], NEED_DUP=gated and needs[1], NEED_COEF=needs[2])  # fmt: skip
    grid = _launch_rows(poly_norm_bwd_persistent_kernel, b.x2, plan, args, kwargs)
    return None if grid is None else part[:grid]


def _elementwise_plan(m: int, n: int) -> tuple[config.ElementwiseLaunch, int]:
    tile = config.elementwise_launch(m, n)
    return tile, tile.grid[0] * tile.grid[1]


def poly_relu_forward(x2, up2, y2, weight, bias, gated: bool) -> None:
    """Variant 2 PolyReLU forward into y2: persistent over 2-D tiles."""
    m, n = x2.shape
    tile, tiles = _elementwise_plan(m, n)
    args = (x2, up2, y2, weight, bias, m, n, x2.stride(0), up2.stride(0), y2.stride(0))
    kwargs = dict(R=weight.numel(), GATED=gated, BLOCK_M=tile.block_m, BLOCK_N=tile.block_n,
                  NUM_STAGES=config.TILING.num_stages, ACC=tl_acc(x2.dtype), num_warps=tile.num_warps)  # fmt: skip
    grid = config.persistent_grid(tiles, 1, _resident_slots(poly_relu_fwd_persistent_kernel, x2, args, kwargs))
    with device_guard(x2):
        poly_relu_fwd_persistent_kernel[(grid,)](*args, **kwargs)


def poly_relu_backward(b, weight, bias, gated: bool, needs: tuple[bool, bool, bool]) -> torch.Tensor:
    """Variant 2 PolyReLU backward into b.dx2 / b.dup2; returns the [programs, r + 1] partials."""
    r = weight.numel()
    tile, tiles = _elementwise_plan(b.m, b.n)
    part = torch.empty((tiles, r + 1), dtype=compute_dtype(b.x2.dtype), device=b.x2.device)  # one row per program
    args = (b.g2, b.x2, b.up2, weight, bias, b.dx2, b.dup2, part, b.m, b.n,
            b.g2.stride(0), b.x2.stride(0), b.up2.stride(0), b.dx2.stride(0), b.dup2.stride(0))  # fmt: skip
    kwargs = dict(R=r, RP=triton.next_power_of_2(r + 1), GATED=gated, BLOCK_M=tile.block_m, BLOCK_N=tile.block_n,
                  NUM_STAGES=config.TILING.num_stages, ACC=tl_acc(b.x2.dtype), num_warps=tile.num_warps,
                  NEED_DX=needs[0], NEED_DUP=gated and needs[1], NEED_COEF=needs[2])  # fmt: skip
    grid = config.persistent_grid(tiles, 1, _resident_slots(poly_relu_bwd_persistent_kernel, b.x2, args, kwargs))
    with device_guard(b.x2):
        poly_relu_bwd_persistent_kernel[(grid,)](*args, **kwargs)
    return part[:grid]
