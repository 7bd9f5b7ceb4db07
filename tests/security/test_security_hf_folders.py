"""Opening a stranger's Hugging Face folder runs none of its code and unpickles no objects from it.

Each test plants a marker-writing payload (a custom-code ``.py`` named by ``auto_map``, a pickle whose
``__reduce__`` opens a file) and checks: the marker never appears, the error is one clear UserError,
and no interactive prompt is shown (``input`` raises if called).
"""

from __future__ import annotations

import builtins
import json
import pickle
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from polycom.errors import UserError  # noqa: E402


def _tiny_llama(folder: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from polycom.data.tokenizers import ByteTokenizer
    from polycom.hf.tokenizer import to_hf_tokenizer

    cfg = LlamaConfig(
        vocab_size=300, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=32,
    )  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(folder)
    to_hf_tokenizer(ByteTokenizer()).save_pretrained(folder)
    return folder


def _custom_code_folder(tmp_path: Path, marker: Path) -> Path:
    """A model folder whose config names its own Python file (unknown model_type): loading it needs that code."""
    folder = _tiny_llama(tmp_path / "custom")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "not_a_transformers_model"
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return folder


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickle_bin_folder(tmp_path: Path, marker: Path) -> Path:
    folder = _tiny_llama(tmp_path / "pickled")
    (folder / "model.safetensors").unlink()
    with (folder / "pytorch_model.bin").open("wb") as fh:
        pickle.dump({"model.embed_tokens.weight": _Evil(marker)}, fh)
    return folder


@pytest.fixture
def no_prompt(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("an interactive prompt was shown")

    monkeypatch.setattr(builtins, "input", refuse)


def _loaders():
    from polycom.eval.loading import load_eval_model
    from polycom.hf.persistence import load_model_folder

    return {"load_model_folder": load_model_folder, "load_eval_model": load_eval_model}


@pytest.mark.parametrize("loader", ["load_model_folder", "load_eval_model"])
def test_custom_code_folder_is_refused_without_prompt_or_code(tmp_path, no_prompt, loader):
    marker = tmp_path / "MARKER"
    folder = _custom_code_folder(tmp_path, marker)
    with pytest.raises(UserError, match="--trust-remote-code") as info:
        _loaders()[loader](folder)
    assert "\n" not in str(info.value) and str(folder) in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("loader", ["load_model_folder", "load_eval_model"])
def test_pickle_weights_refused_with_one_line_error(tmp_path, no_prompt, loader):
    marker = tmp_path / "MARKER"
    folder = _pickle_bin_folder(tmp_path, marker)
    with pytest.raises(UserError, match="pickle") as info:
        _loaders()[loader](folder)
    assert "\n" not in str(info.value) and str(folder) in str(info.value)
    assert not marker.exists()


def test_cli_convert_refuses_custom_code_and_pickle(tmp_path, no_prompt, capsys):
    from polycom.cli import main

    marker = tmp_path / "MARKER"
    for folder in (_custom_code_folder(tmp_path, marker), _pickle_bin_folder(tmp_path, marker)):
        assert main(["convert", "--model", str(folder), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and str(folder) in err
    assert not marker.exists() and not (tmp_path / "out").exists()


class _Spy:
    """Records the kwargs of every from_pretrained of the Auto classes, then calls the real one."""

    def __init__(self, monkeypatch) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        self.calls: list[tuple[str, dict]] = []
        for cls in (AutoConfig, AutoModelForCausalLM, AutoTokenizer):
            real = cls.from_pretrained.__func__

            def spy(klass, *args, _real=real, _name=cls.__name__, **kwargs):
                self.calls.append((_name, kwargs))
                return _real(klass, *args, **kwargs)

            monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))


@pytest.mark.parametrize("trust", [False, True])
def test_every_hf_load_passes_trust_remote_code_explicitly(tmp_path, monkeypatch, trust):
    from polycom.data.tokenizers import TransformersTokenizer
    from polycom.eval.loading import load_eval_model
    from polycom.hf.persistence import load_model_folder

    folder = _tiny_llama(tmp_path / "llama")
    spy = _Spy(monkeypatch)
    load_model_folder(folder, trust_remote_code=trust)
    load_eval_model(folder, trust_remote_code=trust)
    TransformersTokenizer(folder, trust_remote_code=trust)
    names = {name for name, _ in spy.calls}
    assert names == {"AutoConfig", "AutoModelForCausalLM", "AutoTokenizer"}
    for name, kwargs in spy.calls:
        assert kwargs.get("trust_remote_code", "absent") is trust, (name, kwargs)
        assert kwargs.get("local_files_only") is True, (name, kwargs)
