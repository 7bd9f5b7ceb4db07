"""One wording for "this path should be a folder": says whether it does not exist or is a file."""

from __future__ import annotations

import os
from pathlib import Path

from polycom.errors import UserError


def existing_folder(path: str | os.PathLike, what: str = "run folder") -> Path:
    """`path` as a Path when it is a folder; else a UserError saying it does not exist or is a file.

    what: the kind of folder expected, used in the message ("run folder", "data folder", ...).
    """
    folder = Path(path).expanduser()
    if not folder.exists():
        raise UserError(f"{what} {folder} does not exist")
    if not folder.is_dir():
        raise UserError(f"{folder} is a file, not a {what}")
    return folder
