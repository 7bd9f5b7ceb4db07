"""`polycom compare` (default) with two polycom source trees, interleaved, cold and warm Inductor cache.

Usage: python benchmarks/compare_compile_policy.py --before SRC --after SRC --order bc,ac,aw,bw,bw,aw

Each run is a fresh ``python -m polycom compare`` process with ``PYTHONPATH=<tree>/src`` (the tree's
polycom wins over the installed one), POLYCOM_CPU_COMPILE unset, ``TORCHINDUCTOR_CACHE_DIR`` the tree's
folder under ``--work``, emptied first for a cold run (``c``) and kept for a warm one (``w``; a later
invocation with the same ``--work`` continues). Rows (wall time,
final validation losses to 3 decimals, the 1-minute load average before and after, the tree's commit)
go to ``benchmarks/results/compare_compile_policy.jsonl`` and ``.csv`` through `polycom.bench.rows`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from polycom.bench.rows import append_rows, provenance_fields

CSV_FIELDS = [
    "date", "card", "git_commit", "torch", "tree", "cache", "wall_s", "load_before", "load_after", "table",
]  # fmt: skip


def _load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def _commit(src: Path) -> str:
    done = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def run_once(src: Path, cache_dir: Path, out: Path) -> tuple[float, dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if k != "POLYCOM_CPU_COMPILE"}
    env.update(PYTHONPATH=str(src / "src"), TORCHINDUCTOR_CACHE_DIR=str(cache_dir))
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "polycom", "compare", "--no-progress", "--out", str(out)]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, cwd=out.parent)
    wall = time.perf_counter() - start
    results = json.loads((out / "results.json").read_text())["results"]
    table = {a: f"{r['initial_val_loss']['mean']:.3f} -> {r['final_val_loss']['mean']:.3f}" for a, r in results.items()}
    return wall, table


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", required=True, type=Path)
    parser.add_argument("--after", required=True, type=Path)
    parser.add_argument("--order", default="bc,ac,aw,bw,bw,aw")
    parser.add_argument("--out", default="benchmarks/results/compare_compile_policy.jsonl", type=Path)
    parser.add_argument("--work", default=None, type=Path, help="cache and run folders (default: a new temp folder)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="compare-policy-"))
    for item in args.order.split(","):
        tree, cache = {"b": "before", "a": "after"}[item[0]], {"c": "cold", "w": "warm"}[item[1]]
        src = args.before if tree == "before" else args.after
        cache_dir = work / f"inductor-{tree}"
        if cache == "cold":
            shutil.rmtree(cache_dir, ignore_errors=True)
        run_dir = Path(tempfile.mkdtemp(prefix=f"{item}-", dir=work))
        load_before = _load()
        wall, table = run_once(src, cache_dir, run_dir / "out")
        row = {
            **provenance_fields("cpu", _commit(src)),
            "tree": tree,
            "cache": cache,
            "wall_s": round(wall, 1),
            "load_before": load_before,
            "load_after": _load(),
            "table": table,
        }
        append_rows(args.out.resolve(), [row], CSV_FIELDS)
        print(json.dumps({k: row[k] for k in ("tree", "cache", "wall_s", "load_before", "load_after", "table")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
