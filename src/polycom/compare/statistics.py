"""Paired statistics of a multi-seed comparison.

Runs with the same seed share the initial weights of every shared part and the batch order, so arm A
and arm B are compared through the per-seed differences d_s = A_s - B_s (s = 0..n-1):

* mean difference and its paired t-test, t = mean(d) / (std(d, ddof=1) / sqrt(n)), two-sided p
  (`scipy.stats.ttest_rel`);
* a bootstrap 95% confidence interval of mean(d): percentile interval of the mean over `resamples`
  resamples of the n differences with replacement (numpy Generator seeded with `seed`, so reports are
  reproducible);
* every pair of arms is tested; the family of p-values is Holm-corrected (step-down): with the m
  p-values sorted ascending p_(1) <= ... <= p_(m), adjusted p_(k) = max_{j <= k} min(1, (m - j + 1) p_(j)).
  A difference is called significant when its Holm-adjusted p < `alpha` (0.05).
"""

from __future__ import annotations

import math
import warnings
from itertools import combinations
from typing import Any

import numpy as np

ALPHA = 0.05


def paired_t_p_value(diffs: list[float]) -> float | None:
    """Two-sided p of the paired t-test on the differences; None with < 2 values or zero variance."""
    if len(diffs) < 2:
        return None
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = float(stats.ttest_1samp(np.asarray(diffs, dtype=np.float64), 0.0).pvalue)
    return None if math.isnan(p) else p


def bootstrap_ci(
    diffs: list[float], *, resamples: int = 10_000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(diffs) (see the module docstring)."""
    values = np.asarray(diffs, dtype=np.float64)
    if values.size == 0:
        raise ValueError("bootstrap_ci needs at least one difference")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


def holm_adjust(p_values: list[float | None]) -> list[float | None]:
    """Holm step-down adjusted p-values, in the input order (None stays None and is not counted)."""
    indexed = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(indexed)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def paired_difference(a: list[float], b: list[float]) -> dict[str, Any]:
    """Per-seed differences a - b with their mean, sample std, paired-t p and bootstrap 95% CI."""
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    diffs = [x - y for x, y in pairs]
    if not diffs:
        return {"n": 0, "diffs": [], "mean": None, "std": None, "p_value": None, "ci95": None}
    std = float(np.std(diffs, ddof=1)) if len(diffs) >= 2 else 0.0
    return {
        "n": len(diffs),
        "diffs": diffs,
        "mean": float(np.mean(diffs)),
        "std": std,
        "p_value": paired_t_p_value(diffs),
        "ci95": list(bootstrap_ci(diffs)) if len(diffs) >= 2 else None,
    }


def all_pairs(values: dict[str, list[float]], *, alpha: float = ALPHA) -> list[dict[str, Any]]:
    """Every pair (A, B) of arms, in listing order: paired difference A - B, Holm-adjusted p, significance."""
    rows = []
    for a, b in combinations(list(values), 2):
        rows.append({"a": a, "b": b, **paired_difference(values[a], values[b])})
    for row, adjusted in zip(rows, holm_adjust([r["p_value"] for r in rows])):
        row["p_holm"] = adjusted
        row["significant"] = adjusted is not None and adjusted < alpha
    return rows


def describe_pair(row: dict[str, Any], *, alpha: float = ALPHA) -> str:
    """One plain sentence about a pair row of `all_pairs`."""
    a, b = row["a"], row["b"]
    if row["p_holm"] is None:
        return f"{a} vs {b}: not testable (needs >= 2 seeds with a non-zero spread of differences)."
    lo, hi = row["ci95"]
    better = a if row["mean"] < 0 else b
    verdict = (
        f"{better} is lower, significant after Holm correction (p_holm = {row['p_holm']:.3g} < {alpha:g})"
        if row["significant"]
        else f"no significant difference (p_holm = {row['p_holm']:.3g})"
    )
    return f"{a} - {b} = {row['mean']:+.4f} (95% CI [{lo:+.4f}, {hi:+.4f}]): {verdict}."
