"""Analysis outputs: atomic writes (from `polycom.utils.atomic`) and the provenance header."""

from __future__ import annotations

import datetime as _dt
import platform
import subprocess
from pathlib import Path

from polycom.utils.atomic import save_figure, to_jsonable, write_json, write_text

__all__ = ["write_json", "write_text", "save_figure", "provenance", "to_jsonable"]


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def provenance() -> dict:
    """Who/what/when: versions, git commit, host, UTC time (stored in every JSON report)."""
    import numpy
    import torch

    from polycom import __version__

    return {
        "polycom": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "git_commit": _git_commit(),
        "host": platform.node(),
        "cpu_threads": torch.get_num_threads(),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
