"""The one CPU thread policy of every command: adaptive by default, overridable with POLYCOM_THREADS.

Settings: ``-1`` adaptive (the default of every command), ``0`` torch's default (one thread per core),
``N > 0`` exactly N threads. ``POLYCOM_THREADS=N`` in the environment overrides the setting of any
command (`thread_setting`); ``polycom train`` / ``compare`` also take ``--train.threads=N``.
Training applies it per optimizer step (`ThreadGovernor` in the trainer); generation, evaluation,
analysis and compare's sample phase per top-level forward pass (`cpu_threads`).

Adaptive CPU thread count: survive other processes on a small machine.

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

import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from polycom.errors import UserError

THREADS_ENV = "POLYCOM_THREADS"
ADAPTIVE = -1
THREADS_HELP = (
    "CPU threads: adaptive by default (torch's default or 1, whichever runs faster\n"
    "while other processes share the cores). Override: environment variable\n"
    f"{THREADS_ENV}=N (N threads, 0 = torch default, -1 = adaptive)"
)


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


def thread_setting(configured: int | None = None) -> int:
    """The thread setting in force: ``POLYCOM_THREADS`` when set, else `configured`, else adaptive (-1)."""
    text = os.environ.get(THREADS_ENV, "").strip()
    if text:
        try:
            value = int(text)
        except ValueError:
            value = ADAPTIVE - 1
        if value < ADAPTIVE:
            raise UserError(f"{THREADS_ENV} must be -1 (adaptive), 0 (torch default) or N > 0, got {text!r}")
        return value
    return ADAPTIVE if configured is None else configured


@contextmanager
def cpu_threads(setting: int | None = None, device: torch.device | str = "cpu") -> Iterator[None]:
    """Apply the thread policy to the forward passes run inside (generation, evaluation, analysis).

    setting: as in the module docstring; None -> `thread_setting()`. N > 0 sets N threads; adaptive times
    every top-level ``nn.Module`` forward (torch's global forward hooks; nested modules are not counted)
    and lets a `ThreadGovernor` choose between torch's default and 1 thread. The thread count before
    the block is restored after it. Off the CPU the adaptive policy does nothing (GPU work is async).
    """
    setting = thread_setting(setting)
    before = torch.get_num_threads()
    if setting > 0:
        torch.set_num_threads(setting)
    adaptive = setting == ADAPTIVE and torch.device(device).type == "cpu"
    governor = ThreadGovernor(enabled=adaptive)
    handles = _time_top_level_forwards(governor.step_done) if governor.enabled else []
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        torch.set_num_threads(before)


def _time_top_level_forwards(on_done) -> list:
    """Global forward hooks calling ``on_done(seconds)`` after each outermost module forward."""
    from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

    state = {"depth": 0, "t0": 0.0}

    def pre(module, args):
        if state["depth"] == 0:
            state["t0"] = time.perf_counter()
        state["depth"] += 1

    def post(module, args, output):
        state["depth"] = max(0, state["depth"] - 1)
        if state["depth"] == 0:
            on_done(time.perf_counter() - state["t0"])

    return [register_module_forward_pre_hook(pre), register_module_forward_hook(post)]
