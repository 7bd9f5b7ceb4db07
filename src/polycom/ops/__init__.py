"""Functional PolyCom ops: the public entry points and the backend dispatch point.

Every public op validates its arguments, then runs the implementation chosen by
`polycom.ops.backend.backend_for` (``torch`` = `polycom.ops.torch_autograd`, the closed-form forward
and backward of `polycom.ops.closed_form`, checked against the readable `polycom.ops.reference`;
``triton`` = the fused kernels in `polycom.ops.triton`, which expose functions with the same names and
signatures). DTensor inputs
(tensor parallel) take the exact all-reduced path of `polycom.ops.tensor_parallel`.

Coefficient order (official PolyCom code): ``weight[0]`` multiplies the highest power x**r and
``weight[r-1]`` multiplies x; ``bias`` (shape (1,)) is the constant term.
"""

from __future__ import annotations

import types

import torch

from polycom.ops import torch_autograd
from polycom.ops.backend import backend_for
from polycom.ops.validation import check_activation_input, check_coefficients, check_eps, check_gate_up

__all__ = ["poly_norm", "poly_relu", "poly_norm_gated", "poly_relu_gated"]

try:  # DTensor inputs (tensor parallel) take the exact all-reduced path in polycom.ops.tensor_parallel
    from torch.distributed.tensor import DTensor as _DTensor
except ImportError:  # torch built without distributed support
    _DTensor = None


def _is_dtensor(x: torch.Tensor) -> bool:
    return _DTensor is not None and isinstance(x, _DTensor)


def _triton_impl() -> types.ModuleType:
    try:
        from polycom.ops import triton as triton_impl
    except ImportError as exc:  # triton missing, or kernels unavailable in this build
        raise RuntimeError(f"the Triton backend could not be loaded: {exc}") from exc
    return triton_impl


def _impl(x: torch.Tensor) -> types.ModuleType:
    return _triton_impl() if backend_for(x) == "triton" else torch_autograd


def poly_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """PolyNorm of order r = weight.numel() over the last dimension.

    y = sum_{i=1..r} weight[r-i] * N(x**i) + bias,  N(u) = u * rsqrt(mean(u**2, dim=-1) + eps)

    x: (..., h) floating; weight: (r,); bias: (1,). Returns a tensor shaped and typed like x,
    computed in fp32 (fp64 for fp64 input) and cast once.
    """
    check_activation_input(x)
    check_coefficients(weight, bias)
    check_eps(eps)
    if _is_dtensor(x):  # normalise over the full (sharded) row, not per shard
        from polycom.ops.tensor_parallel import poly_norm_dtensor

        return poly_norm_dtensor(x, weight, bias, eps)
    return _impl(x).poly_norm(x, weight, bias, eps)


def poly_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """PolyReLU of order r = weight.numel(), elementwise.

    y = sum_{i=1..r} weight[r-i] * relu(x)**i + bias

    x: (..., h) floating; weight: (r,); bias: (1,). Returns a tensor shaped and typed like x.
    """
    check_activation_input(x)
    check_coefficients(weight, bias)
    return _impl(x).poly_relu(x, weight, bias)


def poly_norm_gated(
    gate: torch.Tensor, up: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Gated PolyNorm for GLU-style MLPs: poly_norm(gate, weight, bias, eps) * up.

    gate, up: (..., h), same shape and dtype. The product is taken in fp32 and cast once.
    """
    check_gate_up(gate, up)
    check_coefficients(weight, bias)
    check_eps(eps)
    if _is_dtensor(gate):
        from polycom.ops.tensor_parallel import poly_norm_gated_dtensor

        return poly_norm_gated_dtensor(gate, up, weight, bias, eps)
    return _impl(gate).poly_norm_gated(gate, up, weight, bias, eps)


def poly_relu_gated(gate: torch.Tensor, up: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Gated PolyReLU for GLU-style MLPs: poly_relu(gate, weight, bias) * up."""
    check_gate_up(gate, up)
    check_coefficients(weight, bias)
    return _impl(gate).poly_relu_gated(gate, up, weight, bias)
