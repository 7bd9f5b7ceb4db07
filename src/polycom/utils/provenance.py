"""What produced a result: git commit, library versions, hardware, UTC time.

Run headers (`run.json`), benchmark rows, eval and analysis reports all record these, through the
functions here, so every artefact can be traced to the code and machine that made it.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

_SOURCE_DIR = Path(__file__).resolve().parent


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """HEAD of the checkout holding `cwd` (default: polycom's source), "-dirty" when tracked files changed;
    None outside a git checkout (e.g. an installed wheel or a copied tree)."""
    where = Path(cwd) if cwd is not None else _SOURCE_DIR
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def module_version(name: str) -> str | None:
    """`name.__version__`, or None when the module is missing (never raises)."""
    try:
        return __import__(name).__version__
    except Exception:  # not installed, or broken in this environment
        return None


def versions(*extra_modules: str) -> dict[str, str | None]:
    """Python, polycom, torch, CUDA, numpy, triton (+ `extra_modules`) versions."""
    out: dict[str, str | None] = {
        "python": platform.python_version(),
        "polycom": module_version("polycom"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "numpy": module_version("numpy"),
        "triton": module_version("triton"),
    }
    for name in extra_modules:
        out[name] = module_version(name)
    return out


def hardware() -> dict[str, Any]:
    """Platform, CPU, thread count and GPU names."""
    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    return {
        "platform": platform.platform(),
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpus": gpus,
    }


def utc_now() -> str:
    """ISO-8601 UTC time to the second, e.g. 2026-11-28T08:19:09+00:00."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
