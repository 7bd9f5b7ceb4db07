"""Checkpoints of a run folder: atomic single files with a sha256 checksum, and `load_run_model`.

Layout: ``RUN_DIR/checkpoints/step_00000100.pt`` + ``step_00000100.pt.sha256`` (``sha256sum`` format) and
``RUN_DIR/checkpoints/latest`` (a text file naming the newest checkpoint). A checkpoint is written to a
temporary file in the same folder, hashed, and only then renamed into place (os.replace is atomic), the
checksum file after it and ``latest`` last; so a crash leaves either the old state or the new one, never a
half-written file under a checkpoint name. Loading verifies the checksum first: a corrupt or truncated file
is refused with a UserError and nothing is read from it.

The checkpoint is a dict: format, version, step, model, optimizer, scheduler, rng, data (position), config.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from polycom.errors import UserError

FORMAT = "polycom-checkpoint"
VERSION = 1
_NAME = re.compile(r"^step_(\d{8})(\.pt)?$")  # .pt: single-process file; no suffix: DCP folder


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step_{step:08d}.pt"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_checkpoint(run_dir: str | Path, step: int, state: dict[str, Any], *, keep: int = 0) -> Path:
    """Write `state` as the checkpoint of `step` (atomic, with checksum); keep the newest `keep` (0 = all)."""
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(run_dir, step)
    tmp = folder / f".{final.name}.tmp"
    payload = {"format": FORMAT, "version": VERSION, "step": step, **state}
    with tmp.open("wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())
    digest = sha256_file(tmp)
    os.replace(tmp, final)
    _atomic_text(final.with_name(final.name + ".sha256"), f"{digest}  {final.name}\n")
    _atomic_text(folder / "latest", final.name + "\n")
    if keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            old.unlink(missing_ok=True)
            old.with_name(old.name + ".sha256").unlink(missing_ok=True)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoints of a run (files, or DCP folders of multi-process runs), oldest first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _NAME.match(p.name) and (p.is_dir() or p.suffix == ".pt")]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def save_dcp_checkpoint(run_dir, step: int, model, optimizer, extra: dict, ctx, *, keep: int = 0) -> Path:
    """Multi-process runs: every rank saves its shards with polycom.distributed.checkpoint (a folder).

    The folder is written under a temporary name and renamed when complete (atomic); DCP folders carry
    no sha256 file (each rank writes its own shard files).
    """
    from polycom.distributed.checkpoint import save_checkpoint as dcp_save

    final = checkpoint_dir(run_dir) / f"step_{step:08d}"
    dcp_save(final, model, optimizer, extra, ctx)
    if ctx.is_main:
        _atomic_text(checkpoint_dir(run_dir) / "latest", final.name + "\n")
        if keep > 0:
            import shutil

            for old in list_checkpoints(run_dir)[:-keep]:
                shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)
                old.with_name(old.name + ".sha256").unlink(missing_ok=True)
    return final


def find_checkpoint(run_dir: str | Path, step: int | None = None) -> Path:
    """The checkpoint of `step`, or the latest; UserError naming the folder when there is none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} not found")
    if step is not None:
        path = checkpoint_path(run_dir, step)
        if not path.is_file() and path.with_suffix("").is_dir():
            return path.with_suffix("")
        if not path.is_file():
            steps = [int(_NAME.match(p.name).group(1)) for p in list_checkpoints(run_dir)]
            raise UserError(f"{run_dir} has no checkpoint for step {step} (available: {steps or 'none'})")
        return path
    latest = checkpoint_dir(run_dir) / "latest"
    if latest.is_file():
        path = checkpoint_dir(run_dir) / latest.read_text().strip()
        if path.exists():
            return path
    found = list_checkpoints(run_dir)
    if not found:
        raise UserError(f"{run_dir} holds no checkpoint (expected {checkpoint_dir(run_dir)}/step_*.pt)")
    return found[-1]


def verify_checkpoint(path: str | Path) -> None:
    """Compare the file's sha256 with its .sha256 file; UserError on mismatch or a missing checksum."""
    path = Path(path)
    sums = path.with_name(path.name + ".sha256")
    if not sums.is_file():
        raise UserError(f"checkpoint {path} has no checksum file {sums.name}; refusing to load it")
    expected = sums.read_text().split()[0] if sums.read_text().split() else ""
    actual = sha256_file(path)
    if actual != expected:
        raise UserError(
            f"checkpoint {path} is corrupt or truncated: sha256 checksum mismatch "
            f"(expected {expected[:16]}..., file has {actual[:16]}...)"
        )


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Verify the checksum, then load the checkpoint dict (tensors only: weights_only=True)."""
    path = Path(path)
    verify_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise UserError(f"checkpoint {path} could not be read: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not a polycom checkpoint")
    if state.get("version") != VERSION:
        raise UserError(f"checkpoint {path} has version {state.get('version')}; this polycom reads {VERSION}")
    return state


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a polycom run folder (no config.json)")
    return json.loads(path.read_text())


def load_run_model(run_dir: str | Path, device: str | torch.device = "cpu", step: int | None = None):
    """(model, model_config, tokenizer) of a run folder, from its latest checkpoint (or `step`), in eval mode."""
    from polycom.data.tokenizers import load_tokenizer
    from polycom.models import ModelConfig, build_model

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    path = find_checkpoint(run_dir, step)
    model_config = ModelConfig.from_dict(config["model"])
    model = build_model(model_config)
    if path.is_dir():  # DCP folder of a multi-process run: DCP reshards it onto this single process
        from polycom.distributed.checkpoint import load_checkpoint as dcp_load
        from polycom.distributed.runtime import DistContext

        dcp_load(path, model, None, DistContext())
    else:
        model.load_state_dict(load_checkpoint(path, map_location="cpu")["model"])
    model.to(device).eval()
    tok_dir = run_dir / "tokenizer"
    tokenizer = load_tokenizer(tok_dir if tok_dir.is_dir() else "byte")
    return model, model_config, tokenizer
