"""The ``checkpoints/`` folder of a run: names, ``latest``, listing, finding, saving with either backend.

    RUN_DIR/checkpoints/step_00000100.pt          single-process run: one file (single_file.py)
    RUN_DIR/checkpoints/step_00000100.pt.sha256   its checksum (``sha256sum`` format)
    RUN_DIR/checkpoints/step_00000100/            multi-process run: one DCP folder (sharded.py), with its
                                                  checksums.json (integrity.py)
    RUN_DIR/checkpoints/latest                    text file naming the newest checkpoint

``latest`` is written last, after the checkpoint is complete; `keep` > 0 then deletes all but the
newest `keep` checkpoints (oldest first).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from polycom.errors import UserError
from polycom.train.checkpoint.single_file import checksum_path, write_checkpoint_file, write_synced
from polycom.utils.paths import existing_folder

__all__ = [
    "checkpoint_dir",
    "clean_stale_temp",
    "checkpoint_path",
    "find_checkpoint",
    "list_checkpoints",
    "save_checkpoint",
    "save_sharded_checkpoint",
]

_NAME = re.compile(r"^step_(\d{8})(\.pt)?$")  # .pt: single-process file; no suffix: DCP folder


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    """The single-file checkpoint of `step`; its DCP folder is the same name without ``.pt``."""
    return checkpoint_dir(run_dir) / f"step_{step:08d}.pt"


def _step_of(path: Path) -> int:
    return int(_NAME.match(path.name).group(1))


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoints of a run (files, or DCP folders of multi-process runs), oldest first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _NAME.match(p.name) and (p.is_dir() or p.suffix == ".pt")]
    return sorted(found, key=_step_of)


# Temp names of a save in progress: ``.step_N.pt.tmp`` / ``.step_N.pt.sha256.tmp`` / ``.latest.tmp`` (single
# file, write_synced), ``step_N.tmp/`` and ``.step_N.old/`` (DCP folder, replace_folder). After a crash they
# are garbage, never a checkpoint.
_TEMP = re.compile(r"^(\.step_\d{8}\.pt(\.sha256)?\.tmp|\.latest\.tmp|step_\d{8}\.tmp|\.step_\d{8}\.old)$")


def clean_stale_temp(run_dir: str | Path) -> list[Path]:
    """Remove the temp files / folders a crashed save left in ``checkpoints/``; returns what was removed."""
    folder = checkpoint_dir(run_dir)
    removed = [p for p in folder.iterdir() if _TEMP.match(p.name)] if folder.is_dir() else []
    for path in removed:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return removed


def _finish(run_dir: str | Path, final: Path, keep: int) -> None:
    """Point ``latest`` at `final`, then delete all but the newest `keep` checkpoints (0 = keep all)."""
    write_synced(checkpoint_dir(run_dir) / "latest", lambda fh: fh.write(final.name + "\n"), mode="w")
    if keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)
            checksum_path(old).unlink(missing_ok=True)


def save_checkpoint(run_dir: str | Path, step: int, state: dict[str, Any], *, keep: int = 0) -> Path:
    """Write `state` as the single-file checkpoint of `step` (atomic, with checksum); keep the newest `keep`."""
    final = write_checkpoint_file(checkpoint_path(run_dir, step), step, state)
    _finish(run_dir, final, keep)
    return final


def save_sharded_checkpoint(run_dir, step: int, model, optimizer, extra: dict, ctx, *, keep: int = 0) -> Path:
    """Multi-process runs: every rank saves its shards into the DCP folder of `step` (call on EVERY rank).

    The folder is written under a temporary name and renamed when complete (atomic); its checksums.json
    (size and sha256 of every file, written last) is verified whenever it is loaded.
    """
    from polycom.train.checkpoint.sharded import save_sharded

    final = checkpoint_path(run_dir, step).with_suffix("")
    save_sharded(final, model, optimizer, extra, ctx)
    if ctx.is_main:
        _finish(run_dir, final, keep)
    return final


def find_checkpoint(run_dir: str | Path, step: int | None = None) -> Path:
    """The checkpoint of `step`, or the latest; UserError naming the folder when there is none.

    The result is always inside ``checkpoints/`` (after resolving symlinks): a run folder from someone
    else cannot point ``latest`` (or a ``step_*`` symlink) at a file elsewhere on this machine.
    """
    run_dir = existing_folder(run_dir, "run folder")
    return _inside_checkpoints(run_dir, _find(run_dir, step))


def _find(run_dir: Path, step: int | None) -> Path:
    if step is not None:
        path = checkpoint_path(run_dir, step)
        if not path.is_file() and path.with_suffix("").is_dir():
            return path.with_suffix("")
        if not path.is_file():
            steps = [_step_of(p) for p in list_checkpoints(run_dir)]
            raise UserError(f"{run_dir} has no checkpoint for step {step} (available: {steps or 'none'})")
        return path
    latest = _named_by_latest(run_dir)
    if latest is not None:
        return latest
    found = list_checkpoints(run_dir)
    if not found:
        raise UserError(f"{run_dir} holds no checkpoint (expected {checkpoint_dir(run_dir)}/step_*.pt)")
    return found[-1]


def _named_by_latest(run_dir: Path) -> Path | None:
    """The checkpoint ``latest`` names (None without ``latest`` or when it is gone); only a bare step_* name."""
    latest = checkpoint_dir(run_dir) / "latest"
    if not latest.is_file():
        return None
    name = latest.read_text(encoding="utf-8", errors="replace").strip()
    if not _NAME.match(name):  # a path ("../../elsewhere", "/etc/x", "..") instead of a checkpoint name
        raise UserError(f"{latest} names {name[:80]!r}, not a checkpoint in {checkpoint_dir(run_dir)}; refusing it")
    path = checkpoint_dir(run_dir) / name
    return path if path.exists() else None


def _inside_checkpoints(run_dir: Path, path: Path) -> Path:
    root = checkpoint_dir(run_dir).resolve()
    if not path.resolve().is_relative_to(root):
        raise UserError(f"checkpoint {path} resolves to {path.resolve()}, outside {root}; refusing to load it")
    return path
