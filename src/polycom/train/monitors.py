"""Small components the training loop reports through: loss, throughput/MFU, memory, and the cadence of
logging, evaluation and checkpoints. Each keeps its own counters; the loop calls `step_done` after every
optimizer step and reads the monitors when it writes a metrics record."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from polycom.errors import UserError
from polycom.train.config import LoopConfig
from polycom.utils.hardware import peak_memory_mb


@dataclass(frozen=True)
class Cadence:
    """When step s (1-based: the number of optimizer steps done) logs, evaluates and checkpoints.

    eval: at every `eval_interval`-th step (0 = never), from `dense_from` on (0 = off) at every
    `dense_interval`-th step too, and at the last step; log: every `log_interval`-th
    step and whenever it evaluates; checkpoint: every `checkpoint_interval`-th step (0 = never) except the
    last, which the loop always saves once the loop ends.
    """

    steps: int
    log_interval: int
    eval_interval: int
    checkpoint_interval: int
    dense_from: int = 0
    dense_interval: int = 0

    @classmethod
    def from_config(cls, loop: LoopConfig) -> Cadence:
        return cls(
            loop.steps,
            loop.log_interval,
            loop.eval_interval,
            loop.checkpoint_interval,
            loop.eval_dense_from,
            loop.eval_dense_interval,
        )

    def is_last(self, step: int) -> bool:
        return step == self.steps

    def should_eval(self, step: int) -> bool:
        if self.dense_from and step >= self.dense_from and step % self.dense_interval == 0:
            return True
        return self.is_last(step) or bool(self.eval_interval and step % self.eval_interval == 0)

    def should_log(self, step: int) -> bool:
        return step % self.log_interval == 0 or self.should_eval(step)

    def should_checkpoint(self, step: int) -> bool:
        return bool(self.checkpoint_interval and step % self.checkpoint_interval == 0) and not self.is_last(step)


class LossMonitor:
    """Training loss per step: the mean over the log window, and the mean of the last `recent` steps."""

    def __init__(self, recent: int = 20) -> None:
        self.recent_size = recent
        self.recent: list[float] = []
        self._window_sum = 0.0
        self._window_n = 0

    def step_done(self, step: int, loss: float) -> None:
        """Record the loss of step `step`; UserError when it is not finite (the run diverged)."""
        self._window_sum += loss
        self._window_n += 1
        self.recent = (self.recent + [loss])[-self.recent_size :]
        if not math.isfinite(loss):
            raise UserError(f"training diverged: loss is {loss} at step {step}; lower --optim.lr")

    def has_window(self) -> bool:
        """Whether a step was recorded since the last `window_mean` (skipped steps are not recorded)."""
        return self._window_n > 0

    def window_mean(self) -> float:
        """Mean loss of the steps since the last call (starts a new window)."""
        mean = self._window_sum / self._window_n
        self._window_sum, self._window_n = 0.0, 0
        return mean

    @property
    def final(self) -> float | None:
        return sum(self.recent) / len(self.recent) if self.recent else None


class ThroughputMonitor:
    """tokens/s over the steps since the last log, and MFU = flops_per_token * tokens/s / (peak * world_size).

    tokens_per_step counts every data-parallel rank's tokens; `peak_flops` is one device's (None: no MFU).
    """

    def __init__(self, tokens_per_step: int, flops_per_token: float, peak_flops: float | None, world_size: int):
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.world_size = world_size
        self.samples: list[float] = []
        self._window_n = 0
        self._window_s = 0.0

    def step_done(self, seconds: float) -> None:
        self._window_n += 1
        self._window_s += seconds

    def window_tokens_per_s(self) -> float:
        """tokens/s of the steps since the last call (kept as a sample; starts a new window)."""
        tps = self.tokens_per_step * self._window_n / self._window_s
        self.samples.append(tps)
        self._window_n, self._window_s = 0, 0.0
        return tps

    def mfu(self, tokens_per_s: float) -> float | None:
        if not self.peak_flops:
            return None
        return self.flops_per_token * tokens_per_s / (self.peak_flops * self.world_size)

    @property
    def mean_tokens_per_s(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


class MemoryMonitor:
    """Peak memory of the run: CUDA max allocated (reset when the monitor starts), or the process's peak RSS."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def peak_mb(self) -> float:
        return peak_memory_mb(self.device)[0]

    def peak(self) -> tuple[float, str]:
        """(peak MiB, what was measured: "cuda_max_allocated" or "process_peak_rss")."""
        return peak_memory_mb(self.device)
