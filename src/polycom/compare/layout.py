"""The output folder of a comparison: names of its parts, and the rules for reusing a folder.

OUT/compare.json      what was asked (written first; marks the folder as a comparison)
OUT/data/             the prepared token shards (unless --data names a prepared folder)
OUT/runs/<arm>-s<i>/  each run's folder (config.json, run.json, metrics.jsonl, checkpoints/, tokenizer/)
OUT/results.json      numbers per activation (written last: marks the comparison as finished)
OUT/report.md, OUT/loss.png
"""

from __future__ import annotations

import shutil
from pathlib import Path

from polycom.errors import UserError

COMPARE_FILE = "compare.json"
RESULTS_FILE = "results.json"
DATA_FOLDER = "data"
RUNS_FOLDER = "runs"
# Everything a comparison writes into OUT (what --overwrite removes).
OUTPUTS = (RUNS_FOLDER, DATA_FOLDER, RESULTS_FILE, "report.md", "loss.png", COMPARE_FILE)


def run_name(activation: str, seed: int) -> str:
    """Folder name of one run under OUT/runs: the arm label with ':' -> '-', e.g. ``polynorm-s0``,
    ``polynorm-order=2-s1``."""
    return f"{activation.replace(':', '-')}-s{seed}"


def run_dir(out: Path, activation: str, seed: int) -> Path:
    return out / RUNS_FOLDER / run_name(activation, seed)


def prepare_output_folder(out: str | Path, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Create or check OUT; refuse a finished comparison unless `overwrite` / `resume`.

    A non-empty folder that is not a comparison (no compare.json, no results.json) is never overwritten.
    """
    out = Path(out).expanduser()
    if overwrite and resume:
        raise UserError("--overwrite and --resume exclude each other")
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} exists and is not a folder")
    finished = (out / RESULTS_FILE).exists()
    started = (out / COMPARE_FILE).exists()
    if out.exists() and any(out.iterdir()):
        if overwrite:
            if not started and not finished:
                raise UserError(f"{out} is not empty and is not a comparison folder; refusing to overwrite it")
            _remove_outputs(out)
        elif resume:
            if not started:
                raise UserError(f"cannot resume: {out} holds no comparison (no {COMPARE_FILE})")
        elif finished:
            raise UserError(
                f"{out} already holds a finished comparison ({RESULTS_FILE}); pass --overwrite to redo it, "
                "--resume to reuse its runs, or choose another --out"
            )
        elif started:
            raise UserError(f"{out} holds an unfinished comparison; pass --resume to continue it or --overwrite")
        else:
            raise UserError(f"output folder {out} is not empty; choose a new --out")
    elif resume:
        raise UserError(f"cannot resume: {out} holds no comparison")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _remove_outputs(out: Path) -> None:
    for name in OUTPUTS:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def run_finished(run_dir: Path, steps: int) -> bool:
    """True when the run logged its final validation loss at `steps` and saved a checkpoint."""
    from polycom.train.checkpoint import list_checkpoints
    from polycom.train.metrics import read_metrics

    records = read_metrics(run_dir / "metrics.jsonl")
    done = any(r.get("step") == steps and "val_loss" in r for r in records)
    return done and bool(list_checkpoints(run_dir))
