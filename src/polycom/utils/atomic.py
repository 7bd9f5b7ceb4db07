"""Atomic writes: every report, config and export is written next to its destination, then moved
into place with `os.replace`, so an interrupted run never leaves a half-written file or folder and
never loses what was there before.

Durable too: the temp file is fsynced before the rename and the folder after it (`fsync_folder`), so
after a power loss or kernel crash the destination holds the old or the new content, never an empty
or partial file (without the fsyncs a file system may commit the rename before the data).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "append_lines",
    "current_umask",
    "fsync_file",
    "fsync_folder",
    "replace_folder",
    "save_figure",
    "temp_folder_beside",
    "to_jsonable",
    "write_json",
    "write_text",
]


def current_umask() -> int:
    """The process umask (read by setting and restoring it; os has no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temp_beside(path: Path) -> tuple[int, str]:
    """A temp file beside `path` with the mode a plain ``open(path, "w")`` would give (0666 & ~umask).

    mkstemp creates 0600 files, and os.replace keeps that mode: reports would be private while the
    rest of the run folder follows the user's umask like every other tool.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~current_umask())
    return fd, tmp


@contextmanager
def _replacing(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (fd, name) of a temp file beside `path` to fill and fsync; a clean exit moves it over `path`
    (and fsyncs the folder), an error removes it and leaves `path` as it was."""
    fd, tmp = _temp_beside(path)
    try:
        yield fd, tmp
        os.replace(tmp, path)
        fsync_folder(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a written file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename or a new file in it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # e.g. Windows: folders cannot be opened, and NTFS journals renames itself
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems (network, FUSE) refuse fsync on a folder: nothing more to do
        pass
    finally:
        os.close(fd)


def temp_folder_beside(out: Path) -> Path:
    """A temp folder beside `out` (to fill, then `replace_folder`) with mode 0777 & ~umask, not mkdtemp's 0700."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    os.chmod(tmp, 0o777 & ~current_umask())
    return tmp


def to_jsonable(obj):
    """Replace non-finite floats by None (strict JSON) and convert tuples / 0-d numpy or torch scalars."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; returns the path."""
    path = Path(path)
    with _replacing(path) as (fd, _), os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    return path


def append_lines(path: str | os.PathLike, lines: Iterable[str]) -> Path:
    """Append `lines` (each gets a final newline) to a line-oriented file (JSON lines, CSV) atomically.

    The old content plus the new lines go to a temp file beside `path`, then `os.replace`: a reader never
    sees a half-written row and an interrupted append keeps the old rows. A missing final newline of the old
    content is added first, so the first new row never joins the last old one.
    """
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    return write_text(path, old + "".join(line.rstrip("\n") + "\n" for line in lines))


def write_json(path: str | os.PathLike, obj) -> Path:
    """Strict JSON (NaN/inf -> null; paths and other objects by str), indented, written atomically."""
    return write_text(path, json.dumps(to_jsonable(obj), indent=2, allow_nan=False, default=str) + "\n")


def save_figure(fig, path: str | os.PathLike, dpi: int = 130, **savefig_kwargs) -> Path:
    """Save a matplotlib figure atomically (format from the suffix) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    savefig_kwargs.setdefault("bbox_inches", "tight")
    try:
        with _replacing(path) as (fd, tmp):
            os.close(fd)
            fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png", **savefig_kwargs)
            fsync_file(tmp)
    finally:
        plt.close(fig)
    return path


def replace_folder(tmp: Path, out: Path) -> Path:
    """Move the finished folder `tmp` to `out`, replacing an existing `out` only once `tmp` is complete.

    The files of `tmp` and `tmp` itself are fsynced first, the parent after the move.
    """
    for file in Path(tmp).rglob("*"):
        if file.is_file() and not file.is_symlink():
            fsync_file(file)
    fsync_folder(tmp)
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    fsync_folder(out.parent)
    return out
