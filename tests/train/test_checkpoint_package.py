"""polycom.train.checkpoint: what counts as a run folder, the one run loader, and pruning across both backends."""

from __future__ import annotations

import json

import pytest
import torch

from polycom.distributed import DistContext
from polycom.errors import UserError
from polycom.models import ModelConfig, build_model
from polycom.train.checkpoint import (
    find_checkpoint,
    is_run_folder,
    list_checkpoints,
    load_run,
    save_checkpoint,
    save_sharded_checkpoint,
)


def _tiny() -> ModelConfig:
    return ModelConfig(vocab_size=256, d_model=16, n_layers=1, n_heads=2, max_seq_len=32, activation="polynorm")


def _run(folder, steps=(1,), seed=0):
    torch.manual_seed(seed)
    model = build_model(_tiny())
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model": model.config.to_dict()}))
    states = {}
    for step in steps:
        with torch.no_grad():
            model.embed.weight.add_(1.0)  # a different model per step
        states[step] = {k: v.clone() for k, v in model.state_dict().items()}
        save_checkpoint(folder, step, {"model": model.state_dict()})
    return states


@pytest.mark.parametrize(
    "files, expected",
    [
        ({"config.json": {"model": {"d_model": 8}}}, True),  # what `polycom train` writes
        ({"config.json": {"model_type": "llama", "hidden_size": 8}}, False),  # a Hugging Face folder
        ({"config.json": {"model": {}, "model_type": "polycom"}}, False),  # HF config that has a "model" key
        ({"config.json": "not json {"}, False),
        ({"config.json": [1, 2]}, False),
        ({"run.json": {"data": {}}}, True),  # a run without its config.json: load_run says what is missing
        ({"checkpoints/": None}, True),
        ({"notes.txt": "hello"}, False),
        ({}, False),
    ],
)
def test_is_run_folder(tmp_path, files, expected):
    folder = tmp_path / "f"
    folder.mkdir()
    for name, content in files.items():
        if name.endswith("/"):
            (folder / name).mkdir()
        else:
            (folder / name).write_text(content if isinstance(content, str) else json.dumps(content))
    assert is_run_folder(folder) is expected


def test_is_run_folder_of_a_file_or_missing_path(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model": {}}))
    assert not is_run_folder(tmp_path / "config.json")
    assert not is_run_folder(tmp_path / "missing")


def test_load_run_latest_and_step(tmp_path):
    states = _run(tmp_path / "r", steps=(1, 2))
    run = load_run(tmp_path / "r")
    assert run.checkpoint.name == "step_00000002.pt" and not run.model.training
    assert run.config == {"model": _tiny().to_dict()} and run.model_config == _tiny()
    for name, value in run.model.state_dict().items():
        assert torch.equal(value, states[2][name]), name
    older = load_run(tmp_path / "r", step=1)
    assert torch.equal(older.model.embed.weight, states[1]["embed.weight"])
    assert older.tokenizer.vocab_size == 256  # no tokenizer/ folder: the byte tokenizer
    model, model_config, tokenizer, config, checkpoint = older  # unpacks like a tuple
    assert checkpoint.name == "step_00000001.pt"


def test_load_run_bad_folders(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_run(tmp_path / "missing")
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(UserError, match="holds no checkpoint"):
        load_run(tmp_path / "empty")
    _run(tmp_path / "r")
    (tmp_path / "r" / "config.json").unlink()
    with pytest.raises(UserError, match=r"no config\.json"):
        load_run(tmp_path / "r")
    (tmp_path / "r" / "config.json").write_text(json.dumps({"train": {}}))
    with pytest.raises(UserError, match="no 'model' section"):
        load_run(tmp_path / "r")
    with pytest.raises(UserError, match=r"no checkpoint for step 5 \(available: \[1\]\)"):
        load_run(tmp_path / "r", step=5)


def test_keep_prunes_single_files_and_sharded_folders(tmp_path):
    """A run resumed in one process from a multi-process run holds both kinds; `keep` prunes both."""
    run = tmp_path / "r"
    model = build_model(_tiny())
    save_sharded_checkpoint(run, 1, model, None, {"step": 1}, DistContext())
    save_checkpoint(run, 2, {"model": model.state_dict()})
    assert [p.name for p in list_checkpoints(run)] == ["step_00000001", "step_00000002.pt"]
    assert find_checkpoint(run, 1).is_dir()
    save_checkpoint(run, 3, {"model": model.state_dict()}, keep=1)
    assert [p.name for p in list_checkpoints(run)] == ["step_00000003.pt"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "latest",
        "step_00000003.pt",
        "step_00000003.pt.sha256",
    ]
    assert (run / "checkpoints" / "latest").read_text() == "step_00000003.pt\n"
