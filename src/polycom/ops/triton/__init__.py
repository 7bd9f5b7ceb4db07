"""Fused Triton kernels for PolyNorm and PolyReLU (plain and gated), forward and backward.

`polycom.ops` dispatches here when the backend is ``triton`` (see `polycom.ops.backend`). The four
functions below take already-validated arguments (same names and signatures as the reference in
`polycom.ops.reference`) and are autograd-capable through the ``polycom::*`` custom ops of
`polycom.ops.triton.ops`, so they also work under ``torch.compile(fullgraph=True)``.

Importing this package without Triton installed raises ImportError (the optional extra is
``pip install polycom[triton]``). On CPU tensors the kernels run only through the Triton
interpreter (``TRITON_INTERPRET=1`` set before import).

Memory: for the backward the ops keep x (and up for the gated forms) — tensors the surrounding
linear layers keep alive anyway — plus r fp32 values per row (PolyNorm) and nothing else.
"""

from __future__ import annotations

try:
    import triton  # noqa: F401
except ImportError as exc:  # keep the message actionable: this is an optional extra
    raise ImportError(
        f"polycom's Triton kernels need the `triton` package (pip install polycom[triton]): {exc}"
    ) from exc

import contextlib
import os

import torch

from polycom.ops.triton import interpreter_compat as _interpreter_compat
from polycom.ops.triton import ops as _ops

if os.environ.get("TRITON_INTERPRET") == "1":
    _interpreter_compat.apply()  # Triton <= 3.6 interpreter with NumPy >= 2.4 (run-time loop bounds)

__all__ = ["poly_norm", "poly_norm_gated", "poly_relu", "poly_relu_gated"]


def _autocast_off(x: torch.Tensor):
    """Autocast rule of the ops: inputs keep their dtype (no cast), the op runs with autocast disabled, and
    the output has the input's dtype (fp32 math inside, like the reference ops). Under autocast the
    inputs are the autocast dtype already (outputs of autocast linears); coefficients stay fp32."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


def poly_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """PolyNorm over the last dim: sum_{i=1..r} weight[r-i] * N(x**i) + bias, N(u) = u rsqrt(mean(u**2) + eps).

    x (..., h) fp16/bf16/fp32(/fp64); weight (r,); bias (1,). Returns x's shape and dtype (fp32 math).
    """
    with _autocast_off(x):
        return _ops.poly_norm_fwd(x, None, weight, bias, float(eps))[0]


def poly_norm_gated(
    gate: torch.Tensor, up: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """poly_norm(gate) * up, fused (product in fp32, one downcast). gate, up (..., h)."""
    with _autocast_off(gate):
        return _ops.poly_norm_fwd(gate, up, weight, bias, float(eps))[0]


def poly_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """PolyReLU, elementwise: sum_{i=1..r} weight[r-i] * relu(x)**i + bias."""
    with _autocast_off(x):
        return _ops.poly_relu_fwd(x, None, weight, bias)


def poly_relu_gated(gate: torch.Tensor, up: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """poly_relu(gate) * up, fused."""
    with _autocast_off(gate):
        return _ops.poly_relu_fwd(gate, up, weight, bias)
