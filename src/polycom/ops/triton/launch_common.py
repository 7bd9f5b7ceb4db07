"""Helpers shared by the launchers of both kernel variants: row views, coefficient placement, output
buffers of the backward, the compute dtype as a Triton type, and the final coefficient-gradient sum.

Coefficient gradients come back from the backward kernels as fp32 partials [programs, r + 1] (column j
= power j + 1, column r = bias) and are summed here once, in a fixed order (deterministic).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from polycom.ops.dtypes import compute_dtype
from polycom.ops.triton.partials_kernel import coefficient_grads_kernel


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


def tl_acc(dtype: torch.dtype) -> tl.dtype:
    return tl.float64 if compute_dtype(dtype) == torch.float64 else tl.float32


def device_guard(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def coefficient_grads(
    part: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum the [programs, r+1] partials once (one deterministic launch); column j is power j+1 = weight[r-1-j]."""
    r = weight.numel()
    dweight = torch.empty_like(weight)
    dbias = torch.empty_like(bias)
    programs = part.shape[0]
    with device_guard(part):
        coefficient_grads_kernel[(1,)](
            part,
            dweight,
            dbias,
            programs,
            R=r,
            RP1=triton.next_power_of_2(r + 1),
            BLOCK_P=min(1024, triton.next_power_of_2(programs)),
            ACC=tl_acc(part.dtype),
            num_warps=4,
        )
    return dweight, dbias


def zero_coefficient_grads(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros_like(weight), torch.zeros_like(bias)


class BackwardBuffers:
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
