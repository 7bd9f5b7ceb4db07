"""Learning-rate schedule: linear warmup, then cosine decay to a floor.

    lr(s) = peak * (s + 1) / warmup                                   for s < warmup
    lr(s) = peak * (m + (1 - m) * 0.5 * (1 + cos(pi * p)))            otherwise,
            p = min(1, (s - warmup) / max(1, total - warmup)),  m = min_lr_ratio

s is the 0-based index of the optimizer step about to be taken. The schedule is a pure function of s,
so its checkpointed state is only the step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class WarmupCosine:
    peak_lr: float
    total_steps: int
    warmup_steps: int
    min_lr_ratio: float = 0.1

    def lr(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        m = self.min_lr_ratio
        return self.peak_lr * (m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * progress)))

    def apply(self, optimizer, step: int) -> float:
        """Set every param group's lr for `step`; returns it."""
        lr = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        return {
            "peak_lr": self.peak_lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "min_lr_ratio": self.min_lr_ratio,
        }
