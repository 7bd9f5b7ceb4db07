"""Target functions of known smoothness on the unit cube [0,1]^d (d = 1, 2, 3).

Each target is a `Target`: a name, its input dimension ``dim``, its smoothness ``smoothness``
(the largest n with f in W^{n,inf}([0,1]^d), or a Hoelder exponent for the limited-smoothness
family; ``math.inf`` for analytic functions) and the function itself, mapping x (N, d) -> f(x) (N,).

Theorem 3 of the paper (PolyReLU nets of size O(eps^{-d/n}) reach sup error eps on the unit ball
of W^{n,inf}) predicts an error that decays like P^{-n/d} with the parameter count P; for the
smooth (analytic) targets the predicted decay is faster than any power. `Target.theory_slope`
gives -n/d (or None when n is infinite).

Families:
  sin1d       sin(2 pi x) + x^3 / 2                                       analytic
  sinpoly2d   sin(pi x1) cos(2 pi x2) + x1 x2^2                           analytic
  sinpoly3d   sin(pi x1) sin(pi x2) + x3 cos(pi x1 x3) + x1 x2 x3 / 2     analytic
  abspow{d}d  |x - c|^(k + 1/2) (Euclidean norm, c = 0.3 * ones(d) + 0.1 * [0, 1, 2][:d]; k = 1)
              smoothness k + 1/2 (derivatives up to order k are Lipschitz, the k-th is only
              Hoelder-1/2 at c), so the rate is limited to P^{-(k+1/2)/d}.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["Target", "get_target", "target_names", "abs_power_target", "sample_unit_cube", "grid_unit_cube"]


@dataclass(frozen=True)
class Target:
    """A target function f: [0,1]^dim -> R with a known smoothness (see module docstring)."""

    name: str
    dim: int
    smoothness: float
    description: str
    fn: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, dim) -> f(x) (N,), computed in x's dtype."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"target {self.name!r} takes inputs of shape (N, {self.dim}), got {tuple(x.shape)}")
        return self.fn(x)

    @property
    def theory_slope(self) -> float | None:
        """Predicted log-log slope of sup error vs parameter count, -smoothness / dim (None if analytic)."""
        if math.isinf(self.smoothness):
            return None
        return -self.smoothness / self.dim


def _sin1d(x: torch.Tensor) -> torch.Tensor:
    t = x[:, 0]
    return torch.sin(2 * math.pi * t) + 0.5 * t**3


def _sinpoly2d(x: torch.Tensor) -> torch.Tensor:
    a, b = x[:, 0], x[:, 1]
    return torch.sin(math.pi * a) * torch.cos(2 * math.pi * b) + a * b**2


def _sinpoly3d(x: torch.Tensor) -> torch.Tensor:
    a, b, c = x[:, 0], x[:, 1], x[:, 2]
    return torch.sin(math.pi * a) * torch.sin(math.pi * b) + c * torch.cos(math.pi * a * c) + 0.5 * a * b * c


def abs_power_center(dim: int) -> list[float]:
    """The kink location c used by the abspow targets (off the grid symmetry points)."""
    return [0.3 + 0.1 * i for i in range(dim)]


def abs_power_target(dim: int, k: int = 1) -> Target:
    """|x - c|^(k + 1/2) on [0,1]^dim (Euclidean norm): smoothness exactly k + 1/2."""
    if dim not in (1, 2, 3):
        raise ValueError(f"dim must be 1, 2 or 3, got {dim}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    center = abs_power_center(dim)
    power = k + 0.5

    def fn(x: torch.Tensor) -> torch.Tensor:
        c = torch.tensor(center, dtype=x.dtype, device=x.device)
        return torch.linalg.vector_norm(x - c, dim=1) ** power

    name = f"abspow{dim}d" if k == 1 else f"abspow{dim}d_k{k}"
    desc = f"|x - c|^{power:g}, c = ({', '.join(f'{v:g}' for v in center)})"
    return Target(name, dim, power, desc, fn)


_TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("sin1d", 1, math.inf, "sin(2 pi x) + x^3/2", _sin1d),
        Target("sinpoly2d", 2, math.inf, "sin(pi x1) cos(2 pi x2) + x1 x2^2", _sinpoly2d),
        Target("sinpoly3d", 3, math.inf, "sin(pi x1) sin(pi x2) + x3 cos(pi x1 x3) + x1 x2 x3/2", _sinpoly3d),
        abs_power_target(1),
        abs_power_target(2),
        abs_power_target(3),
    )
}


def target_names() -> list[str]:
    return list(_TARGETS)


def get_target(name: str) -> Target:
    """The target called `name`; unknown names raise ValueError listing the known ones.

    Besides the registered names, ``abspow{d}d_k{k}`` builds |x - c|^(k + 1/2) for any k >= 0.
    """
    if not isinstance(name, str):
        raise TypeError(f"target name must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    if key in _TARGETS:
        return _TARGETS[key]
    if key.startswith("abspow") and "_k" in key:
        head, _, k_text = key.partition("_k")
        if head in ("abspow1d", "abspow2d", "abspow3d") and k_text.isdigit():
            return abs_power_target(int(head[6]), int(k_text))
    raise ValueError(
        f"unknown target function {name!r}; known targets: {', '.join(_TARGETS)} (and abspow{{1,2,3}}d_k<K>)"
    )


def sample_unit_cube(n: int, dim: int, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """n i.i.d. uniform points in [0,1]^dim, shape (n, dim)."""
    return torch.rand(n, dim, generator=generator, dtype=dtype)


def grid_unit_cube(points_per_axis: int, dim: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The tensor grid with `points_per_axis` equispaced points per axis (ends included), (p^dim, dim)."""
    axis = torch.linspace(0.0, 1.0, points_per_axis, dtype=dtype)
    mesh = torch.meshgrid(*([axis] * dim), indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=1)
