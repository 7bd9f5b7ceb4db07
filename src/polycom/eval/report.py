"""Evaluation reports: one JSON file (everything) and one markdown table (the numbers people read)."""

from __future__ import annotations

from pathlib import Path

from polycom.utils.atomic import write_json, write_text
from polycom.utils.provenance import git_commit, hardware, utc_now, versions

MAIN_METRICS = ("acc", "acc_norm")
PPL_METRICS = ("token_perplexity", "bits_per_byte", "byte_perplexity", "word_perplexity")


def environment() -> dict:
    """Versions, host and git commit recorded with every report."""
    return {
        "versions": versions("transformers", "lm_eval"),
        "git_commit": git_commit(),
        "host": hardware()["host"],
        "date": utc_now(),
    }


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def to_markdown(report: dict) -> str:
    """Markdown tables: tasks (acc, acc_norm with stderr, samples) and perplexity per text file."""
    lines = [f"# Evaluation of `{report['model']}`", ""]
    tasks = report.get("tasks") or {}
    if tasks:
        lines += ["| task | acc | acc_norm | samples |", "|---|---|---|---|"]
        for task, row in tasks.items():
            cells = []
            for metric in MAIN_METRICS:
                value = row.get(metric)
                err = row.get(f"{metric}_stderr")
                cells.append("-" if value is None else f"{value:.4f}" + (f" ± {err:.4f}" if err is not None else ""))
            name = f"**{task}** (group)" if row.get("group") else task
            lines.append(f"| {name} | {cells[0]} | {cells[1]} | {_fmt(row.get('samples'))} |")
        lines.append("")
    for entry in report.get("perplexity") or []:
        lines += [
            f"Perplexity of `{entry['file']}` ({entry['tokens']:,} tokens, {entry['bytes']:,} bytes, "
            f"window {entry['max_length']}, stride {entry['stride']}):",
            "",
            "| metric | value |",
            "|---|---|",
        ]
        lines += [f"| {m} | {_fmt(entry[m])} |" for m in PPL_METRICS]
        lines.append("")
    env = report.get("environment", {})
    lines.append(
        f"polycom {env.get('versions', {}).get('polycom')}, lm-eval {env.get('versions', {}).get('lm_eval')}, "
        f"commit {env.get('git_commit')}, {env.get('date')}"
    )
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write results.json and results.md into `out_dir` (atomically); returns both paths."""
    folder = Path(out_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / "results.json", folder / "results.md"
    write_json(json_path, report)
    write_text(md_path, to_markdown(report))
    return json_path, md_path
