"""Output of `polycom bench ops`: CSV columns, the console table and the Markdown summary of a results file."""

from __future__ import annotations

import json
from pathlib import Path

CSV_FIELDS = [
    "date", "card", "torch", "triton", "cuda", "liger_kernel", "git_commit",
    "op", "provider", "tokens", "hidden", "dtype", "order", "mode", "check",
    "median_ms", "p20_ms", "p80_ms", "min_bytes", "GBps", "copy_GBps", "frac_copy",
    "peak_MiB", "fwd_kept_MiB", "max_rel_err", "check_detail", "kernel_variant", "tiling",
]  # fmt: skip


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def _table_cells(r: dict) -> list[str]:
    head = [f"{r['tokens']}x{r['hidden']}", r["dtype"], r["op"], r["provider"], r["mode"]]
    if r["check"] != "ok":
        return [*head, f"check {r['check']}", "", "", "", "", ""]
    return [
        *head,
        _fmt(r["median_ms"], ".3f"),
        _fmt(r["p20_ms"], ".3f"),
        _fmt(r["p80_ms"], ".3f"),
        _fmt(r["GBps"], ".0f"),
        _fmt(100 * r["frac_copy"], ".1f"),
        _fmt(r.get("peak_MiB"), ".0f"),
    ]


def print_table(rows: list[dict]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain fallback
        for r in rows:
            print(r)
        return
    table = Table(title="polycom bench ops")
    for col in ("shape", "dtype", "op", "provider", "mode", "median ms", "p20", "p80", "GB/s", "% copy", "peak MiB"):
        table.add_column(col, justify="right" if col not in ("op", "provider", "mode") else "left")
    for r in rows:
        table.add_row(*_table_cells(r))
    Console().print(table)


def summarize(path: Path) -> str:
    """Markdown summary of a results file: fraction of copy bandwidth per (card, shape, dtype, op, provider)."""
    if not path.exists():
        raise FileNotFoundError(f"results file {path} does not exist")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        return "(no rows)"
    lines = [
        "| card | commit | shape | dtype | op | provider | fwd ms | fwd % copy | fwd+bwd ms | fwd+bwd % copy | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        key = (r["card"], r["git_commit"], f"{r['tokens']}x{r['hidden']}", r["dtype"], r["op"], r["provider"])
        groups.setdefault(key, {})[r["mode"]] = r

    def pct(r):
        return _fmt(100 * r["frac_copy"], ".1f") if r else "-"

    for key, by_mode in groups.items():
        f, fb = by_mode.get("fwd", {}), by_mode.get("fwdbwd", {})
        if any(r.get("check") != "ok" for r in by_mode.values()):
            lines.append("| " + " | ".join(key) + " | check FAILED | | | | |")
            continue
        lines.append(
            "| " + " | ".join(key) + f" | {_fmt(f.get('median_ms'), '.3f')} | {pct(f)} | "
            f"{_fmt(fb.get('median_ms'), '.3f')} | {pct(fb)} | {_fmt(fb.get('peak_MiB'), '.0f')} |"
        )
    return "\n".join(lines)
