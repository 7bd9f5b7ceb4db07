"""Output of `polycom bench ops`: CSV columns, the console table and the Markdown summary of a results file."""

from __future__ import annotations

import json
from pathlib import Path

from polycom.utils.terminal import fits_terminal

CSV_FIELDS = [
    "date", "card", "torch", "triton", "cuda", "liger_kernel", "git_commit",
    "op", "provider", "tokens", "hidden", "dtype", "order", "mode", "check",
    "median_ms", "p20_ms", "p80_ms", "min_bytes", "GBps", "copy_GBps", "frac_copy",
    "peak_MiB", "fwd_kept_MiB", "max_rel_err", "check_detail", "kernel_variant", "tiling",
]  # fmt: skip


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


# (header, right-aligned, cell of a row whose check passed); the compact form keeps the COMPACT ones
_COLUMNS = {
    "shape": ("shape", False, lambda r: f"{r['tokens']}x{r['hidden']}"),
    "dtype": ("dtype", False, lambda r: r["dtype"]),
    "op": ("op", False, lambda r: r["op"]),
    "provider": ("provider", False, lambda r: r["provider"]),
    "mode": ("mode", False, lambda r: r["mode"]),
    "median": ("median ms", True, lambda r: _fmt(r["median_ms"], ".3f")),
    "p20": ("p20", True, lambda r: _fmt(r["p20_ms"], ".3f")),
    "p80": ("p80", True, lambda r: _fmt(r["p80_ms"], ".3f")),
    "GBps": ("GB/s", True, lambda r: _fmt(r["GBps"], ".0f")),
    "copy": ("% copy", True, lambda r: _fmt(100 * r["frac_copy"], ".1f")),
    "peak": ("peak MiB", True, lambda r: _fmt(r.get("peak_MiB"), ".0f")),
}
_COMPACT = ("shape", "dtype", "op", "provider", "mode", "median", "GBps", "copy", "peak")
_COMPACT_HEADERS = {"median": "ms", "copy": "%copy", "peak": "MiB"}
_FIRST_MEASURED = "median"  # a failed check fills this column with "check FAILED" / "check ERROR"


def table_lines(rows: list[dict], compact: bool = False) -> list[str]:
    """The console table of `rows` as aligned plain-text lines (nothing wrapped or cut short).

    Full: shape, dtype, op, provider, mode, median / p20 / p80 ms, GB/s, % of the copy bandwidth, peak MiB.
    Compact (about 75 columns): without p20 / p80, shorter headers.
    """
    keys = _COMPACT if compact else tuple(_COLUMNS)
    headers = [(_COMPACT_HEADERS.get(k) if compact else None) or _COLUMNS[k][0] for k in keys]
    body = [_cells(r, keys) for r in rows]
    # a failed row's "check FAILED" runs on from the first measured column without widening it
    widths = [len(h) for h in headers]
    for cells in body:
        sized = cells if len(cells) == len(keys) else cells[:-1]
        for i, cell in enumerate(sized):
            widths[i] = max(widths[i], len(cell))
    right = [_COLUMNS[k][1] for k in keys]

    def line(cells: list[str]) -> str:
        padded = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)]  # a failed row stops early
        return "  ".join(padded).rstrip()

    return [line(headers), *(line(cells) for cells in body)]


def _cells(r: dict, keys: tuple[str, ...]) -> list[str]:
    if r["check"] == "ok":
        return [_COLUMNS[k][2](r) for k in keys]
    first = keys.index(_FIRST_MEASURED)
    return [*(_COLUMNS[k][2](r) for k in keys[:first]), f"check {r['check']}"]


def print_table(rows: list[dict]) -> None:
    """The full table where it fits the terminal; else (narrow terminal, pipe) the compact one.

    Every measured field (p20 / p80 included) is in the rows appended to ops.jsonl / ops.csv.
    """
    full = table_lines(rows)
    if fits_terminal(full):
        print("\n".join(full))
        return
    print("\n".join(table_lines(rows, compact=True)))
    print("(compact view: ms is the median; p20 / p80 are in ops.jsonl / ops.csv)")


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
