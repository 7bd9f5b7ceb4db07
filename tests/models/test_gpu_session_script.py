"""benchmarks/gpu_session.sh, the one script a lent GPU session runs: every command it would run must exist.

The script cannot run here (no GPU), so its dry run is checked instead: each `polycom` command line parses
with the real CLI parser (a renamed or removed option fails here, not in scarce GPU time) and each pytest
target exists.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from polycom.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_session.sh"


def _dry_run(tmp_path) -> list[list[str]]:
    env = dict(os.environ, DRY_RUN="1", OUT=str(tmp_path / "out"), COMMIT="abc1234", PYTHON="python3")
    done = subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [shlex.split(line) for line in done.stdout.splitlines() if line.strip()]


def test_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


def test_every_polycom_command_parses_and_records_the_commit(tmp_path):
    commands = _dry_run(tmp_path)
    polycom = [c[3:] for c in commands if c[1:3] == ["-m", "polycom"]]
    assert [c[:2] for c in polycom] == [["bench", "ops"], ["bench", "model"]]
    for argv in polycom:
        args = build_parser().parse_args(argv)  # SystemExit (test failure) on an unknown option
        assert args.commit == "abc1234" and str(tmp_path / "out") in " ".join(argv)


def test_every_pytest_target_exists(tmp_path):
    targets = [a for c in _dry_run(tmp_path) if c[1:3] == ["-m", "pytest"] for a in c[3:] if not a.startswith("-")]
    targets = [t for t in targets if t != "no:cacheprovider"]
    assert targets and all((REPO / t).exists() for t in targets), targets
