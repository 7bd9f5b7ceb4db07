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

# Row scaling (every PolyNorm implementation: this reference, the tensor-parallel path, the kernels).
#
# In fp32, x**6 overflows for |x| > ~2.6e6 (and x**(2i) inside the mean even earlier), so the
# unscaled formula silently returns wrong values (a constant row of 1e7 gave 0.667 instead of 1.0).
# Each normalised power is invariant to a positive rescaling of the row, except for eps, which
# rescales with it:
#
#     s   = max(max_j |x_j|, 1)          per row; a constant (no gradient flows into s)
#     q   = x / s                         |q_j| <= 1, so no power of q overflows
#     p_i = q**i,   e_i = eps / s**(2i)   (e_i underflows to 0 only where it is negligible)
#     inv_i = rsqrt(mean_j p_ij**2 + e_i)
#     y_j = b + sum_{i=1..r} w[r-i] * p_ij * inv_i
#
# which equals b + sum_i w[r-i] * x**i * rsqrt(mean(x**(2i)) + eps) exactly (s**i cancels between
# x**i = s**i p_i and sqrt(mean(x**(2i)) + eps) = s**i sqrt(mean(p_i**2) + e_i)). s >= 1 keeps rows
# with max |x| <= 1 bit-identical to the unscaled formula and never divides eps by a tiny s**(2i);
# a zero row has s = 1 and gives y = b. mean(p_i**2) >= 1/H (the entry with |q| = 1), so the
# statistic keeps full relative precision.
#
# Backward (upstream gradient g, per row, H = row width; s is a constant):
#
#     D_i       = sum_j g_j * p_ij
#     dL/dx_j   = (1/s) * sum_{i=1..r} i * q_j**(i-1) * w[r-i] * inv_i * (g_j - p_ij * inv_i**2 * D_i / H)
#     dL/dw[r-i] = sum_rows inv_i * D_i,      dL/db = sum_rows sum_j g_j
#
# i.e. the unscaled backward evaluated on q with e_i in place of eps, and dx divided by s once.
# Gated PolyNorm(gate) * up: the same with g = grad_out * up for the gate, and d(up) = grad_out * PolyNorm(gate).
# This reference gets its backward from autograd through q (s is detached).


def row_scale(x: torch.Tensor) -> torch.Tensor:
    """s = max(max_j |x_j|, 1) over the last dimension, (..., 1), detached (see the comment above)."""
    return x.detach().abs().amax(dim=-1, keepdim=True).clamp_min(1.0)


def _poly_norm_math(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """sum_{i=1..r} weight[r-i] * N(x**i) + bias with N(u) = u * rsqrt(mean(u**2, -1) + eps), in x's dtype.

    Evaluated on q = x / s with eps / s**(2i) (row scaling above), so no power overflows.
    """
    r = weight.numel()
    s = row_scale(x)
    q = x / s
    out = bias.expand_as(x)
    power = q
    for i in range(1, r + 1):
        if i > 1:
            power = power * q
        inv_rms = torch.rsqrt(power.square().mean(dim=-1, keepdim=True) + eps / s.pow(2 * i))
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
