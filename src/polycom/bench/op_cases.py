"""The ops `polycom bench ops` measures: a registry of `OpCase` (formula, our op, fp32-math reference).

PolyNorm and PolyReLU follow the official PolyCom formula (BryceZhuo/PolyCom, paper arXiv 2411.03884):
``y = sum_{i=1..r} weight[r-i] * f(x^i) + bias`` with f = RMS normalisation for PolyNorm
(``u * rsqrt(mean(u^2, -1) + eps)``) and ``x^i`` replaced by ``relu(x)^i`` for PolyReLU; ``weight[0]``
multiplies the highest power. Gated variants multiply by ``up``; SwiGLU / ReLU^2 / GELU are the
baselines for scale. Inputs are (tokens, hidden) tensors; ``weight`` (r,), ``bias`` (1,).
To add an op, add an `OpCase` to `OP_CASES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

EPS = 1e-6

# fn(inputs, weight, bias) -> output, inputs a list of (tokens, hidden) tensors
OpFn = Callable[[list[torch.Tensor], torch.Tensor, torch.Tensor], torch.Tensor]


def _rms_normalise(u: torch.Tensor, eps: float) -> torch.Tensor:
    return u * torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + eps)


def official_polynorm(x, w, b, eps=EPS):
    """The official PolyCom formula (math in the input dtype, fp32 coefficients), any order."""
    r = w.numel()
    out = b
    for i in range(1, r + 1):
        out = out + w[r - i] * _rms_normalise(x**i, eps)
    return out


def official_polyrelu(x, w, b):
    r = w.numel()
    t = F.relu(x)
    out = b
    for i in range(1, r + 1):
        out = out + w[r - i] * t**i
    return out


@dataclass(frozen=True)
class OpCase:
    """One benchmarked op.

    exact: the formula evaluated in the dtype of its inputs (the correctness check passes fp64 tensors).
    polycom: our public op (None for the baselines). reference32: polycom's torch reference (fp32 math,
    one final cast), the accuracy yardstick of the 2x rule. n_inputs: number of (tokens, hidden) inputs.
    """

    name: str
    exact: OpFn
    n_inputs: int = 1
    polycom: OpFn | None = None
    reference32: OpFn | None = None

    @property
    def is_poly(self) -> bool:
        return self.polycom is not None

    @property
    def has_coefficients(self) -> bool:
        return self.is_poly

    def reference(self, inputs, w, b) -> torch.Tensor:
        if self.reference32 is not None:
            return self.reference32(inputs, w, b)
        return self.exact([t.float() for t in inputs], w, b).to(inputs[0].dtype)


def _poly_cases() -> list[OpCase]:
    from polycom import ops
    from polycom.ops import reference as ref

    return [
        OpCase(
            "polynorm",
            exact=lambda ins, w, b: official_polynorm(ins[0], w, b),
            polycom=lambda ins, w, b: ops.poly_norm(ins[0], w, b, EPS),
            reference32=lambda ins, w, b: ref.poly_norm_reference(ins[0], w, b, EPS),
        ),
        OpCase(
            "polyrelu",
            exact=lambda ins, w, b: official_polyrelu(ins[0], w, b),
            polycom=lambda ins, w, b: ops.poly_relu(ins[0], w, b),
            reference32=lambda ins, w, b: ref.poly_relu_reference(ins[0], w, b),
        ),
        OpCase(
            "polynorm_gated",
            exact=lambda ins, w, b: official_polynorm(ins[0], w, b) * ins[1],
            n_inputs=2,
            polycom=lambda ins, w, b: ops.poly_norm_gated(ins[0], ins[1], w, b, EPS),
            reference32=lambda ins, w, b: ref.poly_norm_gated_reference(ins[0], ins[1], w, b, EPS),
        ),
        OpCase(
            "polyrelu_gated",
            exact=lambda ins, w, b: official_polyrelu(ins[0], w, b) * ins[1],
            n_inputs=2,
            polycom=lambda ins, w, b: ops.poly_relu_gated(ins[0], ins[1], w, b),
            reference32=lambda ins, w, b: ref.poly_relu_gated_reference(ins[0], ins[1], w, b),
        ),
    ]


BASELINE_CASES = [
    OpCase("swiglu", exact=lambda ins, w, b: F.silu(ins[0]) * ins[1], n_inputs=2),
    OpCase("relu2", exact=lambda ins, w, b: F.relu(ins[0]).square()),
    OpCase("gelu", exact=lambda ins, w, b: F.gelu(ins[0])),
]

OP_CASES: dict[str, OpCase] = {case.name: case for case in [*_poly_cases(), *BASELINE_CASES]}
POLY_OPS = tuple(name for name, case in OP_CASES.items() if case.is_poly)
ALL_OPS = tuple(OP_CASES)
