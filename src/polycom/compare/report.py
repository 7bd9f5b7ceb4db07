"""Results of a comparison: results.json, report.md (and loss.png through plots.py).

Per activation, over its seeds: parameters, initial and final validation loss, final training loss
(mean of the last logged window), tokens/s (median of the logged windows), peak memory, each as
mean +- sample std (ddof 1; std 0 with one seed); the difference of the final validation loss from the
baseline (SwiGLU) and, with >= 2 seeds on both sides, Welch's unequal-variance t-test p-value
(scipy.stats.ttest_ind(equal_var=False)). Losses are in nats per token.
"""

from __future__ import annotations

import json
import math
import statistics
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

from polycom.compare.layout import RESULTS_FILE, RUNS_FOLDER, run_dir, run_name
from polycom.compare.paired_report import render_paired_analysis
from polycom.train.metrics import read_metrics
from polycom.utils.atomic import write_json, write_text


def summarize(values: list[float]) -> dict[str, Any]:
    clean = [v for v in values if v is not None]
    if not clean:
        return {"mean": None, "std": None, "values": values}
    std = statistics.stdev(clean) if len(clean) >= 2 else 0.0
    return {"mean": statistics.fmean(clean), "std": std, "values": values}


def welch_p_value(a: list[float], b: list[float]) -> float | None:
    """Two-sided Welch t-test p-value, or None when either side has < 2 values or it is undefined."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return None if math.isnan(p) else p


def read_run(run_dir: Path) -> dict[str, Any]:
    """Curves and end numbers of one run folder, from its metrics.jsonl and run.json."""
    records = read_metrics(run_dir / "metrics.jsonl")
    header = json.loads((run_dir / "run.json").read_text())
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    tps = sorted(r["tokens_per_s"] for r in records if "tokens_per_s" in r)
    mem = [r["memory_mb"] for r in records if "memory_mb" in r]
    initial = next((v for s, v in val if s == 0), None)
    return {
        "train_curve": train,
        "val_curve": val,
        "initial_val_loss": initial,
        "final_val_loss": val[-1][1] if val else None,
        "final_train_loss": train[-1][1] if train else None,
        "steps": train[-1][0] if train else 0,
        "tokens_per_s": tps[len(tps) // 2] if tps else None,
        "peak_memory_mb": max(mem) if mem else None,
        "num_parameters": header.get("num_parameters"),
    }


def collect_results(out: Path, activations, seeds: int, cfg, recipe, device, *, baseline: str) -> dict[str, Any]:
    """results.json's content: the numbers of every activation (mean +- std over seeds) and what was run.

    cfg: the `CompareConfig`; recipe: the `TrainConfig` the runs started from (before per-run settings).
    """
    per_act: dict[str, Any] = {}
    for activation in activations:
        runs = [read_run(run_dir(out, activation, s)) for s in range(seeds)]
        finals = [r["final_val_loss"] for r in runs]
        initials = [r["initial_val_loss"] for r in runs]
        drops = [100.0 * (1.0 - f / i) if f is not None and i else None for f, i in zip(finals, initials)]
        per_act[activation] = {
            "num_parameters": runs[0]["num_parameters"],
            "initial_val_loss": summarize(initials),
            "final_val_loss": summarize(finals),
            "final_train_loss": summarize([r["final_train_loss"] for r in runs]),
            "val_loss_drop_pct": summarize(drops),
            "tokens_per_s": summarize([r["tokens_per_s"] for r in runs]),
            "peak_memory_mb": summarize([r["peak_memory_mb"] for r in runs]),
            "runs": [f"{RUNS_FOLDER}/{run_name(activation, s)}" for s in range(seeds)],
            "curves": [{"train": r["train_curve"], "val": r["val_curve"]} for r in runs],
        }
    if baseline in per_act:
        base = per_act[baseline]["final_val_loss"]
        for activation, entry in per_act.items():
            mine = entry["final_val_loss"]
            diff = mine["mean"] - base["mean"]
            entry["vs_baseline"] = {
                "baseline": baseline,
                "val_loss_diff": diff,
                "val_loss_diff_pct": 100.0 * diff / base["mean"],
                "p_value": None if activation == baseline else welch_p_value(mine["values"], base["values"]),
            }
    first = json.loads((run_dir(out, activations[0], 0) / "config.json").read_text())
    return {
        "format": "polycom-compare-results",
        "version": 1,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": str(device),
        "baseline": baseline if baseline in per_act else None,
        "seeds": seeds,
        "activations": activations,
        "compare_config": asdict(cfg),
        "recipe": recipe.to_dict(),
        "run_config": {k: v for k, v in first.items() if k != "model"} | {"model": _model_shape(first["model"])},
        "memory_kind": "cuda_max_allocated" if str(device).startswith("cuda") else "process_peak_rss",
        "results": per_act,
    }


def _model_shape(model: dict) -> dict:
    return {k: v for k, v in model.items() if k not in ("activation", "hidden_size")}


def _fmt(stat: dict, digits: int = 3, scale: float = 1.0) -> str:
    if stat["mean"] is None:
        return "n/a"
    mean = stat["mean"] * scale
    if len([v for v in stat["values"] if v is not None]) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {stat['std'] * scale:.{digits}f}"


def render_markdown(results: dict[str, Any]) -> str:
    rc = results["run_config"]
    model, train, data = rc["model"], rc["train"], rc["data"]
    seq = train["seq_len"] or model["max_seq_len"]
    tokens = train["steps"] * train["batch_size"] * train["grad_accum"] * seq
    lines = [
        "# PolyCom activation comparison",
        "",
        f"Finished {results['finished']} on `{results['device']}` in {results.get('wall_s', 0):.0f} s.",
        "",
        f"- model: preset `{rc.get('preset')}`, d_model {model['d_model']}, {model['n_layers']} layers, "
        f"{model['n_heads']} heads, vocab {model['vocab_size']}; MLP width parameter-matched per activation",
        f"- training: {train['steps']} steps x {train['batch_size']} x {seq} tokens ({tokens:,} tokens), "
        f"AdamW lr {rc['optim']['lr']:g} (warmup {rc['optim']['warmup_steps']}, cosine), seeds: {results['seeds']} "
        "(same data order for every activation)",
        f"- data: `{data['path']}`",
        "- losses in nats per token on the held-out split; mean ± sample std over seeds",
        "",
        "| activation | params | val loss start | val loss end | drop | train loss end | "
        f"Δ val vs {results['baseline'] or 'baseline'} | p (Welch) | tokens/s | peak mem (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for act in results["activations"]:
        e = results["results"][act]
        vs = e.get("vs_baseline")
        if vs is None:
            diff, p = "n/a", "n/a"
        elif act == vs["baseline"]:
            diff, p = "(baseline)", ""
        else:
            diff = f"{vs['val_loss_diff']:+.3f} ({vs['val_loss_diff_pct']:+.1f}%)"
            p = "n/a (1 seed)" if vs["p_value"] is None else f"{vs['p_value']:.3g}"
        lines.append(
            f"| {act} | {e['num_parameters']:,} | {_fmt(e['initial_val_loss'])} | {_fmt(e['final_val_loss'])} | "
            f"{_fmt(e['val_loss_drop_pct'], 1)}% | {_fmt(e['final_train_loss'])} | {diff} | {p} | "
            f"{_fmt(e['tokens_per_s'], 0)} | {_fmt(e['peak_memory_mb'], 0)} |"
        )
    mem_note = (
        "peak memory is torch.cuda.max_memory_allocated per run"
        if results["memory_kind"] == "cuda_max_allocated"
        else "peak memory on CPU is the whole process's peak resident set (cumulative over runs, not per model)"
    )
    lines += [
        "",
        f"Notes: {mem_note}. The p-value tests whether the final validation loss differs from the baseline's "
        "(needs --seeds >= 2). A short run ranks activations by early training speed, not by the final quality "
        "the paper reports after billions of tokens.",
        "",
        *render_paired_analysis(results),
        "![loss curves](loss.png)",
        "",
        "## Samples",
        "",
        *_samples_intro(results),
    ]
    for act, text in results.get("samples", {}).items():
        lines += [f"### {act}", "", "```text", text.rstrip(), "```", ""]
    return "\n".join(lines)


def _samples_intro(results: dict[str, Any]) -> list[str]:
    if not results.get("samples"):
        return ["No samples yet: `polycom compare --resume --out DIR` generates them.", ""]
    prompt = results.get("sample_prompt")
    said = "same prompt" if prompt is None else f"same prompt {json.dumps(prompt, ensure_ascii=False)}"
    return [f"Seed-0 model of each activation, {said}, temperature 0.8, top-k 40, sampling seed 1234.", ""]


def write_report(out: Path, results: dict[str, Any]) -> None:
    """loss.png, report.md, then results.json (last: its presence marks the comparison as finished)."""
    from polycom.compare.plots import plot_losses

    plot_losses(results, out / "loss.png")
    write_text(out / "report.md", render_markdown(results))
    write_json(out / RESULTS_FILE, results)
