"""Building blocks shared by the dense and MoE decoders: RMSNorm and rotary position embeddings.

RMSNorm(x) = x * rsqrt(mean(x**2, -1) + eps) * weight, computed in fp32 and cast back once.
RoPE uses the "rotate half" layout (the Hugging Face Llama convention, so weights export one to one):
for a head vector split into halves (x1, x2) and frequencies f_j = theta ** (-2j / head_dim),
rope(x, p) = (x1 * cos(p f) - x2 * sin(p f), x2 * cos(p f) + x1 * sin(p f)).
"""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain. Input (..., dim) -> same shape and dtype."""

    def __init__(self, dim: int, eps: float = 1e-5, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(dim, device=device))

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps) * self.weight.float()
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps:g}"


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables for `positions` (T,) -> two (T, head_dim) fp32 tensors.

    Computed on the fly (a few kFLOPs) rather than stored in buffers, so a model built on the meta
    device and materialised later needs no special handling.
    """
    half = head_dim // 2
    inv_freq = theta ** (-torch.arange(0, half, device=positions.device, dtype=torch.float32) / half)
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]  # (T, half)
    angles = torch.cat([angles, angles], dim=-1)  # (T, head_dim): same frequency for both halves
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x` (B, H, T, head_dim) by the tables (T, head_dim); fp32 math, result in x.dtype."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)
