"""How noisy is the validation loss itself, compared with the seed-to-seed spread?

The final model of each run is evaluated again on its validation windows (the same windows the trainer
used: `polycom.data.loader.eval_batches` with the run's seed rule), keeping one mean cross-entropy per
window (sequence). With N windows of per-window losses l_w:

    val-set standard error   SE = std_w(l_w, ddof=1) / sqrt(N)
    paired standard error    SE_pair = std_w(l_w(arm) - l_w(baseline), ddof=1) / sqrt(N)   (same seed)

SE is the sampling noise of one run's validation loss as an estimate of the loss on the whole held-out
text; SE_pair is that noise for a same-seed difference, which is what the paired tests use. Both are
reported next to the seed noise (std over seeds of the final loss, and of the paired differences).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from polycom.compare.layout import run_dir


def window_losses(run_folder: Path) -> list[float]:
    """Mean CE (nats/token) per validation window of the run's final model, in evaluation order."""
    from polycom.data.loader import eval_batches
    from polycom.data.shards import TokenShards
    from polycom.train.checkpoint import load_run
    from polycom.train.config import TrainConfig

    loaded = load_run(run_folder)
    cfg = TrainConfig.from_dict(loaded.config)
    tc = cfg.train
    shards = TokenShards(cfg.data.path)
    seed = tc.eval_seed if tc.eval_seed >= 0 else tc.seed + 1_000_003
    losses: list[float] = []
    with torch.no_grad():
        for x, y in eval_batches(shards.val, cfg.seq_len, tc.batch_size, tc.eval_batches, seed=seed):
            logits = loaded.model(x).logits.float()
            ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape)
            losses += ce.mean(dim=1).tolist()
    return losses


def _se(values: list[float]) -> float:
    return statistics.stdev(values) / math.sqrt(len(values))


def validation_noise(out: Path, arms: list[str], seeds: int, baseline: str) -> dict[str, Any]:
    """Per arm the mean over seeds of SE and (vs the baseline) SE_pair; see the module docstring."""
    losses = {arm: [window_losses(run_dir(out, arm, s)) for s in range(seeds)] for arm in arms}
    per_arm: dict[str, Any] = {}
    for arm in arms:
        paired = [_se([a - b for a, b in zip(mine, base)]) for mine, base in zip(losses[arm], losses[baseline])]
        per_arm[arm] = {
            "val_se": statistics.fmean(_se(w) for w in losses[arm]),
            "paired_se_vs_baseline": None if arm == baseline else statistics.fmean(paired),
            "recomputed_final_val_loss": [statistics.fmean(w) for w in losses[arm]],
        }
    first = losses[arms[0]][0]
    return {"windows": len(first), "baseline": baseline, "arms": per_arm}
