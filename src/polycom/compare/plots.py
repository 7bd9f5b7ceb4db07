"""loss.png: training and validation loss per activation, mean over seeds with a +-1 std band."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from polycom.utils.atomic import save_figure


def mean_band(curves: list[list[tuple[int, float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean, std) over seeds, on the steps every seed logged. curves: per seed [(step, value)]."""
    common = sorted(set.intersection(*[{s for s, _ in c} for c in curves])) if curves else []
    table = np.array([[dict(c)[s] for s in common] for c in curves], dtype=np.float64)
    if table.size == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    std = table.std(axis=0, ddof=1) if len(curves) >= 2 else np.zeros(len(common))
    return np.asarray(common), table.mean(axis=0), std


def plot_losses(results: dict[str, Any], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for index, act in enumerate(results["activations"]):
        runs = results["results"][act]["curves"]
        color = f"C{index % 10}"
        for ax, key in zip(axes, ("train", "val")):
            steps, mean, std = mean_band([r[key] for r in runs])
            if steps.size == 0:
                continue
            ax.plot(steps, mean, color=color, label=act, linewidth=1.6)
            if len(runs) >= 2:
                ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
    seeds = results.get("seeds", 1)
    band = f"mean ± std over {seeds} seeds" if seeds >= 2 else "1 seed"
    for ax, title in zip(axes, ("training loss", "validation loss")):
        ax.set_title(f"{title} ({band})")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend()
    # Zoom the y-axis on the later part of training: the first points (~ln V at init) would squash
    # the differences between activations into a few pixels.
    for ax in axes:
        xs = [np.asarray(line.get_xdata(), dtype=float) for line in ax.get_lines()]
        ys = [np.asarray(line.get_ydata(), dtype=float) for line in ax.get_lines()]
        if not ys or not any(len(x) for x in xs):
            continue
        start = 0.2 * max(float(x.max()) for x in xs if len(x))
        if min(int((x >= start).sum()) for x in xs) < 4:
            continue  # too few points to zoom on: show everything
        tail = np.concatenate([y[x >= start] for x, y in zip(xs, ys)])
        everything = np.concatenate(ys)
        if tail.size:
            lo, hi = float(tail.min()), float(tail.max())
            pad = max(hi - lo, 1e-3)
            top = min(float(everything.max()) + 0.02 * pad, hi + 0.5 * pad)
            ax.set_ylim(lo - 0.1 * pad, top)
            if float(everything.max()) > top:
                ax.set_title(
                    ax.get_title() + f"\n(y zoomed; early losses up to {float(everything.max()):.2f} off scale)"
                )
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
