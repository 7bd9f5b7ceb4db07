"""A newcomer's first hour, second part: run folder named first, vocab from the data, no empty bars,
`data prepare --offline`, a BPE smaller than asked, compact tables for narrow terminals and pipes."""

from __future__ import annotations

import json

import pytest

from polycom.cli import main
from polycom.data import embedded_corpus_text
from tiny_run_args import TINY_RUN

SMALL = [
    *TINY_RUN,
    "--train.threads=1",
    "--train.eval_batches=2",
    "--train.log_interval=1",
]


@pytest.fixture(scope="module")
def bpe_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("bpe")
    src = root / "plays.txt"
    src.write_text(embedded_corpus_text()[:60_000])
    argv = ["data", "prepare", "--source", str(src), "--tokenizer", "bpe", "--vocab-size", "320"]
    assert main([*argv, "--out", str(root / "data")]) == 0
    return root / "data"


def test_train_names_its_folder_first_and_takes_the_vocab_of_bpe_data(bpe_data, tmp_path, capsys):
    vocab = json.loads((bpe_data / "meta.json").read_text())["vocab_size"]
    assert vocab > 256  # larger than the tiny preset's byte vocab
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--data", str(bpe_data), "--steps", "1", "--out", str(run), *SMALL]) == 0
    err = capsys.readouterr().err
    assert err.index(f"polycom train: run folder {run}") < err.index(f"vocab_size 256 -> {vocab}")
    assert json.loads((run / "config.json").read_text())["model"]["vocab_size"] == vocab


def test_train_keeps_an_explicit_vocab_and_its_error(bpe_data, tmp_path, capsys):
    argv = ["train", "--data", str(bpe_data), "--steps", "1", "--out", str(tmp_path / "r"), *SMALL]
    assert main([*argv, "--model.vocab_size=300"]) == 2
    assert "larger than the model's vocab_size 300" in capsys.readouterr().err


def test_train_progress_bar_starts_at_the_first_step_only():
    from polycom.cli.train import _Progress

    with _Progress(4, enabled=True) as progress:  # a run refused during its checks logs nothing
        pass
    assert not progress.started and not progress.progress.live.is_started
    with _Progress(4, enabled=True) as progress:
        progress.on_event({"step": 1, "loss": 2.0})
        assert progress.progress.live.is_started
    assert not progress.progress.live.is_started


def test_data_prepare_offline_fails_fast_with_a_clear_message_and_no_bar(tmp_path):
    import os
    import subprocess
    import sys
    import time

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))}
    argv = [sys.executable, "-m", "polycom", "data", "prepare", "--source", "hf:nobody/not-in-the-cache"]
    t0 = time.perf_counter()
    proc = subprocess.run([*argv, "--offline", "--out", str(tmp_path / "o")], capture_output=True, text=True, env=env)
    assert time.perf_counter() - t0 < 60  # imports only: no network retries
    assert proc.returncode == 2
    assert proc.stderr.startswith("polycom data: error: could not open Hugging Face dataset"), proc.stderr
    assert "OfflineModeIsEnabled" in proc.stderr and "--offline: only datasets already in the" in proc.stderr
    assert proc.stdout == ""  # no (empty) progress bar before the error
    assert not (tmp_path / "o").exists()


def test_data_prepare_says_when_the_bpe_is_smaller_than_asked(tmp_path, capsys):
    src = tmp_path / "few.txt"
    src.write_text(embedded_corpus_text()[:3_000])
    argv = ["data", "prepare", "--source", str(src), "--tokenizer", "bpe", "--vocab-size", "4000"]
    assert main([*argv, "--out", str(tmp_path / "d")]) == 0
    vocab = json.loads((tmp_path / "d" / "meta.json").read_text())["vocab_size"]
    assert vocab < 4000 and f"the BPE vocab is {vocab}, not the 4000 asked for" in capsys.readouterr().out
