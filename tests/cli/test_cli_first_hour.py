"""What a new user meets first: the CPU thread policy, clear path messages, file modes, the model card."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from torch import nn

from polycom.cli import build_parser, main
from polycom.errors import UserError
from polycom.train import threads as threads_mod
from polycom.train.threads import THREADS_ENV, cpu_threads, thread_setting
from polycom.utils.atomic import temp_folder_beside, write_json, write_text


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    return capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------
# one CPU thread policy


def test_thread_setting_environment_wins_and_bad_values_are_named(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert thread_setting() == -1  # adaptive by default
    assert thread_setting(3) == 3
    monkeypatch.setenv(THREADS_ENV, "2")
    assert thread_setting() == 2 and thread_setting(5) == 2
    for bad in ("x", "-2", "1.5"):
        monkeypatch.setenv(THREADS_ENV, bad)
        with pytest.raises(UserError, match=f"{THREADS_ENV} must be .*{bad!r}"):
            thread_setting()


def test_fixed_setting_is_applied_inside_and_restored_after(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    before = torch.get_num_threads()
    with cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_adaptive_policy_times_top_level_forwards_only(monkeypatch):
    """Nested modules must not count as steps: one model call = one governor step."""
    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # as on a 2-core machine
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    steps: list[float] = []
    monkeypatch.setattr(threads_mod.ThreadGovernor, "step_done", lambda self, s: steps.append(s))
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 4), nn.Tanh()))
    with cpu_threads():
        for _ in range(3):
            model(torch.zeros(1, 4))
    assert len(steps) == 3 and all(s >= 0 for s in steps)
    model(torch.zeros(1, 4))  # hooks removed after the block
    assert len(steps) == 3
    with cpu_threads(device="meta"):  # off the CPU: no timing
        model(torch.zeros(1, 4))
    assert len(steps) == 3


@pytest.mark.parametrize("argv", [["train"], ["compare"], ["generate"], ["eval"], ["analyze", "model"]])
def test_help_says_how_to_override_the_threads(argv, capsys):
    text = " ".join(_help(argv, capsys).split())
    assert f"{THREADS_ENV}=N" in text and "adaptive" in text


def test_bad_thread_environment_is_a_clear_cli_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(THREADS_ENV, "many")
    assert main(["generate", "--run", str(tmp_path)]) == 2
    assert f"{THREADS_ENV} must be" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# path messages


@pytest.mark.parametrize(
    "argv", [["generate", "--run"], ["export", "--out", "OUT", "--run"], ["eval", "--text", "t", "--model"]]
)
def test_missing_path_and_file_for_folder_are_named(argv, tmp_path, capsys):
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in argv]
    assert main([*argv, str(tmp_path / "nope")]) == 2
    assert f"{tmp_path / 'nope'} does not exist" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("x")
    assert main([*argv, str(tmp_path / "notes.txt")]) == 2
    assert "notes.txt is a file, not a" in capsys.readouterr().err


def test_activation_typo_gets_a_suggestion(tmp_path, capsys):
    assert main(["compare", "--activations", "swiglu,polynrom", "--out", str(tmp_path / "c")]) == 2
    assert "did you mean: polynorm" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
    with pytest.raises(ValueError, match="did you mean: swiglu"):
        from polycom.modules.activations import activation_spec

        activation_spec("swigl")


# ---------------------------------------------------------------------------------------------------
# files follow the user's umask


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_atomic_writes_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        text = write_text(tmp_path / "r.md", "x")
        js = write_json(tmp_path / "r.json", {"a": 1})
        folder = temp_folder_beside(tmp_path / "export")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")  # what open() gives: the reference
    finally:
        os.umask(old)
    expected_file = stat.S_IMODE(plain.stat().st_mode)
    assert expected_file == 0o666 & ~umask
    assert stat.S_IMODE(text.stat().st_mode) == expected_file
    assert stat.S_IMODE(js.stat().st_mode) == expected_file
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask


# ---------------------------------------------------------------------------------------------------
# exported model card


def test_model_card_names_the_run_not_its_absolute_path(tmp_path):
    from polycom.data import ByteTokenizer
    from polycom.models import ModelConfig, build_model
    from polycom.train.checkpoint import save_checkpoint

    run = tmp_path / "deep" / "my-run"
    cfg = ModelConfig(vocab_size=256, d_model=16, n_layers=1, n_heads=2, activation="polynorm")
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": cfg.to_dict()}))
    ByteTokenizer().save(run / "tokenizer")
    save_checkpoint(run, 2, {"model": build_model(cfg).state_dict()})
    old = os.umask(0o022)
    try:
        assert main(["export", "--run", str(run), "--out", str(tmp_path / "hf"), "--no-verify"]) == 0
    finally:
        os.umask(old)
    hf = tmp_path / "hf"
    card = (hf / "README.md").read_text()
    config = (hf / "config.json").read_text()
    assert "`my-run`" in card and "import polycom.hf" in card and "trust_remote_code" in card
    assert str(tmp_path) not in card and str(tmp_path) not in config
    assert stat.S_IMODE(hf.stat().st_mode) == 0o755
    assert stat.S_IMODE((hf / "README.md").stat().st_mode) == 0o644
