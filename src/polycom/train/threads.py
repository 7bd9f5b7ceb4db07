"""Adaptive CPU thread count (``train.threads = -1``): survive other processes on a small machine.

With torch's default intra-op threads (= cores) and another busy process on the same cores, a training
step can become 10-25x slower (threads wait at barriers for a peer that is descheduled), while one
thread keeps most of its speed. The governor times every step and, now and then, runs ONE step with
the other setting (torch's default ``many`` or 1): if that step is clearly faster (< 0.8 x the median
of the last steps) it switches, otherwise it switches back and doubles the wait before the next probe
(``base_interval`` steps, doubling up to ``max_interval``). A lost probe thus costs one slow step, and
probes become rare while the machine stays the same.

Numerics: a different thread count can change the rounding of parallel reductions, so runs with
``threads = -1`` are not bit-reproducible; fixed settings (0 = torch default, N > 0) are.
"""

from __future__ import annotations

import statistics

import torch


class ThreadGovernor:
    def __init__(self, enabled: bool, *, first_probe: int = 2, base_interval: int = 20, max_interval: int = 160):
        self.many = torch.get_num_threads()
        self.enabled = enabled and self.many > 1
        self.current = self.many
        self.base_interval = base_interval
        self.max_interval = max_interval
        self.interval = base_interval
        self.next_probe = first_probe
        self.steps = 0
        self.recent: list[float] = []
        self.probing_from: int | None = None

    def step_done(self, seconds: float) -> None:
        """Record one step's time and choose the thread count of the next step."""
        if not self.enabled:
            return
        self.steps += 1
        if self.probing_from is not None:
            reference = statistics.median(self.recent)
            if seconds < 0.8 * reference:  # the other setting is clearly faster: keep it
                self.recent = [seconds]
                self.interval = self.base_interval
            else:
                self._set(self.probing_from)
                self.interval = min(2 * self.interval, self.max_interval)
            self.probing_from = None
            self.next_probe = self.steps + self.interval
            return
        self.recent = (self.recent + [seconds])[-5:]
        if self.steps >= self.next_probe:
            self.probing_from = self.current
            self._set(1 if self.current == self.many else self.many)

    def _set(self, threads: int) -> None:
        if threads != self.current:
            torch.set_num_threads(threads)
            self.current = threads

    def restore(self) -> None:
        self._set(self.many)
