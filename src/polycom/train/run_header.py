"""run.json: what produced a run (git commit, versions, hardware, command line, resolved config)."""

from __future__ import annotations

import sys
from typing import Any

from polycom.utils.provenance import git_commit, hardware, utc_now, versions


def run_header(config: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    header = {
        "created": utc_now(),
        "git_commit": git_commit(),
        "versions": versions(),
        "hardware": hardware(),
        "command": " ".join(sys.argv),
        "config": config,
    }
    if extra:
        header.update(extra)
    return header
