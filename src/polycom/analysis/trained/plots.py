"""Figures of the trained-model analysis, several runs overlaid (matplotlib, Agg backend, written atomically).

plot_model_*     model_*.png    per-layer effective rank, layer similarity, PolyCom coefficients,
                                activation-output histograms
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from polycom.analysis.io import save_figure
from polycom.analysis.plot_style import activation_style, plt

__all__ = ["plot_model_erank", "plot_model_similarity", "plot_model_coefficients", "plot_model_activations"]


def _run_style(run: dict, index: int) -> dict:
    return activation_style(str(run.get("activation", "")).lower(), index)


def plot_model_erank(report: dict, path: str | Path) -> Path:
    """Effective rank per layer, one panel per MLP weight (gate/up/down), one line per run."""
    runs = report["runs"]
    keys = [
        k
        for k in ("gate_proj", "up_proj", "down_proj")
        if any(k in layer["weights"] for r in runs for layer in r["effective_rank"])
    ]
    fig, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys), 4.2), squeeze=False, layout="constrained")
    for ax, key in zip(axes[0], keys):
        for i, run in enumerate(runs):
            rows = [layer for layer in run["effective_rank"] if key in layer["weights"]]
            if not rows:
                continue
            style = _run_style(run, i)
            xs = [layer["layer"] for layer in rows]
            ys = [layer["weights"][key]["erank"] for layer in rows]
            shape = rows[0]["weights"][key]["shape"]
            label = f"{run['label']} ({run['activation']}, {'x'.join(map(str, shape))})"
            ax.plot(xs, ys, marker=style["marker"], color=style["color"], label=label)
            if "erank_min" in rows[0]["weights"][key]:  # MoE: band between the experts' min and max
                lo = [layer["weights"][key]["erank_min"] for layer in rows]
                hi = [layer["weights"][key]["erank_max"] for layer in rows]
                ax.fill_between(xs, lo, hi, color=style["color"], alpha=0.15)
        full = max(
            min(layer["weights"][key]["shape"][-2:])
            for r in runs
            for layer in r["effective_rank"]
            if key in layer["weights"]
        )
        ax.axhline(full, color="gray", ls=":", lw=1.0, label=f"full rank min(out, in) = {full}")
        ax.set_ylim(0, full * 1.08)
        ax.set_title(f"{key}.weight")
        ax.set_xlabel("layer")
        ax.set_ylabel("effective rank exp(H(s / sum s))")
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8)
    fig.suptitle("Effective rank of MLP weights per layer")
    return save_figure(fig, path)


def plot_model_similarity(report: dict, path: str | Path) -> Path:
    """Left: cosine(h_in, h_out) per block for every run. Right: one layer x layer heatmap per run."""
    runs = report["runs"]
    n = len(runs)
    fig = plt.figure(figsize=(5.5 + 4.2 * n, 4.4))
    grid = fig.add_gridspec(1, n + 1, width_ratios=[1.3] + [1.0] * n)
    ax = fig.add_subplot(grid[0, 0])
    for i, run in enumerate(runs):
        style = _run_style(run, i)
        adj = run["similarity"]["adjacent"]
        ax.plot(
            range(len(adj)),
            adj,
            marker=style["marker"],
            color=style["color"],
            label=f"{run['label']} ({run['activation']})",
        )
    ax.set_xlabel("block l")
    ax.set_ylabel("mean cos(h_l input, h_l output)")
    ax.set_title("Similarity of consecutive hidden states")
    ax.grid(True, alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    for i, run in enumerate(runs):
        hax = fig.add_subplot(grid[0, i + 1])
        mat = np.array(run["similarity"]["matrix"])
        im = hax.imshow(mat, vmin=min(0.0, float(mat.min())), vmax=1.0, cmap="viridis", origin="lower")
        ticks = (
            np.arange(mat.shape[0]) if mat.shape[0] <= 13 else np.linspace(0, mat.shape[0] - 1, 7).round().astype(int)
        )
        hax.set_xticks(ticks)
        hax.set_yticks(ticks)
        hax.set_title(f"{run['label']}: cos(h_l, h_m)", fontsize=10)
        hax.set_xlabel("m (0 = embeddings)")
        hax.set_ylabel("l")
        fig.colorbar(im, ax=hax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_model_coefficients(report: dict, path: str | Path) -> Path:
    """Learned PolyCom coefficients per layer (one panel per power and the bias), PolyCom runs only."""
    runs = [r for r in report["runs"] if r["polycom_coefficients"]]
    order = max(len(c["weight"]) for r in runs for c in r["polycom_coefficients"])
    names = [f"a_{order - j} (x^{order - j})" for j in range(order)] + ["a_0 (bias)"]
    fig, axes = plt.subplots(1, order + 1, figsize=(4.2 * (order + 1), 3.8), squeeze=False, layout="constrained")
    for i, run in enumerate(runs):
        style = _run_style(run, i)
        rows = run["polycom_coefficients"]
        layers = [c["layer"] for c in rows]
        for j in range(order + 1):
            vals = [c["bias"] if j == order else (c["weight"][j] if j < len(c["weight"]) else np.nan) for c in rows]
            axes[0][j].plot(
                layers,
                vals,
                marker=style["marker"],
                color=style["color"],
                label=f"{run['label']} ({run['activation']})",
            )
    for j, ax in enumerate(axes[0]):
        ax.set_title(names[j])
        ax.set_xlabel("layer")
        ax.axhline(0.0, color="gray", lw=0.8)
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0][0].set_ylabel("coefficient value (init: 1/r, bias 0)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Learned PolyCom coefficients per layer")
    return save_figure(fig, path)


def plot_model_activations(report: dict, path: str | Path) -> Path:
    """Histogram (density, log y) of the MLP activation outputs at the first, middle and last layer."""
    runs = report["runs"]
    n_layers = max(len(r["activations"]) for r in runs)
    picks = sorted({0, n_layers // 2, n_layers - 1})
    fig, axes = plt.subplots(1, len(picks), figsize=(5.2 * len(picks), 4.0), squeeze=False, layout="constrained")
    for ax, pick in zip(axes[0], picks):
        for i, run in enumerate(runs):
            if pick >= len(run["activations"]):
                continue
            stats = run["activations"][pick]
            edges = np.array(stats["histogram"]["edges"])
            counts = np.array(stats["histogram"]["counts"])
            total = counts.sum()
            if total <= 0:
                continue
            # Standardised axis (value / std, zero kept at zero) so that runs of very different scales
            # can be compared by shape; each run's std is in the legend.
            scale = stats["std"] if stats["std"] > 0 else 1.0
            edges = edges / scale
            density = counts / (total * np.diff(edges))
            centers = 0.5 * (edges[1:] + edges[:-1])
            style = _run_style(run, i)
            ax.step(
                centers,
                np.where(density > 0, density, np.nan),
                where="mid",
                color=style["color"],
                label=f"{run['label']} (std {stats['std']:.3g}, kurt {stats['kurtosis']:.1f})",
            )
        ax.set_yscale("log")
        ax.set_title(f"MLP of layer {pick}")
        ax.set_xlabel("activation output / its std (0.05%-99.95% quantile range)")
        ax.set_ylabel("density")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Distribution of MLP activation outputs (input of down_proj)")
    return save_figure(fig, path)
