"""Timing of one benchmark case: repetitions after a warmup, reported as median / p20 / p80.

On CUDA each repetition is timed with CUDA events after a 256 MiB write that flushes the L2 cache; on
CPU with `time.perf_counter` (harness smoke tests only: no speed meaning).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch


def quantiles(times_ms: Sequence[float]) -> dict[str, float]:
    """median, p20, p80 of a list of times (linear interpolation, like numpy's default)."""
    if not times_ms:
        raise ValueError("no timings")
    ts = sorted(times_ms)

    def q(p):
        pos = p * (len(ts) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(ts) - 1)
        return ts[lo] + (ts[hi] - ts[lo]) * (pos - lo)

    return {"median_ms": q(0.5), "p20_ms": q(0.2), "p80_ms": q(0.8)}


class Timer:
    """Times fn() per repetition; `before()` runs untimed before each one (e.g. clearing gradients)."""

    def __init__(self, device: str, warmup_ms: float, rep_ms: float) -> None:
        self.device = device
        self.warmup_ms = warmup_ms
        self.rep_ms = rep_ms
        self._flush = torch.empty(256 * 2**20, dtype=torch.int8, device=device) if device == "cuda" else None

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def _estimate_ms(self, fn: Callable[[], object], before: Callable[[], None]) -> float:
        before()
        fn()  # compile / autotune outside the timing
        self._sync()
        t0 = time.perf_counter()
        for _ in range(3):
            before()
            fn()
        self._sync()
        return max((time.perf_counter() - t0) * 1e3 / 3, 1e-3)

    def __call__(self, fn: Callable[[], object], before: Callable[[], None] = lambda: None) -> dict[str, float]:
        estimate_ms = self._estimate_ms(fn, before)
        for _ in range(max(1, int(self.warmup_ms / estimate_ms))):
            before()
            fn()
        min_reps = 10 if self.device == "cuda" else 2  # cpu: harness smoke test only
        reps = int(min(max(self.rep_ms / estimate_ms, min_reps), 1000))
        return quantiles(
            self._timed_cuda(fn, before, reps) if self.device == "cuda" else self._timed_cpu(fn, before, reps)
        )

    def _timed_cuda(self, fn, before, reps: int) -> list[float]:
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for start, end in events:
            before()
            self._flush.zero_()
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return [s.elapsed_time(e) for s, e in events]

    @staticmethod
    def _timed_cpu(fn, before, reps: int) -> list[float]:
        times = []
        for _ in range(reps):
            before()
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
        return times


def copy_bandwidth_gbps(timer: Timer, nbytes: int, device: str) -> float:
    """Device-to-device copy bandwidth (read + write bytes / median time) of `nbytes` buffers, in GB/s."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    stats = timer(lambda: dst.copy_(src))
    return 2 * nbytes / (stats["median_ms"] * 1e-3) / 1e9
