"""Atomic writes: every report, config and export is written next to its destination, then moved
into place with `os.replace`, so an interrupted run never leaves a half-written file or folder and
never loses what was there before.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

__all__ = ["append_lines", "replace_folder", "save_figure", "to_jsonable", "write_json", "write_text"]


def _temp_beside(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")


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
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
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
    fd, tmp = _temp_beside(path)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png", **savefig_kwargs)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        plt.close(fig)
    return path


def replace_folder(tmp: Path, out: Path) -> Path:
    """Move the finished folder `tmp` to `out`, replacing an existing `out` only once `tmp` is complete."""
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    return out
