"""run.json: what produced a run (git commit, versions, hardware, command line, resolved config)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch


def git_commit() -> str | None:
    """Commit of the polycom source tree, or None when it is not a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str | None]:
    import numpy

    import polycom

    v = {"python": platform.python_version(), "polycom": polycom.__version__, "torch": torch.__version__}
    v["numpy"] = numpy.__version__
    try:
        import triton

        v["triton"] = triton.__version__
    except ImportError:
        v["triton"] = None
    v["cuda"] = torch.version.cuda
    return v


def hardware() -> dict[str, Any]:
    hw: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        hw["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    else:
        hw["gpus"] = []
    return hw


def run_header(config: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    header = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": git_commit(),
        "versions": versions(),
        "hardware": hardware(),
        "command": " ".join(sys.argv),
        "config": config,
    }
    if extra:
        header.update(extra)
    return header
