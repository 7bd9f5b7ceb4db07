"""`polycom compare` under torchrun: rank 0 owns the folder and the report, every rank trains each run,
and the numbers equal a single-process comparison with the same global batch (train.batch_size is per
rank; the ranks take disjoint slices of the same global draw, so the data order is the same)."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from polycom.data import PrepareConfig, embedded_corpus_text, prepare_data
from tiny_run_args import TINY_MODEL

TINY = TINY_MODEL


def _compare(nproc: int, data, out, *extra):
    args = ["compare", "--activations", "swiglu,polynorm", "--steps", "4", "--data", str(data)]
    args += ["--out", str(out), "--no-progress", *TINY, *extra]
    if nproc == 1:
        cmd = [sys.executable, "-m", "polycom", *args]
    else:
        exe = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
        cmd = [exe, "--standalone", "--nproc_per_node", str(nproc), "-m", "polycom", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)


@pytest.mark.slow
@pytest.mark.distributed
def test_compare_two_processes_matches_one_and_refuses_finished_folder(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text(embedded_corpus_text()[:40_000])
    prepare_data(PrepareConfig(source=str(src)), tmp_path / "data", show_progress=False)

    single = _compare(1, tmp_path / "data", tmp_path / "one", "--train.batch_size=8")
    assert single.returncode == 0, single.stderr[-3000:]
    multi = _compare(2, tmp_path / "data", tmp_path / "two", "--train.batch_size=4")
    assert multi.returncode == 0, multi.stderr[-3000:]
    assert multi.stdout.count("polycom compare (") == 1  # one summary, from rank 0

    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    for act in ("swiglu", "polynorm"):
        a, b = one["results"][act], two["results"][act]
        assert a["num_parameters"] == b["num_parameters"]
        assert b["final_val_loss"]["mean"] == pytest.approx(a["final_val_loss"]["mean"], abs=2e-4)
    assert (tmp_path / "two" / "report.md").is_file() and (tmp_path / "two" / "loss.png").is_file()

    again = _compare(2, tmp_path / "data", tmp_path / "two", "--train.batch_size=4")
    assert again.returncode != 0
    # The same one-line message from every rank, each naming itself (torchrun's own summary may quote them
    # without our prefix). Two processes share the pipe, so one rank's line can land right after the other's
    # text on the same line: count the messages in the whole output, not lines that start with them.
    ours = re.findall(r"polycom compare: rank (\d): ([^\n]*?--out)", again.stderr)
    assert sorted(rank for rank, _ in ours) == ["0", "1"], again.stderr[-3000:]
    assert all("already holds a finished comparison" in message for _, message in ours)
