"""The general PolyCom activation of the paper (Zhuo et al., ICLR 2025, Section 3) and its named ablation variants.

With order r, coefficients ``weight`` (r,) (``weight[0]`` multiplies the highest power, as in the
official code) and ``bias`` (1,), and a base function rho:

    Type I   (composition=1):  y = sum_{i=1..r} weight[r-i] * T(rho(x)**i) + bias
    Type II  (composition=2):  y = sum_{i=1..r} weight[r-i] * T(rho(x**i)) + bias

T is the identity, or with ``normalize=True`` the RMS normalisation N(u) = u * rsqrt(mean(u**2, -1) + eps)
over the last dimension. Bases rho: relu, prelu (one learnable slope, init 0.25 as `torch.nn.PReLU`),
silu, sigmoid, rms_norm (N above) and identity.

Special cases: PolyReLU = Type I, rho = relu; PolyNorm = Type II, rho = rms_norm (or identity with
normalize). The named variants of the paper's composition ablation:

* PolyPReLU    = Type I, rho = prelu;
* PolyReLUNorm = Type I, rho = relu, normalize: sum_i weight[r-i] * N(relu(x)**i) + bias
  (the form this project chose; see docs/design-decisions.md).

This is the reference path (plain torch ops, autograd, compile friendly); `PolyReLU` and `PolyNorm` stay
the fused fast special cases. Input (..., h) -> same shape and dtype; computed in fp32 (fp64 for fp64
input) and cast once.
"""

from __future__ import annotations

import torch
from torch import nn

from polycom.modules.polycom import PolyCoefficients
from polycom.ops.dtypes import compute_dtype
from polycom.ops.validation import check_activation_input, check_eps

BASES = ("relu", "prelu", "silu", "sigmoid", "rms_norm", "identity")
PRELU_SLOPE_INIT = 0.25  # the base prelu's learnable slope at init, as torch.nn.PReLU
COMPOSITIONS = (1, 2)

__all__ = ["BASES", "COMPOSITIONS", "PRELU_SLOPE_INIT", "PolyCom", "PolyPReLU", "PolyReLUNorm"]


def _rms_normalize(u: torch.Tensor, eps: float) -> torch.Tensor:
    return u * torch.rsqrt(u.square().mean(dim=-1, keepdim=True) + eps)


class PolyCom(PolyCoefficients):
    """General PolyCom (see the module docstring). Options: order, base, composition (1 or 2), normalize, eps."""

    def __init__(
        self,
        order: int = 3,
        base: str = "relu",
        composition: int = 1,
        normalize: bool = False,
        eps: float = 1e-6,
        device: torch.device | str | None = None,
    ) -> None:
        if base not in BASES:
            raise ValueError(f"unknown PolyCom base {base!r}; choose one of: {', '.join(BASES)}")
        if composition not in COMPOSITIONS or isinstance(composition, bool):
            raise ValueError(
                f"composition must be 1 (Type I: rho(x)**i) or 2 (Type II: rho(x**i)), got {composition!r}"
            )
        check_eps(eps)
        self.base = base
        self.composition = composition
        self.normalize = bool(normalize)
        self.eps = float(eps)
        super().__init__(order, device)
        if base == "prelu":  # PReLU's slope belongs to the activation: same init, no weight decay
            self.prelu_weight = nn.Parameter(torch.full((1,), PRELU_SLOPE_INIT, dtype=torch.float32, device=device))

    def reset_parameters(self) -> None:
        """weight = 1/order, bias = 0 (official PolyCom init); the PReLU slope (if any) 0.25."""
        super().reset_parameters()
        if getattr(self, "prelu_weight", None) is not None:
            with torch.no_grad():
                self.prelu_weight.fill_(PRELU_SLOPE_INIT)

    def _rho(self, u: torch.Tensor) -> torch.Tensor:
        if self.base == "relu":
            return torch.relu(u)
        if self.base == "prelu":
            return torch.where(u >= 0, u, self.prelu_weight.to(u.dtype) * u)
        if self.base == "silu":
            return nn.functional.silu(u)
        if self.base == "sigmoid":
            return torch.sigmoid(u)
        if self.base == "rms_norm":
            return _rms_normalize(u, self.eps)
        return u

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_activation_input(x)
        cd = compute_dtype(x.dtype)
        xc, weight = x.to(cd), self.weight.to(cd)
        r = self.order
        out = self.bias.to(cd).expand_as(xc)
        inner = self._rho(xc) if self.composition == 1 else xc
        power = inner
        for i in range(1, r + 1):
            if i > 1:
                power = power * inner
            term = power if self.composition == 1 else self._rho(power)
            if self.normalize:
                term = _rms_normalize(term, self.eps)
            out = out + weight[r - i] * term
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"order={self.order}, base={self.base}, composition={self.composition}, "
            f"normalize={self.normalize}, eps={self.eps:g}"
        )


class PolyPReLU(PolyCom):
    """PolyPReLU(x) = sum_{i=1..r} weight[r-i] * prelu(x)**i + bias (Type I, rho = PReLU with a learnable slope)."""

    def __init__(self, order: int = 3, device: torch.device | str | None = None) -> None:
        super().__init__(order, base="prelu", composition=1, device=device)


class PolyReLUNorm(PolyCom):
    """PolyReLUNorm(x) = sum_{i=1..r} weight[r-i] * N(relu(x)**i) + bias, N the RMS normalisation over the last dim."""

    def __init__(self, order: int = 3, eps: float = 1e-6, device: torch.device | str | None = None) -> None:
        super().__init__(order, base="relu", composition=1, normalize=True, eps=eps, device=device)
