"""Figures of the theory analyses (matplotlib, Agg backend, written atomically).

plot_approx      approx.png     error vs parameters, log-log, one row per target (L2 | sup)
plot_represent   represent.png  ReLU size to reach eps on x^2 / x^3 vs log(1/eps); PolyReLU size
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from polycom.analysis.io import save_figure
from polycom.analysis.plot_style import activation_style, plt

__all__ = ["plot_approx", "plot_represent"]


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
