"""The files of a run folder besides checkpoints and metrics: config.json, run.json, tokenizer/.

A new run refuses a folder that already holds a run or any other files, and a folder it cannot write;
a resumed run appends a "resumed" entry to run.json instead of rewriting its header.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from polycom.data.shards import TokenShards
from polycom.errors import UserError
from polycom.train.checkpoint import read_run_config
from polycom.train.config import TrainConfig
from polycom.train.metrics import read_metrics
from polycom.train.run_header import run_header
from polycom.utils.atomic import write_json


def prepare_run_dir(run_dir: Path, resume: bool) -> None:
    """UserError when resuming a missing folder, starting a new run in a folder that holds one or holds
    anything else (never write into an unrelated folder), or when the folder cannot be written."""
    if resume:
        if not run_dir.is_dir():
            raise UserError(f"cannot resume: run folder {run_dir} not found")
    elif run_dir.exists() and ((run_dir / "config.json").exists() or (run_dir / "checkpoints").exists()):
        raise UserError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --out")
    elif run_dir.is_dir() and any(run_dir.iterdir()):
        names = sorted(p.name for p in run_dir.iterdir())
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise UserError(f"{run_dir} is not empty ({shown}) and is not a polycom run; choose a new or empty --out")
    existing = next(p for p in (run_dir.absolute(), *run_dir.absolute().parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):  # the folder itself, or where it would be created
        raise UserError(f"could not write the run folder {run_dir}: {existing} is not writable; choose another --out")


def write_run_files(
    cfg: TrainConfig, run_dir: Path, shards: TokenShards, n_params: int, start: int, resumed: bool
) -> None:
    """config.json, tokenizer/ (once) and run.json (new header, or a "resumed" entry appended)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "tokenizer").is_dir():
        shards.tokenizer().save(run_dir / "tokenizer")
    write_json(run_dir / "config.json", cfg.to_dict())
    header_path = run_dir / "run.json"
    if resumed and header_path.exists():
        header = json.loads(header_path.read_text())
        header.setdefault("resumed", []).append({"from_step": start, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ")})
    else:
        header = run_header(
            cfg.to_dict(),
            {"num_parameters": n_params, "data": {"folder": str(shards.folder), **shards.meta}},
        )
    write_json(header_path, header)


def initial_val_from_metrics(run_dir: Path) -> float | None:
    """The step-0 validation loss recorded in metrics.jsonl (None when absent)."""
    for record in read_metrics(run_dir / "metrics.jsonl"):
        if record.get("step") == 0 and "val_loss" in record:
            return record["val_loss"]
    return None


def load_resume_config(run_dir: str | Path) -> TrainConfig:
    """The TrainConfig saved in a run folder (for --resume)."""
    return TrainConfig.from_dict(read_run_config(run_dir))
