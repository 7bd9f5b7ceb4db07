"""Who computes an op in `polycom bench ops`: a registry of `Provider`.

``polycom`` (our Triton kernels through the public API), ``eager`` (the official PolyCom formula in
eager PyTorch), ``ckpt`` (the same under `torch.utils.checkpoint`, as the official trainers run it),
``compile`` (`torch.compile` of the official formula), ``liger`` (Liger-Kernel's PolyNorm, when
installed). The baselines (SwiGLU, ReLU^2, GELU) run ``eager`` and ``compile`` only.
To add a provider (e.g. a kernel variant), add a `Provider` to `PROVIDERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from polycom.bench.op_cases import EPS, OpCase, OpFn


@dataclass(frozen=True)
class Provider:
    """build(case) -> fn(inputs, weight, bias), or None when the provider does not apply / is not installed.
    quick: part of the `--quick` selection."""

    name: str
    build: Callable[[OpCase], OpFn | None]
    quick: bool = False


def _polycom(case: OpCase) -> OpFn | None:
    return case.polycom


def _eager(case: OpCase) -> OpFn:
    return case.exact


def _ckpt(case: OpCase) -> OpFn | None:
    if not case.is_poly:
        return None
    from torch.utils.checkpoint import checkpoint

    return lambda ins, w, b: checkpoint(case.exact, ins, w, b, use_reentrant=False)


def _compile(case: OpCase) -> OpFn:
    torch._dynamo.reset()  # fresh cache per case: no recompile limit, no automatic dynamic shapes
    return torch.compile(case.exact, dynamic=False)


def _liger(case: OpCase) -> OpFn | None:
    if case.name != "polynorm":
        return None
    try:
        from liger_kernel.ops.poly_norm import LigerPolyNormFunction
    except ImportError:
        try:
            from liger_kernel.ops import LigerPolyNormFunction
        except ImportError:
            return None

    def run(ins, w, b):
        try:
            return LigerPolyNormFunction.apply(ins[0], w, b, EPS, False)
        except TypeError:  # older signature without in_place
            return LigerPolyNormFunction.apply(ins[0], w, b, EPS)

    return run


PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        Provider("polycom", _polycom, quick=True),
        Provider("eager", _eager, quick=True),
        Provider("ckpt", _ckpt),
        Provider("compile", _compile, quick=True),
        Provider("liger", _liger),
    )
}
