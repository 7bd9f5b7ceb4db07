"""The activation registry: one name -> one activation module factory.

Plain activations act on one tensor, ``forward(x)``; gated ones (``*glu``) combine the gate and up
projections, ``forward(gate, up)``, and carry ``gated = True``. `polycom.MLP`, the models, the CLI
and the Hugging Face integration all build activations through `get_activation`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from polycom.errors import did_you_mean
from polycom.modules.general_polycom import PolyCom, PolyPReLU, PolyReLUNorm
from polycom.modules.polycom import PolyCoefficients, PolyNorm, PolyNormGated, PolyReLU, PolyReLUGated


class ReLU2(nn.Module):
    """Squared ReLU: relu(x)**2 (So et al., Primer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x).square()


class SwiGLU(nn.Module):
    """silu(gate) * up (Shazeer, GLU variants)."""

    gated = True

    def forward(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return F.silu(gate) * up


class GeGLU(nn.Module):
    """gelu(gate) * up with the exact (erf) GELU."""

    gated = True

    def forward(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return F.gelu(gate) * up


@dataclass(frozen=True)
class ActivationSpec:
    """A registered activation: its factory, whether it is gated, and a one-line description.

    ``is_polycom`` (derived from the factory) is the one answer to "is this a PolyCom activation?".
    """

    name: str
    factory: Callable[..., nn.Module]
    gated: bool
    description: str

    @property
    def is_polycom(self) -> bool:
        """True for the PolyCom activations (their modules are `PolyCoefficients`; they take ``order``)."""
        return isinstance(self.factory, type) and issubclass(self.factory, PolyCoefficients)

    def options(self) -> list[str]:
        """The constructor options this activation accepts (``device`` excluded)."""
        return [p for p in inspect.signature(self.factory).parameters if p not in ("self", "device")]

    def check_options(self, kwargs: dict) -> None:
        """TypeError naming the options `kwargs` holds that this activation does not take."""
        unknown = sorted(k for k in kwargs if k not in self.options())
        if unknown:
            raise TypeError(
                f"activation {self.name!r} does not take {', '.join(unknown)} "
                f"(accepted options: {', '.join(self.options()) or 'none'})"
            )

    def build(self, **kwargs) -> nn.Module:
        self.check_options(kwargs)
        return self.factory(**kwargs)


_REGISTRY: dict[str, ActivationSpec] = {}


def register_activation(name: str, factory: Callable[..., nn.Module], *, gated: bool, description: str) -> None:
    """Add an activation to the registry (name must be new, lower case)."""
    key = name.lower()
    if key in _REGISTRY:
        raise ValueError(f"activation {key!r} is already registered")
    _REGISTRY[key] = ActivationSpec(key, factory, gated, description)


def activation_names() -> list[str]:
    return list(_REGISTRY)


def activation_spec(name: str) -> ActivationSpec:
    """The registry entry for `name`; unknown names raise ValueError listing the known ones."""
    if not isinstance(name, str):
        raise TypeError(f"activation name must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    if key not in _REGISTRY:
        hint = did_you_mean(key, _REGISTRY)
        raise ValueError(f"unknown activation {name!r}{hint}; known activations: {', '.join(_REGISTRY)}")
    return _REGISTRY[key]


def get_activation(name: str, **kwargs) -> nn.Module:
    """Build the activation called `name` (e.g. ``get_activation("polynorm", order=3)``)."""
    return activation_spec(name).build(**kwargs)


def is_gated(activation: str | nn.Module) -> bool:
    """True for GLU-style activations that take (gate, up)."""
    if isinstance(activation, nn.Module):
        return bool(getattr(activation, "gated", False))
    return activation_spec(activation).gated


register_activation("relu", nn.ReLU, gated=False, description="max(x, 0)")
register_activation("gelu", nn.GELU, gated=False, description="exact (erf) GELU")
register_activation("silu", nn.SiLU, gated=False, description="x * sigmoid(x)")
register_activation("relu2", ReLU2, gated=False, description="squared ReLU, relu(x)**2")
register_activation("polyrelu", PolyReLU, gated=False, description="sum_i w[r-i] relu(x)**i + b")
register_activation("polynorm", PolyNorm, gated=False, description="sum_i w[r-i] N(x**i) + b")
register_activation(
    "polycom", PolyCom, gated=False, description="general PolyCom: sum_i w[r-i] rho(x)**i (type I) or rho(x**i) (II)"
)
register_activation("polyprelu", PolyPReLU, gated=False, description="sum_i w[r-i] prelu(x)**i + b")
register_activation("polyrelunorm", PolyReLUNorm, gated=False, description="sum_i w[r-i] N(relu(x)**i) + b")
register_activation("swiglu", SwiGLU, gated=True, description="silu(gate) * up")
register_activation("geglu", GeGLU, gated=True, description="gelu(gate) * up")
register_activation("polyrelu_glu", PolyReLUGated, gated=True, description="PolyReLU(gate) * up")
register_activation("polynorm_glu", PolyNormGated, gated=True, description="PolyNorm(gate) * up")

# What `polycom compare` and `polycom bench model` measure by default: the dense activations of the
# paper's 1B comparison (SwiGLU, GELU, ReLU, squared ReLU) and its two PolyCom activations.
DEFAULT_ACTIVATIONS = ("swiglu", "gelu", "relu", "relu2", "polyrelu", "polynorm")
