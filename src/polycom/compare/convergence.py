"""Convergence speed from validation curves: tokens to reach a target loss, speed-up, area under the curve.

A validation curve is a list of (tokens, loss) points, tokens increasing (the runs' ``tokens`` = steps x
tokens per step; step 0 is the initial evaluation).

* tokens_to_reach(curve, target): the first point where the loss is <= target, linearly interpolated
  between that point and the one before it (None when the curve never gets there).
* Per seed s, the target is the baseline's final validation loss of seed s; an arm's speed-up is
  tokens_to_reach(baseline_s) / tokens_to_reach(arm_s) (> 1: the arm gets there sooner). The paper's
  claim in these terms: PolyNorm reaches SwiGLU's end-of-run loss with markedly fewer tokens.
* mean_loss_area(curve): area under the curve divided by its token span (trapezoid rule) = the
  time-averaged validation loss; lower = lower loss throughout training, not only at the end.
"""

from __future__ import annotations

import statistics
from typing import Any

Curve = list[tuple[float, float]]


def tokens_to_reach(curve: Curve, target: float) -> float | None:
    """Tokens at which `curve` first reaches loss <= `target` (interpolated), else None."""
    previous = None
    for tokens, loss in curve:
        if loss <= target:
            if previous is None or previous[1] == loss:
                return float(tokens)
            t0, l0 = previous
            return float(t0 + (tokens - t0) * (l0 - target) / (l0 - loss))
        previous = (tokens, loss)
    return None


def mean_loss_area(curve: Curve) -> float | None:
    """Trapezoid area under the curve / token span (None with < 2 points)."""
    if len(curve) < 2:
        return None
    area = sum((t1 - t0) * (l0 + l1) / 2.0 for (t0, l0), (t1, l1) in zip(curve, curve[1:]))
    return area / (curve[-1][0] - curve[0][0])


def convergence_table(curves: dict[str, list[Curve]], baseline: str) -> dict[str, Any]:
    """Per arm: per-seed tokens to the same-seed baseline's final loss, speed-ups, mean loss area.

    curves: arm -> per seed its validation curve [(tokens, loss)]; baseline: an arm of `curves`.
    """
    base_curves = curves[baseline]
    targets = [c[-1][1] if c else None for c in base_curves]
    base_tokens = [tokens_to_reach(c, t) if t is not None else None for c, t in zip(base_curves, targets)]
    table: dict[str, Any] = {}
    for arm, arm_curves in curves.items():
        tokens = [tokens_to_reach(c, t) if t is not None else None for c, t in zip(arm_curves, targets)]
        speedups = [b / a if a and b else None for a, b in zip(tokens, base_tokens)]
        reached = [s for s in speedups if s is not None]
        areas = [mean_loss_area(c) for c in arm_curves]
        table[arm] = {
            "tokens_to_baseline_final": tokens,
            "speedup": speedups,
            "speedup_mean": statistics.fmean(reached) if reached else None,
            "reached": f"{len(reached)}/{len(arm_curves)}",
            "mean_loss_area": areas,
            "mean_loss_area_mean": statistics.fmean([a for a in areas if a is not None]) if any(areas) else None,
        }
    return {"baseline": baseline, "target": "final validation loss of the baseline, same seed", "arms": table}
