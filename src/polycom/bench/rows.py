"""Result rows of the benchmarks: provenance fields and the one writer (JSON lines + CSV, atomic appends).

Every row carries what produced it (`provenance_fields`): UTC date, card (GPU name or CPU model),
git commit and library versions, all flat so the CSV has one column each. `append_rows` appends the
rows to ``<name>.jsonl`` (every field) and, given CSV columns, to ``<name>.csv`` beside it (fixed
columns, header written once), each atomically through `polycom.utils.atomic.append_lines`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from polycom.utils.atomic import append_lines, to_jsonable
from polycom.utils.provenance import git_commit, utc_now, versions

PROVENANCE_FIELDS = ("date", "card", "git_commit", "python", "polycom", "torch", "cuda", "numpy", "triton")


def card_name(device: str | torch.device) -> str:
    """The GPU's name on CUDA; on CPU "CPU <model name> (<cores> cores, <threads> threads)"."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:  # not Linux: keep platform's name
        pass
    return f"CPU {cpu} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def provenance_fields(device: str | torch.device, commit: str | None = None, *extra_modules: str) -> dict[str, Any]:
    """date, card, git_commit (`commit` when given, e.g. for a tree copied without .git), versions."""
    return {
        "date": utc_now(),
        "card": card_name(device),
        "git_commit": commit or git_commit() or "unknown",
        **versions(*extra_modules),
    }


def _csv_cell(value: Any) -> Any:
    return json.dumps(to_jsonable(value), sort_keys=True) if isinstance(value, (dict, list, tuple)) else value


def append_rows(jsonl_path: str | os.PathLike, rows: Sequence[dict[str, Any]], csv_fields: Sequence[str] = ()) -> None:
    """Append `rows` to `jsonl_path` and, when `csv_fields` are given, to the .csv of the same name."""
    jsonl_path = Path(jsonl_path)
    append_lines(jsonl_path, (json.dumps(to_jsonable(r), sort_keys=True, default=str) for r in rows))
    if not csv_fields:
        return
    csv_path = jsonl_path.with_suffix(".csv")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(csv_fields), extrasaction="ignore", lineterminator="\n")
    if not csv_path.exists():
        writer.writeheader()
    writer.writerows({k: _csv_cell(v) for k, v in r.items()} for r in rows)
    append_lines(csv_path, buf.getvalue().splitlines())
