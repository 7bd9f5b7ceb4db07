"""Correctness check of a provider before it is timed: output and every gradient against fp64.

Rule for our kernels (``polycom``): error vs the fp64 formula <= 2 x the error of polycom's fp32-math
torch reference + 1 ulp of the scale (16 ulps for fp32). Other providers (baselines): a sanity bound of
5% of the scale (the official formula computes in the storage dtype; Liger's bf16 output is known to
differ by ~1e-1). The scale of a tensor is its largest fp64 magnitude; for the coefficient gradients
(sums over all rows) the fp64 sum of magnitudes, so cancellation does not shrink the tolerance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from polycom.bench.op_cases import OpCase, OpFn


@dataclass
class Check:
    ok: bool
    detail: str
    max_err: float  # worst error relative to the tensor's scale, over y and all gradients


def _grads_of(fn: OpFn, inputs, w, b, dy, has_coeffs: bool) -> dict[str, torch.Tensor]:
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    wl = w.detach().clone().requires_grad_(has_coeffs)
    bl = b.detach().clone().requires_grad_(has_coeffs)
    y = fn(leaves, wl, bl)
    y.backward(dy)
    out = [("y", y.detach())] + [(f"d{i}", t.grad) for i, t in enumerate(leaves)]
    if has_coeffs:
        out += [("dweight", wl.grad), ("dbias", bl.grad)]
    return dict(out)


def _tolerance(provider: str, dtype: torch.dtype, err_ref: float, scale: float) -> float:
    if provider != "polycom":
        return 0.05 * scale
    ulps = 1.0 if dtype in (torch.bfloat16, torch.float16) else 16.0
    return 2 * err_ref + ulps * torch.finfo(dtype).eps * scale


def check_provider(case: OpCase, provider: str, fn: OpFn, inputs, w, b, dy) -> Check:
    """Run `fn` and the references on the same inputs; compare output and gradients (see module doc)."""
    has_coeffs = case.has_coefficients
    try:
        ours = _grads_of(fn, inputs, w, b, dy, has_coeffs)
    except Exception as exc:  # a provider that crashes fails its check
        return Check(False, f"raised {type(exc).__name__}: {str(exc)[:200]}", math.inf)
    ref = _grads_of(case.reference, inputs, w, b, dy, has_coeffs)

    def fp64(transform):
        args = [transform(t.double()) for t in inputs], transform(w.double()), transform(b.double())
        return _grads_of(case.exact, *args, transform(dy.double()), has_coeffs)

    exact, magnitude = fp64(lambda t: t), fp64(torch.abs)
    worst, problems = 0.0, []
    for name, e in exact.items():
        o, t = ours[name], ref[name]
        finite = torch.isfinite(e)
        if not torch.isfinite(o[finite]).all():
            problems.append(f"{name} non-finite")
            continue
        scale_src = magnitude[name] if name in ("dweight", "dbias") else e
        scale = max(scale_src.abs().max().item(), 1e-30)
        err = (o.double() - e)[finite].abs().max().item()
        err_ref = (t.double() - e)[finite].abs().max().item()
        worst = max(worst, err / scale)
        tol = _tolerance(provider, o.dtype, err_ref, scale)
        if err > tol:
            problems.append(f"{name} err {err:.3g} > tol {tol:.3g} (torch fp32-math err {err_ref:.3g})")
    return Check(not problems, "; ".join(problems) or "ok", worst)
