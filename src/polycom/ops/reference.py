"""Pure-PyTorch reference implementations of PolyNorm and PolyReLU.

These are the CPU path, the test oracle and the benchmark baseline. They follow the official
PolyCom code (coefficient order: ``weight[0]`` multiplies the highest power) and the project's
numerics contract (`polycom.ops.dtypes.compute_dtype`): upcast once to fp32 (fp64 for fp64 inputs), compute and reduce there, cast the
result to the input dtype once. Gradients come from autograd.

Shapes: ``x``/``gate``/``up`` are (..., h); ``weight`` is (r,); ``bias`` is (1,). Inputs are
assumed validated (see `polycom.ops.validation`).
"""

from __future__ import annotations

import torch

from polycom.ops.dtypes import compute_dtype


def _poly_norm_math(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """sum_{i=1..r} weight[r-i] * N(x**i) + bias with N(u) = u * rsqrt(mean(u**2, -1) + eps), in x's dtype."""
    r = weight.numel()
    out = bias.expand_as(x)
    power = x
    for i in range(1, r + 1):
        if i > 1:
            power = power * x
        inv_rms = torch.rsqrt(power.square().mean(dim=-1, keepdim=True) + eps)
        out = out + weight[r - i] * (power * inv_rms)
    return out


def _poly_relu_math(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """sum_{i=1..r} weight[r-i] * relu(x)**i + bias, in x's dtype."""
    r = weight.numel()
    relu = torch.relu(x)
    out = bias.expand_as(x)
    power = relu
    for i in range(1, r + 1):
        if i > 1:
            power = power * relu
        out = out + weight[r - i] * power
    return out


def poly_norm_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """PolyNorm over the last dimension; output has x's dtype and shape."""
    cd = compute_dtype(x.dtype)
    return _poly_norm_math(x.to(cd), weight.to(cd), bias.to(cd), eps).to(x.dtype)


def poly_relu_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """PolyReLU, elementwise; output has x's dtype and shape."""
    cd = compute_dtype(x.dtype)
    return _poly_relu_math(x.to(cd), weight.to(cd), bias.to(cd)).to(x.dtype)


def poly_norm_gated_reference(
    gate: torch.Tensor, up: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """PolyNorm(gate) * up, the product taken in the compute dtype and cast once."""
    cd = compute_dtype(gate.dtype)
    return (_poly_norm_math(gate.to(cd), weight.to(cd), bias.to(cd), eps) * up.to(cd)).to(gate.dtype)


def poly_relu_gated_reference(
    gate: torch.Tensor, up: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """PolyReLU(gate) * up, the product taken in the compute dtype and cast once."""
    cd = compute_dtype(gate.dtype)
    return (_poly_relu_math(gate.to(cd), weight.to(cd), bias.to(cd)) * up.to(cd)).to(gate.dtype)
