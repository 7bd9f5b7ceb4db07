"""The multi-seed part of a comparison's results and report: paired tests, convergence speed, noise.

`add_paired_analysis` adds ``results["paired"]`` (needs >= 2 seeds): all pairwise paired differences of
the final validation loss (`polycom.compare.statistics`), the convergence table against the baseline
(`polycom.compare.convergence`) and, when `measure_noise`, the validation-set noise next to the seed noise
(`polycom.compare.val_noise`). `render_paired_analysis` turns it into report.md sections.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from polycom.compare.convergence import convergence_table
from polycom.compare.statistics import ALPHA, all_pairs, describe_pair


def tokens_per_step(results: dict[str, Any]) -> int:
    rc = results["run_config"]
    train = rc["train"]
    seq = train["seq_len"] or rc["model"]["max_seq_len"]
    return train["batch_size"] * train["grad_accum"] * seq


def held_out_losses(out: Path, arms: list[str], seeds: int) -> dict[str, dict[str, list[float]]]:
    """Final loss on each extra held-out set (``data.held_out``): set -> arm -> per seed; {} without any."""
    from polycom.compare.layout import run_dir
    from polycom.train.metrics import read_metrics

    table: dict[str, dict[str, list[float]]] = {}
    for arm in arms:
        for seed in range(seeds):
            records = [r for r in read_metrics(run_dir(out, arm, seed) / "metrics.jsonl") if "val_loss_sets" in r]
            for name, loss in (records[-1]["val_loss_sets"] if records else {}).items():
                table.setdefault(name, {}).setdefault(arm, []).append(loss)
    return table


def add_paired_analysis(results: dict[str, Any], out: Path | None = None, *, measure_noise: bool = True) -> None:
    """Fill ``results["held_out"]`` (extra validation sets, if any) and ``results["paired"]`` (>= 2 seeds)
    in place; `out` is needed for the held-out and noise parts."""
    if out is not None:
        sets = held_out_losses(Path(out), results["activations"], results.get("seeds", 1))
        if sets:
            results["held_out"] = sets
    if results.get("seeds", 1) < 2:
        return
    arms, baseline = results["activations"], results["baseline"] or results["activations"][0]
    per_arm = results["results"]
    finals = {arm: per_arm[arm]["final_val_loss"]["values"] for arm in arms}
    tps = tokens_per_step(results)
    curves = {arm: [[(s * tps, v) for s, v in c["val"]] for c in per_arm[arm]["curves"]] for arm in arms}
    paired: dict[str, Any] = {
        "alpha": ALPHA,
        "pairs": all_pairs(finals),
        "convergence": convergence_table(curves, baseline),
        "seed_std": {arm: per_arm[arm]["final_val_loss"]["std"] for arm in arms},
    }
    if measure_noise and out is not None:
        from polycom.compare.val_noise import validation_noise

        paired["validation_noise"] = validation_noise(Path(out), arms, results["seeds"], baseline)
    results["paired"] = paired


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _pairs_section(paired: dict[str, Any]) -> list[str]:
    lines = [
        "## Paired differences of the final validation loss (all pairs)",
        "",
        "Runs with the same seed share the initial weights of every shared part and the batch order, so each pair "
        "of arms is compared through its per-seed differences A − B: paired t-test, bootstrap 95% CI of the mean "
        f"difference, Holm correction over all pairs; significant = Holm-adjusted p < {paired['alpha']:g}.",
        "",
        "| A − B | mean Δ | 95% CI | p (paired t) | p (Holm) | significant |",
        "|---|---:|---:|---:|---:|:---:|",
    ]
    for row in paired["pairs"]:
        ci = "n/a" if row["ci95"] is None else f"[{row['ci95'][0]:+.4f}, {row['ci95'][1]:+.4f}]"
        mean = "n/a" if row["mean"] is None else f"{row['mean']:+.4f}"
        lines.append(
            f"| {row['a']} − {row['b']} | {mean} | {ci} | {_p(row['p_value'])} | {_p(row['p_holm'])} | "
            f"{'yes' if row['significant'] else 'no'} |"
        )
    lines += ["", *[f"- {describe_pair(row)}" for row in paired["pairs"]], ""]
    return lines


def _convergence_section(conv: dict[str, Any]) -> list[str]:
    base = conv["baseline"]
    lines = [
        "## Convergence speed",
        "",
        f"Target: {base}'s final validation loss of the same seed. Tokens to reach it (linear interpolation "
        "between evaluations), speed-up = the baseline's tokens / the arm's (> 1: sooner), and the mean validation "
        "loss over training (area under the validation curve / tokens).",
        "",
        "| arm | reached | tokens to target (mean of seeds that reached it) | speed-up (mean) | mean val loss over training |",
        "|---|:---:|---:|---:|---:|",
    ]
    for arm, row in conv["arms"].items():
        reached = [t for t in row["tokens_to_baseline_final"] if t is not None]
        tokens = f"{statistics.fmean(reached):,.0f}" if reached else "never"
        speed = "n/a" if row["speedup_mean"] is None else f"{row['speedup_mean']:.3f}x"
        area = "n/a" if row["mean_loss_area_mean"] is None else f"{row['mean_loss_area_mean']:.4f}"
        lines.append(f"| {arm} | {row['reached']} | {tokens} | {speed} | {area} |")
    return lines + [""]


def _noise_section(paired: dict[str, Any]) -> list[str]:
    noise = paired.get("validation_noise")
    if not noise:
        return []
    lines = [
        "## Validation noise vs seed noise",
        "",
        f"Validation set: {noise['windows']} windows, the same for every seed and arm. val-set SE = std over windows "
        "/ sqrt(windows) of one run's loss; paired SE = the same for the per-window difference from "
        f"{noise['baseline']} (same seed); both averaged over seeds. Seed std = std over seeds of the final loss; "
        "std of Δ = std over seeds of the paired difference from the baseline.",
        "",
        "| arm | seed std | val-set SE | std of Δ over seeds | paired SE of Δ |",
        "|---|---:|---:|---:|---:|",
    ]
    deltas = {r["a"]: r for r in paired["pairs"] if r["b"] == noise["baseline"]}
    deltas |= {r["b"]: r for r in paired["pairs"] if r["a"] == noise["baseline"]}
    for arm, row in noise["arms"].items():
        std_delta = deltas[arm]["std"] if arm in deltas else None
        paired_se = row["paired_se_vs_baseline"]
        std_text = "" if std_delta is None else f"{std_delta:.4f}"
        se_text = "" if paired_se is None else f"{paired_se:.4f}"
        lines.append(f"| {arm} | {paired['seed_std'][arm]:.4f} | {row['val_se']:.4f} | {std_text} | {se_text} |")
    return lines + [""]


def _held_out_section(sets: dict[str, dict[str, list[float]]], arms: list[str]) -> list[str]:
    names = list(sets)
    lines = [
        "## Held-out sets",
        "",
        "Final validation loss on each extra held-out set (`data.held_out`), mean ± std over seeds.",
        "",
        "| arm | " + " | ".join(names) + " | mean over sets |",
        "|---|" + "---:|" * (len(names) + 1),
    ]
    for arm in arms:
        cells, means = [], []
        for name in names:
            values = sets[name].get(arm, [])
            if not values:
                cells.append("n/a")
                continue
            means.append(statistics.fmean(values))
            std = f" ± {statistics.stdev(values):.3f}" if len(values) >= 2 else ""
            cells.append(f"{means[-1]:.3f}{std}")
        overall = f"{statistics.fmean(means):.3f}" if means else "n/a"
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {overall} |")
    return lines + [""]


def render_paired_analysis(results: dict[str, Any]) -> list[str]:
    """report.md lines for ``results["held_out"]`` and ``results["paired"]`` (empty without them)."""
    lines = _held_out_section(results["held_out"], results["activations"]) if results.get("held_out") else []
    paired = results.get("paired")
    if not paired:
        return lines
    return [*lines, *_pairs_section(paired), *_convergence_section(paired["convergence"]), *_noise_section(paired)]
