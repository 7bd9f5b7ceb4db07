"""`polycom train` under torchrun (2 CPU processes, gloo, FSDP2): trains, checkpoints (DCP), resumes, loads."""

import os
import shutil
import subprocess
import sys

import pytest

from polycom.data import PrepareConfig, embedded_corpus_text, prepare_data
from polycom.train import load_run
from polycom.train.metrics import read_metrics
from tiny_run_args import TINY_RUN

SMALL = [
    *TINY_RUN,
    "--train.eval_batches=2",
    "--train.log_interval=2",
    "--optim.lr=1e-2",
]


def torchrun(*args, timeout=240):
    exe = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    cmd = [exe, "--standalone", "--nproc_per_node", "2", "-m", "polycom", "train", "--no-progress", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
@pytest.mark.distributed
def test_fsdp_two_processes_train_resume_and_load(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text(embedded_corpus_text()[:50_000])
    prepare_data(PrepareConfig(source=str(src)), tmp_path / "data", show_progress=False)
    run = tmp_path / "run"
    first = torchrun(
        "--data", str(tmp_path / "data"), "--steps", "4", "--out", str(run), *SMALL, "--parallel.fsdp=true"
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert (run / "checkpoints" / "step_00000004").is_dir()  # a DCP folder, one shard per rank
    second = torchrun("--resume", str(run), "--steps", "6")
    assert second.returncode == 0, second.stderr[-3000:]
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    assert steps == [2, 4, 6]
    records = read_metrics(run / "metrics.jsonl")
    assert records[-1]["val_loss"] < records[0]["val_loss"]
    model, cfg, tok, _, _ = load_run(run)  # DCP resharded onto one process
    assert cfg.d_model == 32 and model.num_parameters() > 0
