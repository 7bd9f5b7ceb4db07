"""`torch.nn` modules for PolyNorm and PolyReLU (plain and gated).

Parameters follow the official PolyCom code so its checkpoints load unchanged:
``weight`` (order,) initialised to 1/order, ``weight[0]`` multiplying the highest power, and
``bias`` (1,) initialised to 0. Parameters are created in fp32; the ops compute in fp32 whatever
the input dtype (also under autocast) and return the input dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from polycom.ops import poly_norm, poly_norm_gated, poly_relu, poly_relu_gated
from polycom.ops.validation import check_eps, check_order

__all__ = [
    "PolyCoefficients",
    "PolyNorm",
    "PolyNormGated",
    "PolyReLU",
    "PolyReLUGated",
    "is_polycom_module",
    "is_polycom_parameter",
]


class PolyCoefficients(nn.Module):
    """Base of every PolyCom activation: the r + 1 coefficients ``weight`` (r,), highest power first,
    and ``bias`` (1,).

    Being a `PolyCoefficients` is what makes a module a PolyCom activation (see `is_polycom_module`):
    the models keep its init (1/r, 0), the optimiser does not decay it, the analyses report it.
    """

    def __init__(self, order: int = 3, device: torch.device | str | None = None) -> None:
        super().__init__()
        check_order(order)
        self.order = order
        self.weight = nn.Parameter(torch.empty(order, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.empty(1, dtype=torch.float32, device=device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """weight = 1/order each, bias = 0 (official PolyCom init)."""
        with torch.no_grad():
            self.weight.fill_(1.0 / self.order)
            self.bias.zero_()

    def extra_repr(self) -> str:
        return f"order={self.order}"


class PolyNorm(PolyCoefficients):
    """PolyNorm(x) = sum_{i=1..r} weight[r-i] * N(x**i) + bias over the last dim.

    N(u) = u * rsqrt(mean(u**2, -1) + eps). Input (..., h), output the same shape and dtype.
    """

    def __init__(self, order: int = 3, eps: float = 1e-6, device: torch.device | str | None = None) -> None:
        check_eps(eps)
        super().__init__(order, device)
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return poly_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"order={self.order}, eps={self.eps:g}"


class PolyReLU(PolyCoefficients):
    """PolyReLU(x) = sum_{i=1..r} weight[r-i] * relu(x)**i + bias, elementwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return poly_relu(x, self.weight, self.bias)


class PolyNormGated(PolyNorm):
    """Gated PolyNorm for GLU MLPs: forward(gate, up) = PolyNorm(gate) * up."""

    gated = True

    def forward(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return poly_norm_gated(gate, up, self.weight, self.bias, self.eps)


class PolyReLUGated(PolyReLU):
    """Gated PolyReLU for GLU MLPs: forward(gate, up) = PolyReLU(gate) * up."""

    gated = True

    def forward(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return poly_relu_gated(gate, up, self.weight, self.bias)


def is_polycom_module(module: nn.Module) -> bool:
    """True when `module` is a PolyCom activation (plain or gated, any order): a `PolyCoefficients`."""
    return isinstance(module, PolyCoefficients)


def is_polycom_parameter(model: nn.Module, name: str) -> bool:
    """True when the parameter called `name` in ``model.named_parameters()`` belongs to a PolyCom activation.

    name: a dotted parameter name, e.g. ``"layers.0.mlp.act.weight"``; its owner is the submodule
    before the last dot.
    """
    owner = name.rpartition(".")[0]
    return is_polycom_module(model.get_submodule(owner))
