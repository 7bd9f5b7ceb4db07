"""Analysis outputs: atomic writes (from `polycom.utils.atomic`) and the provenance header."""

from __future__ import annotations

from polycom.utils.atomic import save_figure, to_jsonable, write_json, write_text
from polycom.utils.provenance import git_commit, hardware, utc_now, versions

__all__ = ["write_json", "write_text", "save_figure", "provenance", "to_jsonable"]


def provenance() -> dict:
    """Who/what/when: versions, git commit, host, UTC time (stored in every JSON report)."""
    v = versions()
    hw = hardware()
    return {
        "polycom": v["polycom"],
        "torch": v["torch"],
        "numpy": v["numpy"],
        "python": v["python"],
        "git_commit": git_commit(),
        "host": hw["host"],
        "cpu_threads": hw["torch_threads"],
        "date_utc": utc_now(),
    }
