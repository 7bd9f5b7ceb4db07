"""Checksums of a sharded (DCP) checkpoint folder: written after the save, verified before a load.

    write_checksums(TMP, ctx)     # every rank, once all files of the folder are written; rank 0 writes the file
    verify_checksums(CKPT, ctx)   # every rank, before DCP reads anything; UserError on every rank on damage

``checksums.json``:

    {"format": "polycom-checksums-1",
     "files": {".metadata": {"bytes": 1234, "sha256": "..."}, "__0_0.distcp": {...}, ...}}

It lists every regular file of the folder (itself excepted) and is written atomically, after all of them:
a folder whose ``checksums.json`` exists was complete when it was written. A file is checked for its size
first (a truncated shard is named as truncated without hashing it), then its sha256. Files the list does not
name are ignored: DCP reads only the shards named by ``.metadata``, which is itself listed.

The hashing is shared: with N ranks, rank r hashes files r, r + N, ... (sorted by name) and the results are
gathered, so a large checkpoint costs each rank 1/N of the reading, as the single-file checkpoint's
one checksum costs its one process. A multi-node run needs a shared filesystem (as DCP itself does).

A folder without ``checksums.json`` (written before polycom checked sharded checkpoints) is loaded
with a one-line `UnverifiedCheckpointWarning` from rank 0.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch.distributed as dist

from polycom.errors import UserError
from polycom.train.checkpoint.single_file import sha256_file, write_synced

__all__ = ["CHECKSUMS_FILE", "CHECKSUMS_FORMAT", "UnverifiedCheckpointWarning", "verify_checksums", "write_checksums"]

CHECKSUMS_FILE = "checksums.json"
CHECKSUMS_FORMAT = "polycom-checksums-1"


class UnverifiedCheckpointWarning(UserWarning):
    """A sharded checkpoint without ``checksums.json`` was loaded without verifying its files."""


def _gather(local: list, ctx) -> list:
    """Every rank's `local` list, concatenated (the local list alone without a process group)."""
    if not (ctx.distributed and dist.is_available() and dist.is_initialized()):
        return list(local)
    parts: list = [None] * ctx.world_size
    dist.all_gather_object(parts, local)
    return [item for part in parts for item in part]


def _my_share(names: list[str], ctx) -> list[str]:
    return names[ctx.rank :: ctx.world_size] if ctx.distributed else names


def write_checksums(folder: Path, ctx) -> Path:
    """Hash every file of `folder` (shared among the ranks) and write ``checksums.json`` from rank 0.

    Call on EVERY rank after all of them finished writing into `folder` (a barrier before this call).
    """
    folder = Path(folder)
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != CHECKSUMS_FILE)
    local = [(name, (folder / name).stat().st_size, sha256_file(folder / name)) for name in _my_share(names, ctx)]
    entries = _gather(local, ctx)
    path = folder / CHECKSUMS_FILE
    if ctx.is_main:
        files = {name: {"bytes": size, "sha256": digest} for name, size, digest in sorted(entries)}
        text = json.dumps({"format": CHECKSUMS_FORMAT, "files": files}, indent=1) + "\n"
        write_synced(path, lambda fh: fh.write(text), mode="w")
    return path


def _read_checksums(folder: Path) -> dict[str, dict] | None:
    """The ``files`` table of ``checksums.json``; None without the file; UserError when it is unreadable."""
    path = folder / CHECKSUMS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is unreadable ({exc}); the checkpoint cannot be verified") from None
    if not isinstance(data, dict) or data.get("format") != CHECKSUMS_FORMAT or not isinstance(data.get("files"), dict):
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise UserError(f"{path}: format {found!r}, expected {CHECKSUMS_FORMAT!r}")
    return data["files"]


def _problem(folder: Path, name: str, entry: dict) -> str | None:
    """What is wrong with file `name` of `folder` against its entry (None when it matches)."""
    path = folder / name
    if not path.is_file():
        return f"{path} is missing"
    size, expected = path.stat().st_size, int(entry.get("bytes", -1))
    if size < expected:
        return f"{path} is truncated: {size} of {expected} bytes"
    if size != expected:
        return f"{path} has {size} bytes, expected {expected}"
    digest = sha256_file(path)
    if digest != entry.get("sha256"):
        return f"{path} is corrupt: sha256 mismatch (expected {str(entry.get('sha256'))[:16]}..., file has {digest[:16]}...)"
    return None


def verify_checksums(folder: Path, ctx) -> None:
    """Check every file ``checksums.json`` lists (shared among the ranks); UserError on every rank on damage.

    Call on EVERY rank (a collective under torchrun). Without ``checksums.json``: a warning from rank 0.
    """
    folder = Path(folder)
    files = _read_checksums(folder)
    if files is None:
        if ctx.is_main:
            warnings.warn(
                f"checkpoint {folder} has no checksums ({CHECKSUMS_FILE}; saved by an older polycom): "
                "its files are loaded unverified",
                UnverifiedCheckpointWarning,
                stacklevel=3,
            )
        return
    local = [p for name in _my_share(sorted(files), ctx) if (p := _problem(folder, name, files[name]))]
    problems = sorted(_gather(local, ctx))
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise UserError(
            f"checkpoint {folder} is damaged, refusing to load it: {'; '.join(problems[:3])}{more}; "
            "resume from an older kept checkpoint (--resume-step N) or copy the folder again"
        )
