"""Fully connected networks R^d -> R with any plain activation of the polycom registry.

    FCNet(x) = W_{L+1} act_L(W_L ... act_1(W_1 (2x - 1) + b_1) ... + b_L) + b_{L+1}

x (N, d) in [0,1]^d is first mapped to [-1,1]^d (a fixed affine map, no parameters) so that the
hidden units start in the non-linear region of every activation. ``depth`` = L hidden layers of
``width`` units each. Every hidden layer has its own activation module, so PolyReLU/PolyNorm carry
their own r + 1 coefficients per layer (as in the paper's transformer blocks). PolyNorm normalises
over the width of its layer: N(u) = u * rsqrt(mean_over_width(u^2) + eps), so it is a per-sample,
layer-wide operation, not an elementwise one.

Parameter count: d*K + K + (L-1)(K*K + K) + K + 1 linear parameters + L*(r+1) activation
coefficients for PolyCom activations (see `fcnet_param_count`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from polycom.modules.activations import activation_spec, get_activation

__all__ = ["FCNetConfig", "FCNet", "fcnet_param_count", "FC_ACTIVATIONS", "check_fc_activation"]

# The activations compared in the approximation study (plain ones; gated GLUs need two inputs).
FC_ACTIVATIONS = ("relu", "relu2", "gelu", "polyrelu", "polynorm")


def check_fc_activation(name: str) -> str:
    """Normalised activation name; unknown or gated names raise ValueError naming the problem."""
    spec = activation_spec(name)  # ValueError listing known activations
    if spec.gated:
        raise ValueError(
            f"activation {name!r} is gated (takes gate and up inputs); fully connected nets need a plain "
            f"activation such as {', '.join(FC_ACTIVATIONS)}"
        )
    return spec.name


@dataclass
class FCNetConfig:
    """Shape of a fully connected net: input dim, hidden width K, hidden layers L, activation."""

    in_dim: int
    width: int
    depth: int
    activation: str = "relu"
    order: int = 3  # PolyCom order r (ignored by other activations)

    def __post_init__(self) -> None:
        if self.in_dim < 1:
            raise ValueError(f"in_dim must be >= 1, got {self.in_dim}")
        if self.width < 1:
            raise ValueError(f"width must be a positive integer, got {self.width}")
        if self.depth < 1:
            raise ValueError(f"depth (hidden layers) must be a positive integer, got {self.depth}")
        self.activation = check_fc_activation(self.activation)


def _activation_kwargs(name: str, order: int) -> dict:
    return {"order": order} if activation_spec(name).is_polycom else {}


class FCNet(nn.Module):
    """The network of the module docstring. Input (N, in_dim), output (N,)."""

    def __init__(self, config: FCNetConfig, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.config = config
        dims = [config.in_dim] + [config.width] * config.depth
        self.linears = nn.ModuleList(nn.Linear(a, b, dtype=dtype) for a, b in zip(dims[:-1], dims[1:]))
        self.acts = nn.ModuleList(
            get_activation(config.activation, **_activation_kwargs(config.activation, config.order))
            for _ in range(config.depth)
        )
        self.head = nn.Linear(config.width, 1, dtype=dtype)
        if dtype == torch.float64:
            self.acts.to(torch.float64)  # PolyCom coefficients are created fp32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = 2.0 * x - 1.0
        for linear, act in zip(self.linears, self.acts):
            h = act(linear(h))
        return self.head(h).squeeze(-1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def fcnet_param_count(config: FCNetConfig) -> int:
    """Trainable parameters of `FCNet(config)` (linear weights and biases + activation coefficients)."""
    d, k, depth = config.in_dim, config.width, config.depth
    linear = d * k + k + (depth - 1) * (k * k + k) + k + 1
    coeffs = depth * (config.order + 1) if config.activation in ("polyrelu", "polynorm") else 0
    return linear + coeffs
