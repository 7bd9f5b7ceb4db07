"""What ``--overwrite`` may replace: only an output polycom wrote earlier, never a user's folder or file.

    check_overwritable(out, overwrite=args.overwrite)   # before any work; raises when `out` must be kept
    mark_output(tmp_folder, "polycom export")           # into the finished folder, before it is moved to `out`

A folder polycom writes as a whole (``polycom export --run``, ``polycom convert``) holds the marker file
``.polycom_output.json``; ``--overwrite`` replaces an existing folder only when it holds that marker or
is empty. A single file (``polycom export --checkpoint`` writes one ``.safetensors``) is replaced only
when it is a safetensors file whose metadata has ``polycom_source``, as the ones polycom writes do.
Anything else is refused with a UserError saying why, so a mistyped ``--out`` cannot delete someone's work.
Folders exported before the marker existed are refused too: delete them by hand once.
"""

from __future__ import annotations

from pathlib import Path

from polycom.errors import UserError
from polycom.utils.atomic import write_json

__all__ = ["MARKER_FILE", "check_overwritable", "mark_output"]

MARKER_FILE = ".polycom_output.json"


def mark_output(folder: str | Path, written_by: str) -> Path:
    """Write the marker that lets a later ``--overwrite`` replace `folder` (call on the finished temp folder)."""
    return write_json(
        Path(folder) / MARKER_FILE,
        {"written_by": written_by, "meaning": "polycom --overwrite may replace this folder; nothing else may"},
    )


def _polycom_safetensors(path: Path) -> bool:
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as fh:
            return "polycom_source" in (fh.metadata() or {})
    except Exception:  # not a safetensors file (any parse error): not ours
        return False


def check_overwritable(out: str | Path, *, overwrite: bool) -> None:
    """Raise unless writing `out` loses nothing but an earlier polycom output (see module docstring).

    FileExistsError when `out` exists and `overwrite` is false; UserError when `overwrite` is given but
    `out` is not something polycom wrote.
    """
    out = Path(out).expanduser()
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite (overwrite=True) to replace it")
    if out.is_symlink():
        raise UserError(f"refusing to overwrite {out}: it is a symbolic link; remove it yourself if it may go")
    if out.is_dir():
        if (out / MARKER_FILE).is_file() or not any(out.iterdir()):
            return
        raise UserError(
            f"refusing to overwrite {out}: it is not a folder polycom wrote (no {MARKER_FILE}), so --overwrite "
            "would delete someone's files; choose another --out, or remove the folder yourself if it may go"
        )
    if out.suffix == ".safetensors" and _polycom_safetensors(out):
        return
    raise UserError(
        f"refusing to overwrite {out}: it is not a file polycom wrote (a .safetensors with polycom_source "
        "metadata); choose another --out, or remove the file yourself if it may go"
    )
