"""Log-log slope fits with confidence intervals.

Model: log10(err) = a + b * log10(P) fitted by ordinary least squares over n points. The standard
error of b is sqrt(SSR / (n - 2) / sum((log P - mean)^2)); the two-sided (1 - alpha) interval is
b +- t_{1 - alpha/2, n - 2} * se(b) (Student t). With n = 2 the slope is exact but has no interval.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["SlopeFit", "fit_loglog_slope"]


@dataclass(frozen=True)
class SlopeFit:
    """Fitted slope b and intercept a of log10(y) = a + b log10(x); CI is None when n < 3."""

    slope: float
    intercept: float
    stderr: float | None
    ci_low: float | None
    ci_high: float | None
    r2: float | None
    n_points: int
    confidence: float

    def to_dict(self) -> dict:
        return asdict(self)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return 10.0 ** (self.intercept + self.slope * np.log10(x))


def fit_loglog_slope(x, y, confidence: float = 0.95) -> SlopeFit:
    """OLS fit of log10(y) on log10(x) (see module docstring). x, y: positive, same length >= 2."""
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    if xa.shape != ya.shape or xa.ndim != 1:
        raise ValueError(f"x and y must be 1-D of the same length, got shapes {xa.shape} and {ya.shape}")
    if xa.size < 2:
        raise ValueError(f"a slope needs at least 2 points, got {xa.size}")
    if not (np.all(xa > 0) and np.all(ya > 0)):
        raise ValueError("log-log fit needs positive x and y values")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    lx, ly = np.log10(xa), np.log10(ya)
    sxx = float(np.sum((lx - lx.mean()) ** 2))
    if sxx == 0.0:
        raise ValueError("log-log fit needs at least two distinct x values")
    slope = float(np.sum((lx - lx.mean()) * (ly - ly.mean())) / sxx)
    intercept = float(ly.mean() - slope * lx.mean())
    n = xa.size
    if n < 3:
        return SlopeFit(slope, intercept, None, None, None, None, n, confidence)
    resid = ly - (intercept + slope * lx)
    ssr = float(np.sum(resid**2))
    sst = float(np.sum((ly - ly.mean()) ** 2))
    stderr = math.sqrt(ssr / (n - 2) / sxx)
    from scipy import stats as scipy_stats  # imported here: scipy is slow to import

    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 2)) * stderr
    r2 = 1.0 - ssr / sst if sst > 0 else 1.0
    return SlopeFit(slope, intercept, stderr, slope - half, slope + half, r2, n, confidence)
