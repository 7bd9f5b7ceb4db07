"""A model folder whose config.json is not a transformers config is one clear UserError naming the file,
from `polycom.hf.persistence.load_model_folder` (convert, export) and from `polycom.eval.loading` (eval)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from polycom.errors import UserError  # noqa: E402


def _folder_with_bad_config(folder: Path) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "no_such_architecture_xyz"}), encoding="utf-8")
    (folder / "model.safetensors").write_bytes(b"")  # weights and tokenizer present: the config is the problem
    (folder / "tokenizer.json").write_text("{}", encoding="utf-8")
    return folder


def test_load_model_folder_names_a_config_that_is_not_a_transformers_config(tmp_path):
    from polycom.hf.persistence import load_model_folder

    folder = _folder_with_bad_config(tmp_path / "m")
    with pytest.raises(UserError, match=r"config\.json is not a transformers config") as info:
        load_model_folder(folder)
    assert str(folder) in str(info.value)


def test_eval_loading_names_a_config_that_is_not_a_transformers_config(tmp_path):
    from polycom.eval.loading import load_eval_model

    folder = _folder_with_bad_config(tmp_path / "m")
    with pytest.raises(UserError, match=r"config\.json is not a transformers config") as info:
        load_eval_model(folder)
    assert str(folder) in str(info.value)
