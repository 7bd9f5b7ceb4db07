"""Multi-process reliability: one line per failing rank, checksummed shards, resume on another process count."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from dist_harness import run_workers, values
from dist_workers import cli_rank_failure_worker, save_then_load_worker

from polycom.train.checkpoint.sharded import CHECKSUMS_FILE
from tiny_run_args import TINY_RUN

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _one_polycom_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize("error", ["user", "bug"])
def test_each_failing_rank_prints_one_line_naming_itself(tmp_path, error):
    (failed_code, failed_err, failed_file), (peer_code, peer_err, _) = reversed(
        values(run_workers(cli_rank_failure_worker, 2, 1, error, str(tmp_path / "err"), timeout_s=90))
    )
    line = _one_polycom_line(failed_err)
    if error == "user":
        assert failed_code == 2
        assert line == "polycom train: rank 1: UserError: shard train_000.bin holds token id 70000 >= vocab 50000"
    else:
        assert failed_code == 1
        assert line == "polycom train: rank 1: RuntimeError: a bug (POLYCOM_DEBUG=1 shows the traceback)"
    # torchrun's failure summary quotes the same line (its error file), not "<N/A>" or a traceback
    recorded = json.loads(failed_file)["message"]
    assert recorded["message"] == line.removeprefix("polycom train: ")
    assert recorded["extraInfo"]["py_callstack"] == recorded["message"]
    # the rank left waiting for it says that it lost its peer, in one line too
    assert peer_code == 1
    peer = _one_polycom_line(peer_err)
    assert peer.startswith("polycom train: rank 0: ") and "lost contact with the other ranks" in peer, peer


def test_shards_of_every_rank_are_checksummed_and_a_damaged_one_fails_every_rank(tmp_path):
    path = str(tmp_path / "ck")
    assert values(run_workers(save_then_load_worker, 2, path, "save", timeout_s=120)) == ["saved", "saved"]
    sums = json.loads((tmp_path / "ck" / CHECKSUMS_FILE).read_text())["files"]
    assert {"__0_0.distcp", "__1_0.distcp", ".metadata", "polycom_meta.json"} <= set(sums)
    assert values(run_workers(save_then_load_worker, 2, path, "load", timeout_s=120)) == ["loaded", "loaded"]
    shard = tmp_path / "ck" / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0xFF
    shard.write_bytes(bytes(data))
    for message in values(run_workers(save_then_load_worker, 2, path, "load", timeout_s=120)):
        assert message.startswith("UserError: checkpoint"), message
        assert "__1_0.distcp is corrupt: sha256 mismatch" in message


SMALL = [
    *TINY_RUN,
    "--train.eval_batches=2",
    "--train.log_interval=2",
    "--train.checkpoint_interval=2",
    "--optim.lr=1e-2",
]


def _polycom_train(nproc: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "polycom", "train", "--no-progress", *args]
    else:
        exe = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
        cmd = [exe, "--standalone", "--nproc_per_node", str(nproc), "-m", "polycom", "train", "--no-progress", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def test_two_process_run_resumed_by_one_process_keeps_the_global_batch(tmp_path):
    from polycom.data import PrepareConfig, embedded_corpus_text, prepare_data
    from polycom.train.metrics import read_metrics

    src = tmp_path / "t.txt"
    src.write_text(embedded_corpus_text()[:50_000])
    prepare_data(PrepareConfig(source=str(src)), tmp_path / "data", show_progress=False)
    run = tmp_path / "run"
    first = _polycom_train(2, "--data", str(tmp_path / "data"), "--steps", "4", "--out", str(run), *SMALL)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (run / "checkpoints" / "step_00000004" / CHECKSUMS_FILE).is_file()
    # one process with the saved per-rank batch would halve the global batch (4 x 2 -> 4): refused, folder untouched
    refused = _polycom_train(1, "--resume", str(run), "--steps", "8")
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "global batch 8" in refused.stderr and "--train.batch_size=8" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_00000002", "step_00000004"]
    # as the message says: past the next checkpoints (6, 8), which are single files now; keep=2 prunes the folders
    resumed = _polycom_train(1, "--resume", str(run), "--steps", "8", "--train.batch_size=8")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == [
        "latest",
        "step_00000006.pt",
        "step_00000006.pt.sha256",
        "step_00000008.pt",
        "step_00000008.pt.sha256",
    ]
    records = [r for r in read_metrics(run / "metrics.jsonl") if "tokens" in r and "loss" in r]
    per_step = {r["step"]: r["tokens"] / r["step"] for r in records}
    assert per_step == {2: 8 * 32, 4: 8 * 32, 6: 8 * 32, 8: 8 * 32}, per_step  # batch 8 x seq 32 throughout
