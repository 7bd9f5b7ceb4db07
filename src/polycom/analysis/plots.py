"""Figures of the analyses (matplotlib, Agg backend, written atomically).

plot_approx      approx.png     error vs parameters, log-log, one row per target (L2 | sup)
plot_represent   represent.png  ReLU size to reach eps on x^2 / x^3 vs log(1/eps); PolyReLU size
plot_model_*     model_*.png    per-layer effective rank, layer similarity, PolyCom coefficients,
                                activation-output histograms, several runs overlaid
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from polycom.analysis.io import save_figure  # noqa: E402

__all__ = [
    "plot_approx",
    "plot_represent",
    "activation_style",
    "plot_model_erank",
    "plot_model_similarity",
    "plot_model_coefficients",
    "plot_model_activations",
]

# One fixed colour per activation so every figure reads the same way.
_ACT_COLORS = {
    "relu": "#1f77b4",
    "relu2": "#17becf",
    "gelu": "#2ca02c",
    "silu": "#bcbd22",
    "polyrelu": "#ff7f0e",
    "polynorm": "#d62728",
    "swiglu": "#9467bd",
    "geglu": "#8c564b",
    "polyrelu_glu": "#e377c2",
    "polynorm_glu": "#7f7f7f",
}
_MARKERS = "osD^v<>pPX*h"


def activation_style(name: str, index: int) -> dict:
    """Colour and marker for a series: fixed per known activation, cycled otherwise."""
    color = _ACT_COLORS.get(name, f"C{index % 10}")
    return {"color": color, "marker": _MARKERS[index % len(_MARKERS)]}


def plot_approx(result: dict, path: str | Path) -> Path:
    """Log-log error vs parameter count; best-of-seeds lines, every seed as faint dots, fitted slopes."""
    summary = result["summary"]
    fits = result["fits"]
    targets = list(summary)
    fig, axes = plt.subplots(len(targets), 2, figsize=(12, 4.2 * len(targets)), squeeze=False, layout="constrained")
    for row, name in enumerate(targets):
        entry = summary[name]
        for col, metric in enumerate(("l2", "sup")):
            ax = axes[row][col]
            for i, (act, a) in enumerate(entry["activations"].items()):
                style = activation_style(act, i)
                sizes = a["sizes"]
                if not sizes:
                    continue
                seeds = [f for f in fits if f["target"] == name and f["activation"] == act and math.isfinite(f[metric])]
                ax.scatter(
                    [f["params"] for f in seeds],
                    [max(f[metric], 1e-300) for f in seeds],
                    color=style["color"],
                    alpha=0.25,
                    s=12,
                )
                xs = np.array([s["params"] for s in sizes], dtype=float)
                ys = np.array([s[f"{metric}_best"] for s in sizes], dtype=float)
                fit = a[f"slope_{metric}"]
                label = act
                if fit:
                    ci = "" if fit["ci_low"] is None else f" [{fit['ci_low']:.2f}, {fit['ci_high']:.2f}]"
                    label = f"{act}: slope {fit['slope']:.2f}{ci}"
                ax.plot(xs, ys, marker=style["marker"], color=style["color"], lw=1.6, ms=5, label=label)
                if fit:
                    ax.plot(
                        xs, 10 ** (fit["intercept"] + fit["slope"] * np.log10(xs)), "--", color=style["color"], lw=0.9
                    )
            theory = entry["theory_slope"]
            if theory is not None:
                all_sizes = [s["params"] for a in entry["activations"].values() for s in a["sizes"]]
                all_err = [s[f"{metric}_best"] for a in entry["activations"].values() for s in a["sizes"]]
                if all_sizes:
                    x0, x1 = min(all_sizes), max(all_sizes)
                    y0 = max(all_err)
                    ax.plot(
                        [x0, x1],
                        [y0, y0 * (x1 / x0) ** theory],
                        ":",
                        color="black",
                        lw=1.4,
                        label=f"theory P^({theory:.2f})",
                    )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
            ax.set_xlabel("parameters P")
            ax.set_ylabel("test L2 error (RMS)" if metric == "l2" else "sup error")
            dim = entry["dim"]
            ax.set_title(f"{name} (d={dim}): {entry['description']}", fontsize=10)
            ax.legend(fontsize=8, loc="lower left")
    fig.suptitle("Approximation error vs network size (best of seeds; dashed: OLS fit; 95% CI in legend)")
    return save_figure(fig, path)


def plot_represent(result: dict, path: str | Path) -> Path:
    """Left: sup error vs ReLU size of the sawtooth constructions. Right: size needed vs log2(1/eps)."""
    fig, (ax_err, ax_size) = plt.subplots(1, 2, figsize=(13, 4.8))
    for i, (fname, curve) in enumerate(result["relu_constructions"].items()):
        color = f"C{i}"
        params = [c["params"] for c in curve["levels"]]
        errors = [max(c["sup_error"], 1e-300) for c in curve["levels"]]
        ax_err.semilogy(params, errors, "o-", color=color, label=f"ReLU net for {fname} (sawtooth)")
        need = curve["size_for_eps"]
        ln = [math.log2(1 / n["eps"]) for n in need]
        ax_size.plot(ln, [n["relu_params"] for n in need], "o-", color=color, label=f"ReLU params for {fname}")
        fit = curve["size_vs_log_eps_fit"]
        if fit:
            xs = np.array(ln)
            ax_size.plot(
                xs,
                fit["intercept"] + fit["slope"] * xs,
                "--",
                color=color,
                lw=0.9,
                label=f"linear fit: {fit['slope']:.1f} params per bit (R^2 {fit['r2']:.3f})",
            )
        poly_ln, poly_params = ln, [n["polyrelu_params"] for n in need]
    if result["relu_constructions"]:
        names = " and ".join(result["relu_constructions"])
        ax_size.plot(poly_ln, poly_params, "s-", color="black", label=f"PolyReLU params for {names} (exact: eps = 0)")
    ax_err.set_xlabel("ReLU network parameters (nonzero weights + biases)")
    ax_err.set_ylabel("sup error on [0, 1]")
    ax_err.set_title("Yarotsky sawtooth ReLU nets: error / 4 per sawtooth level")
    ax_err.grid(True, which="both", alpha=0.3)
    ax_err.legend(fontsize=8)
    ax_size.set_xlabel("log2(1 / eps)")
    ax_size.set_ylabel("parameters needed for sup error <= eps")
    ax_size.set_title("Size to reach eps: ReLU grows ~ log(1/eps), PolyReLU is constant")
    ax_size.grid(True, alpha=0.3)
    ax_size.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------------------
# model analysis figures (several runs overlaid)
# --------------------------------------------------------------------------------------------------


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
