"""``--overwrite`` replaces only what polycom wrote earlier: a user's folder or file survives it."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from polycom.cli import main  # noqa: E402
from polycom.data.tokenizers import ByteTokenizer  # noqa: E402
from polycom.errors import UserError  # noqa: E402
from polycom.hf.export import export_model  # noqa: E402
from polycom.models import ModelConfig, build_model  # noqa: E402


def _model():
    return build_model(ModelConfig(vocab_size=256, d_model=16, n_layers=1, n_heads=2, max_seq_len=32))


def _users_folder(path):
    path.mkdir()
    (path / "thesis.tex").write_text("three years of work")
    return path


def _tiny_llama(folder):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=32,
    )  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def test_export_overwrite_refuses_a_users_folder(tmp_path):
    out = _users_folder(tmp_path / "thesis")
    with pytest.raises(UserError, match="not .*polycom"):
        export_model(_model(), ByteTokenizer(), out, overwrite=True, verify=False)
    assert (out / "thesis.tex").read_text() == "three years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis"]  # no temp folder left behind


def test_export_overwrite_replaces_a_previous_export(tmp_path):
    out = tmp_path / "hf"
    export_model(_model(), ByteTokenizer(), out, verify=False)
    first = (out / "model.safetensors").read_bytes()
    export_model(_model(), ByteTokenizer(), out, overwrite=True, verify=False)
    assert (out / "model.safetensors").read_bytes() != first
    export_model(_model(), ByteTokenizer(), tmp_path / "empty", verify=False)  # a new folder gets a marker too
    (tmp_path / "fresh").mkdir()  # an empty folder holds nothing to lose
    export_model(_model(), ByteTokenizer(), tmp_path / "fresh", overwrite=True, verify=False)


def test_cli_convert_overwrite_refuses_a_users_folder_and_replaces_its_own(tmp_path, capsys):
    src = _tiny_llama(tmp_path / "llama")
    out = _users_folder(tmp_path / "thesis")
    assert main(["convert", "--model", str(src), "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "refusing" in err
    assert (out / "thesis.tex").read_text() == "three years of work"

    mine = tmp_path / "converted"
    assert main(["convert", "--model", str(src), "--out", str(mine)]) == 0
    assert main(["convert", "--model", str(src), "--out", str(mine), "--overwrite"]) == 0
    assert (mine / "config.json").is_file()


def test_cli_export_checkpoint_overwrite_refuses_a_users_file(tmp_path, capsys):
    from polycom.distributed import DistContext
    from polycom.train.checkpoint import save_sharded

    save_sharded(tmp_path / "ck", _model(), None, {}, DistContext())
    users = tmp_path / "weights.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, str(users))  # someone else's safetensors file
    before = users.read_bytes()
    assert main(["export", "--checkpoint", str(tmp_path / "ck"), "--out", str(users), "--overwrite"]) == 2
    assert "refusing" in capsys.readouterr().err and users.read_bytes() == before
    text = tmp_path / "notes.txt"
    text.write_text("notes")
    assert main(["export", "--checkpoint", str(tmp_path / "ck"), "--out", str(text), "--overwrite"]) == 2
    assert text.read_text() == "notes"
