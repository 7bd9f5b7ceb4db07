"""Argument checks shared by every PolyCom op, whatever the backend.

Each check raises `TypeError` (wrong kind of tensor) or `ValueError` (wrong shape/value) with a
message naming the argument, so that bad input fails the same way on CPU and GPU.
"""

from __future__ import annotations

import torch


def check_activation_input(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (float16/bfloat16/float32/float64), got {x.dtype}")
    if x.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension (the feature dimension), got a scalar")
    if x.shape[-1] == 0:
        raise ValueError(f"{name} has an empty last dimension (shape {tuple(x.shape)}); PolyCom needs >= 1 feature")


def check_coefficients(weight: torch.Tensor, bias: torch.Tensor) -> int:
    """Validate `weight` (order,) and `bias` (1,); return the order r."""
    if not isinstance(weight, torch.Tensor) or not isinstance(bias, torch.Tensor):
        raise TypeError("weight and bias must be torch.Tensors")
    if not weight.is_floating_point():
        raise TypeError(f"weight must be floating point, got {weight.dtype}")
    if not bias.is_floating_point():
        raise TypeError(f"bias must be floating point, got {bias.dtype}")
    if weight.dim() != 1:
        raise ValueError(
            f"weight must be 1-D with one coefficient per power (shape (order,)), got shape {tuple(weight.shape)}"
        )
    if weight.numel() < 1:
        raise ValueError("weight is empty: the order r = weight.numel() must be >= 1")
    if tuple(bias.shape) != (1,):
        raise ValueError(f"bias must have shape (1,), got shape {tuple(bias.shape)}")
    return weight.numel()


def check_eps(eps: float) -> None:
    if not isinstance(eps, (int, float)) or isinstance(eps, bool):
        raise TypeError(f"eps must be a Python float, got {type(eps).__name__}")
    if not eps > 0.0:  # also rejects NaN; eps = 0 would make an all-zero row 0/0 = NaN (docs/design-decisions.md)
        raise ValueError(f"eps must be > 0 (e.g. the default 1e-6), got {eps}")


def check_order(order: int) -> None:
    if not isinstance(order, int) or isinstance(order, bool):
        raise TypeError(f"order must be an int, got {type(order).__name__}")
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")


def check_gate_up(gate: torch.Tensor, up: torch.Tensor) -> None:
    check_activation_input(gate, "gate")
    check_activation_input(up, "up")
    if gate.shape != up.shape:
        raise ValueError(f"gate and up must have the same shape, got {tuple(gate.shape)} and {tuple(up.shape)}")
    if gate.dtype != up.dtype:
        raise TypeError(f"gate and up must have the same dtype, got {gate.dtype} and {up.dtype}")
    if gate.device != up.device:
        raise ValueError(f"gate and up must be on the same device, got {gate.device} and {up.device}")
