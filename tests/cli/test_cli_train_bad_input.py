"""Every bad-input case of train / compare / data / generate through the CLI: exit 2, clear message, no traceback."""

import subprocess
import sys

import pytest

from polycom.cli import main
from polycom.data import embedded_corpus_text
from tiny_run_args import TINY_RUN

SMALL = [
    *TINY_RUN,
    "--train.threads=1",  # robust to other processes on the cores (2-thread steps can stall)
    "--train.eval_batches=2",
    "--train.log_interval=2",
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    src = root / "plays.txt"
    src.write_text(embedded_corpus_text()[:80_000])
    assert main(["data", "prepare", "--source", str(src), "--out", str(root / "data")]) == 0
    return root


@pytest.fixture(scope="module")
def trained_run(prepared):
    run = prepared / "run"
    rc = main(["train", "--data", str(prepared / "data"), "--steps", "4", "--out", str(run), "--no-progress", *SMALL])
    assert rc == 0
    return run


def fails(capsys, argv, *needles):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def test_train_and_generate_work(trained_run, capsys):
    assert (trained_run / "checkpoints" / "step_00000004.pt").is_file()
    assert main(["generate", "--run", str(trained_run), "--prompt", "KING.", "--max-new-tokens", "10"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("KING.")


def test_missing_data(tmp_path, capsys):
    fails(capsys, ["train", "--data", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "r"), *SMALL], "not found")
    fails(capsys, ["data", "prepare", "--source", str(tmp_path / "nope"), "--out", str(tmp_path / "d")], "not found")
    fails(capsys, ["train", f"--data.path={tmp_path / 'nodata'}", "--out", str(tmp_path / "r2")], "not found")


def test_empty_data(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    fails(
        capsys,
        [
            "train",
            "--data",
            str(tmp_path / "empty.txt"),
            f"--data.cache_dir={tmp_path / 'c'}",
            "--out",
            str(tmp_path / "r"),
        ],
        "holds no text",
    )
    (tmp_path / "folder").mkdir()
    fails(capsys, ["data", "prepare", "--source", str(tmp_path / "folder"), "--out", str(tmp_path / "d")], "holds no")


def test_wrong_token_file_header(prepared, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(prepared / "data", bad)
    raw = (bad / "train.bin").read_bytes()
    (bad / "train.bin").write_bytes(b"GARBAGE!" + raw[8:])
    fails(capsys, ["train", "--data", str(bad), "--out", str(tmp_path / "r"), *SMALL], "magic")
    fails(capsys, ["data", "info", str(bad)], "not a polycom token file")


def test_vocab_larger_than_model(prepared, tmp_path, capsys):
    argv = ["train", "--data", str(prepared / "data"), "--out", str(tmp_path / "r"), *SMALL, "--model.vocab_size=64"]
    fails(capsys, argv, "vocab of 256", "larger than the model's vocab_size 64")
    assert not (tmp_path / "r").exists()


def test_unknown_config_key(tmp_path, capsys):
    err = fails(
        capsys, ["train", "--train.stepz=3", "--out", str(tmp_path / "r")], "unknown key train.stepz", "valid keys"
    )
    assert "train.steps" in err
    toml = tmp_path / "run.toml"
    toml.write_text("[model]\nwidth = 3\n")
    fails(capsys, ["train", "--config", str(toml)], "unknown key model.width", "model.d_model")
    fails(capsys, ["compare", "--optim.lrr=1", "--out", str(tmp_path / "c")], "unknown key optim.lrr", "optim.lr")


def test_corrupt_checkpoint_refused_nothing_overwritten(trained_run, capsys):
    ckpt = trained_run / "checkpoints" / "step_00000004.pt"
    original = ckpt.read_bytes()
    try:
        ckpt.write_bytes(original[: len(original) // 2])  # truncated
        before = {p: p.read_bytes() for p in trained_run.rglob("*") if p.is_file()}
        fails(capsys, ["train", "--resume", str(trained_run), "--steps", "8", "--no-progress"], "checksum")
        fails(capsys, ["generate", "--run", str(trained_run), "--prompt", "a"], "corrupt or truncated")
        after = {p: p.read_bytes() for p in trained_run.rglob("*") if p.is_file()}
        assert before == after
    finally:
        ckpt.write_bytes(original)


@pytest.mark.slow
def test_finished_comparison_refused(prepared, tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--activations", "relu,gelu", "--steps", "2", "--data", str(prepared / "data")]
    argv += ["--out", str(out), "--no-progress", *SMALL]
    assert main(argv) == 0
    capsys.readouterr()
    fails(capsys, argv, "already holds a finished comparison", "--overwrite")
    assert main([*argv, "--overwrite"]) == 0
    fails(capsys, ["compare", "--activations", "relu,swish", "--out", str(tmp_path / "x")], "unknown activation")


def test_generate_without_checkpoint(tmp_path, capsys):
    (tmp_path / "checkpoints").mkdir()  # a run folder with nothing saved yet (an empty folder is no run folder)
    fails(capsys, ["generate", "--run", str(tmp_path), "--prompt", "a"], "holds no checkpoint")


def test_console_script_prints_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "polycom", "train", "--train.stepz=1", "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "unknown key train.stepz" in proc.stderr and "Traceback" not in proc.stderr
