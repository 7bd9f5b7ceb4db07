"""Single-file checkpoints (one process): one ``torch.save`` dict with a sha256 checksum beside it.

    write_checkpoint_file(path, step, state)   # .path.tmp -> fsync -> rename; then path.sha256 (same way)
    state = load_checkpoint(path)              # checksum verified first, then torch.load(weights_only=True)

The file is written under a temporary name in the same folder, fsynced and only then renamed into
place (os.replace is atomic); its checksum file (``sha256sum`` format) follows it, written the same way. A crash leaves
either the old state or the new one, never a half-written file under a checkpoint name. Loading
verifies the checksum first: a corrupt or truncated file is refused with a UserError and nothing is
read from it.

The checkpoint is a dict: format, version, step, model, optimizer, scheduler, rng, data (position),
config, val_loss.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from polycom.errors import UserError
from polycom.utils.atomic import fsync_folder

__all__ = [
    "FORMAT",
    "VERSION",
    "checksum_path",
    "load_checkpoint",
    "sha256_file",
    "verify_checkpoint",
    "write_checkpoint_file",
    "write_synced",
]

FORMAT = "polycom-checkpoint"
VERSION = 1


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def checksum_path(path: str | Path) -> Path:
    """``step_XXXXXXXX.pt`` -> ``step_XXXXXXXX.pt.sha256``."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def write_synced(path: Path, write: Callable[[IO], None], mode: str = "wb") -> Path:
    """Atomic and durable: `write(fh)` into a temporary file beside `path`, fsync, rename onto `path`, fsync the folder."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open(mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:  # disk full, Ctrl-C, ...: no half-written temp file left behind
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)
    return path


def write_checkpoint_file(path: str | Path, step: int, state: dict[str, Any]) -> Path:
    """Write ``{format, version, step, **state}`` to `path` (atomic), then its sha256 file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, "step": step, **state}
    write_synced(path, lambda fh: torch.save(payload, fh))
    digest = sha256_file(path)
    write_synced(checksum_path(path), lambda fh: fh.write(f"{digest}  {path.name}\n"), mode="w")
    return path


def verify_checkpoint(path: str | Path) -> None:
    """Compare the file's sha256 with its .sha256 file; UserError on mismatch or a missing checksum."""
    path = Path(path)
    sums = checksum_path(path)
    if not sums.is_file():
        raise UserError(f"checkpoint {path} has no checksum file {sums.name}; refusing to load it")
    fields = sums.read_text().split()
    expected = fields[0] if fields else ""
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
