"""No lost runs: durable atomic writes, non-finite steps, SIGTERM, crashed first checkpoints, clear OSErrors."""

from __future__ import annotations

import os
import stat

import pytest

from polycom.utils import atomic


@pytest.fixture
def fsynced(monkeypatch):
    """The (device, inode) of every file and folder passed to os.fsync."""
    seen: list[tuple[int, int, bool]] = []
    real = os.fsync

    def record(fd):
        st = os.fstat(fd)
        seen.append((st.st_dev, st.st_ino, stat.S_ISDIR(st.st_mode)))
        return real(fd)

    monkeypatch.setattr(os, "fsync", record)
    return seen


def _key(path, is_dir=False):
    st = os.stat(path)
    return (st.st_dev, st.st_ino, is_dir)


def test_atomic_writes_fsync_the_file_and_its_folder(tmp_path, fsynced):
    path = atomic.write_text(tmp_path / "sub" / "report.md", "hello")
    assert _key(path) in fsynced  # os.replace keeps the inode: the synced temp file is the final file
    assert _key(path.parent, True) in fsynced
    fsynced.clear()
    atomic.append_lines(tmp_path / "m.jsonl", ['{"a": 1}'])
    assert _key(tmp_path / "m.jsonl") in fsynced and _key(tmp_path, True) in fsynced


def test_replace_folder_fsyncs_contents_and_parent(tmp_path, fsynced):
    tmp = atomic.temp_folder_beside(tmp_path / "out")
    (tmp / "a.txt").write_text("a")
    out = atomic.replace_folder(tmp, tmp_path / "out")
    assert _key(out / "a.txt") in fsynced and _key(out, True) in fsynced and _key(tmp_path, True) in fsynced


def test_checkpoint_file_and_checksum_are_durable(tmp_path, fsynced):
    from polycom.train.checkpoint.single_file import checksum_path, write_checkpoint_file

    path = write_checkpoint_file(tmp_path / "ckpt" / "step_00000001.pt", 1, {"x": 1})
    assert _key(path) in fsynced and _key(checksum_path(path)) in fsynced
    assert _key(path.parent, True) in fsynced


# --------------------------------------------------------------------------------------------------------
# The training loop: non-finite steps, SIGTERM, crashed first checkpoint, --out, disk full / read-only.

import errno  # noqa: E402
import math  # noqa: E402
import signal  # noqa: E402

import torch  # noqa: E402

from polycom.errors import UserError  # noqa: E402
from polycom.train import load_config, train  # noqa: E402
from polycom.train import trainer as trainer_module  # noqa: E402
from polycom.train.checkpoint import list_checkpoints, load_checkpoint  # noqa: E402
from polycom.train.config import LoopConfig  # noqa: E402
from polycom.train.metrics import read_metrics  # noqa: E402
from tiny_run_args import TINY_RUN  # noqa: E402

SMALL = [
    *TINY_RUN,
    "--train.threads=1",
    "--train.eval_batches=2",
    "--train.log_interval=1",
    "--train.eval_interval=0",
    "--train.checkpoint_interval=0",
    "--optim.lr=1e-2",
    "--optim.warmup_steps=2",
]


def small_config(data_dir, *extra):
    return load_config(preset="tiny", overrides=[*SMALL, f'--data.path="{data_dir}"', *extra])


@pytest.fixture
def poisoned(monkeypatch):
    """Models built by the trainer get NaN gradients on the backward passes whose 1-based number is in `bad`
    (grad_accum = 1: backward pass n is optimizer step n); `models` holds the built models."""
    bad: set[int] = set()
    models = []
    real_build = trainer_module.build_model

    def build(cfg):
        model = real_build(cfg)
        calls = [0]

        def hook(grad):
            calls[0] += 1
            return grad * float("nan") if calls[0] in bad else grad

        next(model.parameters()).register_hook(hook)  # one parameter is enough: the global norm is NaN
        models.append(model)
        return model

    monkeypatch.setattr(trainer_module, "build_model", build)
    return bad, models


def _finite(state_dict) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state_dict.values() if v.is_floating_point())


def test_non_finite_gradient_step_is_skipped_and_counted(tmp_path, data_dir, poisoned):
    bad, models = poisoned
    bad.add(3)
    snapshots = {}

    def snap(record):
        if record.get("step") in (2, 3) and "skipped_step" not in record:
            snapshots[record["step"]] = {k: v.clone() for k, v in models[0].state_dict().items()}

    result = train(small_config(data_dir, "--train.steps=6"), tmp_path / "r", on_event=snap)
    assert result.steps == 6 and result.skipped_steps == 1 and not result.interrupted
    # the skipped step left every parameter as it was
    assert all(torch.equal(snapshots[2][k], snapshots[3][k]) for k in snapshots[2])
    state = load_checkpoint(list_checkpoints(tmp_path / "r")[-1])
    assert _finite(state["model"]) and state["skipped_steps"] == 1
    records = read_metrics(tmp_path / "r" / "metrics.jsonl")
    skipped = [r for r in records if r.get("skipped_step")]
    assert [r["step"] for r in skipped] == [3] and skipped[0]["grad_norm"] == "nan"
    assert all(math.isfinite(r["loss"]) for r in records if "loss" in r)
    assert [r.get("skipped_steps") for r in records if r.get("step") == 6 and "loss" in r] == [1]


def test_consecutive_bad_steps_stop_without_saving(tmp_path, data_dir, poisoned):
    bad, _ = poisoned
    bad.update(range(3, 100))
    cfg = small_config(data_dir, "--train.steps=20", "--train.checkpoint_interval=2", "--train.max_bad_steps=2")
    with pytest.raises(UserError, match=r"3 steps in a row \(up to step 5\).*max_bad_steps = 2"):
        train(cfg, tmp_path / "r")
    kept = list_checkpoints(tmp_path / "r")
    assert [p.name for p in kept] == ["step_00000002.pt", "step_00000004.pt"]
    assert all(_finite(load_checkpoint(p)["model"]) for p in kept)
    with pytest.raises(UserError, match="max_bad_steps must be >= 0"):
        small_config(data_dir, "--train.max_bad_steps=-1")


def test_non_finite_weights_are_never_saved(tmp_path, data_dir, poisoned):
    _, models = poisoned

    def break_weights(record):
        if record.get("step") == 4:
            with torch.no_grad():
                next(models[0].parameters()).fill_(float("inf"))

    cfg = small_config(data_dir, "--train.steps=8", "--train.checkpoint_interval=2", "--train.keep_checkpoints=1")
    with pytest.raises(trainer_module.NonFiniteWeights, match="not finite after step 4.*--resume-step"):
        train(cfg, tmp_path / "r", on_event=break_weights)
    # keep_checkpoints=1: the good checkpoint of step 2 is still there, nothing of step 4
    assert [p.name for p in list_checkpoints(tmp_path / "r")] == ["step_00000002.pt"]


def test_resume_from_an_older_kept_checkpoint(tmp_path, data_dir):
    cfg = small_config(data_dir, "--train.steps=6", "--train.checkpoint_interval=2", "--train.keep_checkpoints=0")
    train(cfg, tmp_path / "r")
    final = load_checkpoint(list_checkpoints(tmp_path / "r")[-1])["model"]
    result = train(cfg, tmp_path / "r", resume=True, resume_step=2)
    assert result.steps == 6
    again = load_checkpoint(list_checkpoints(tmp_path / "r")[-1])["model"]
    assert all(torch.equal(final[k], again[k]) for k in final)  # steps 3..6 replayed bit for bit
    steps = [r["step"] for r in read_metrics(tmp_path / "r" / "metrics.jsonl") if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]  # records after step 2 were replaced, not duplicated
    with pytest.raises(UserError, match=r"no checkpoint for step 5 \(available: \[2, 4, 6\]\)"):
        train(cfg, tmp_path / "r", resume=True, resume_step=5)


def test_sigterm_saves_and_stops_like_ctrl_c(tmp_path, data_dir):
    def preempt(record):
        if record.get("step") == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    result = train(small_config(data_dir, "--train.steps=20"), tmp_path / "r", on_event=preempt)
    assert result.interrupted and result.steps == 3 and result.stop_signal == "SIGTERM"
    assert [p.name for p in list_checkpoints(tmp_path / "r")] == ["step_00000003.pt"]
    assert signal.getsignal(signal.SIGTERM) is before  # handler restored
    assert read_metrics(tmp_path / "r" / "metrics.jsonl")[-1] == {"step": 3, "interrupted": True, "signal": "SIGTERM"}
    assert train(small_config(data_dir, "--train.steps=5"), tmp_path / "r", resume=True).steps == 5


def test_default_checkpoint_interval_is_not_zero():
    assert LoopConfig().checkpoint_interval > 0


def test_crash_before_the_first_checkpoint_can_be_resumed(tmp_path, data_dir):
    def crash(record):
        if record.get("step") == 2:
            raise RuntimeError("simulated crash")

    cfg = small_config(data_dir, "--train.steps=4")
    with pytest.raises(RuntimeError, match="simulated"):
        train(cfg, tmp_path / "r", on_event=crash)
    ckpts = tmp_path / "r" / "checkpoints"
    ckpts.mkdir(exist_ok=True)
    (ckpts / ".step_00000004.pt.tmp").write_bytes(b"half a checkpoint")  # what SIGKILL during a save leaves
    (ckpts / "step_00000004.tmp").mkdir()
    with pytest.raises(UserError, match="already holds a run"):
        train(cfg, tmp_path / "r")
    result = train(cfg, tmp_path / "r", resume=True)
    assert result.steps == 4 and not result.interrupted
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_00000004.pt", "step_00000004.pt.sha256"]
    steps = [r["step"] for r in read_metrics(tmp_path / "r" / "metrics.jsonl")]
    assert steps == [0, 1, 2, 3, 4]  # the lost attempt's records are gone


def test_new_run_refuses_an_unrelated_non_empty_folder(tmp_path, data_dir):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "metrics.jsonl").write_text("my own data\n")
    (folder / "thesis.tex").write_text("\\documentclass{article}")
    with pytest.raises(UserError, match=r"is not empty \(metrics.jsonl, thesis.tex\) and is not a polycom run"):
        train(small_config(data_dir, "--train.steps=2"), folder)
    assert (folder / "metrics.jsonl").read_text() == "my own data\n"
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.jsonl", "thesis.tex"]
    (tmp_path / "empty").mkdir()
    assert train(small_config(data_dir, "--train.steps=2"), tmp_path / "empty").steps == 2


def test_disk_full_during_a_checkpoint_is_a_clear_error(tmp_path, data_dir, monkeypatch):
    from polycom.train.checkpoint import single_file

    real_save = torch.save

    def save(obj, fh, *args, **kwargs):
        if obj.get("step") == 4:
            fh.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, fh, *args, **kwargs)

    monkeypatch.setattr(single_file.torch, "save", save)
    cfg = small_config(data_dir, "--train.steps=6", "--train.checkpoint_interval=2", "--train.keep_checkpoints=1")
    with pytest.raises(UserError, match=r"could not write the checkpoint of step 4 to .*checkpoints: No space left"):
        train(cfg, tmp_path / "r")
    ckpts = tmp_path / "r" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_00000002.pt", "step_00000002.pt.sha256"]
    assert load_checkpoint(ckpts / "step_00000002.pt")["step"] == 2  # intact, checksum verified


def test_read_only_run_folder_is_a_clear_error(tmp_path, data_dir, monkeypatch):
    from polycom.train import run_files

    def read_only(path, obj):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(run_files, "write_json", read_only)
    with pytest.raises(UserError, match=r"could not write the run files to .*config.json: Read-only file system"):
        train(small_config(data_dir, "--train.steps=2"), tmp_path / "r")


def test_not_writable_out_folder_is_refused_up_front(tmp_path, data_dir, monkeypatch):
    from polycom.train import run_files

    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    real_access = os.access

    def access(path, mode, *args, **kwargs):  # root ignores the mode bits: answer as for an ordinary user
        if os.path.abspath(path) == str(parent) and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(run_files.os, "access", access)
    try:
        with pytest.raises(UserError, match="is not writable"):
            train(small_config(data_dir, "--train.steps=2"), parent / "r")
        assert not (parent / "r").exists()  # refused before anything was written
    finally:
        parent.chmod(0o755)
