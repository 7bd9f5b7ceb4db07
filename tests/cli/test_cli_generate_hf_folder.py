"""`polycom generate --run HF_FOLDER`: a polycom Hugging Face folder samples the same text as its run folder.

The run folder and the folder `export_model` writes from it hold the same weights, so greedy decoding (and
sampling with the same seed) must give the same tokens, hence the same text, through both paths; the
expected text is also computed here from the harness model directly.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

from polycom.cli import main  # noqa: E402
from polycom.data import ByteTokenizer, train_bpe  # noqa: E402
from polycom.hf.export import export_model  # noqa: E402
from polycom.hf.tokenizer import to_hf_tokenizer  # noqa: E402
from polycom.models import ModelConfig, build_model  # noqa: E402
from polycom.train.checkpoint import save_checkpoint  # noqa: E402

TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind — café naïve.\n"
PROMPT = "To be, or — naïve"


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("POLYCOM_THREADS", "1")  # tiny models; on a shared 2-core box 2 threads can stall


def _run_and_export(root, tokenizer, *, tied: bool = False):
    """A run folder in the documented layout (no training) and its export; returns (harness model, run, hf)."""
    cfg = ModelConfig(
        vocab_size=tokenizer.vocab_size,
        d_model=32,
        n_layers=2,
        n_heads=4,
        max_seq_len=64,
        activation="polynorm",
        tie_embeddings=tied,
    )
    model = build_model(cfg).eval()
    run = root / "run"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": cfg.to_dict()}))
    tokenizer.save(run / "tokenizer")
    save_checkpoint(run, 5, {"model": model.state_dict()})
    hf = export_model(model, tokenizer, root / "hf")
    return model, run, hf


def _generate(capsys, folder, *args) -> str:
    rc = main(["generate", "--run", str(folder), "--device", "cpu", *args])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return captured.out


def fails(capsys, argv, *needles) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("kind, tied", [("byte", False), ("bpe", True)])
def test_hf_folder_generates_what_the_run_folder_generates(tmp_path, capsys, kind, tied):
    tokenizer = ByteTokenizer() if kind == "byte" else train_bpe([TEXT * 20], 300)
    model, run, hf = _run_and_export(tmp_path, tokenizer, tied=tied)

    greedy = ["--prompt", PROMPT, "--temperature", "0", "--max-new-tokens", "8"]
    from_hf = _generate(capsys, hf, *greedy)
    from_run = _generate(capsys, run, *greedy)
    ids = tokenizer.encode(PROMPT)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), 8, temperature=0, eos_id=tokenizer.eos_id)[0].tolist()
    assert len(out) > len(ids) and out[: len(ids)] == ids
    assert from_hf == from_run == tokenizer.decode(out) + "\n"
    assert from_hf.startswith(PROMPT)

    sampled = ["--temperature", "1.0", "--top-k", "0", "--seed", "3", "--max-new-tokens", "12"]  # empty prompt
    assert _generate(capsys, hf, *sampled) == _generate(capsys, run, *sampled)
    assert _generate(capsys, hf, *sampled, "--safe") == _generate(capsys, run, *sampled)


def test_hf_folder_errors(tmp_path, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    _, run, hf = _run_and_export(tmp_path, ByteTokenizer())
    fails(capsys, ["generate", "--run", str(hf), "--step", "5"], "--step picks a checkpoint of a run folder", str(hf))
    assert main(["generate", "--run", str(run), "--step", "5", "--max-new-tokens", "1"]) == 0  # run folders keep it
    capsys.readouterr()

    no_tokenizer = export_model(
        build_model(ModelConfig(vocab_size=256, d_model=32, n_layers=1, n_heads=2)), None, tmp_path / "bare"
    )
    fails(capsys, ["generate", "--run", str(no_tokenizer)], f"tokenizer missing from {no_tokenizer}")

    llama = tmp_path / "llama"
    cfg = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
    LlamaForCausalLM(cfg).save_pretrained(str(llama))
    to_hf_tokenizer(ByteTokenizer()).save_pretrained(str(llama))  # complete folder: only the model type is wrong
    capsys.readouterr()  # transformers' progress bar while saving
    err = fails(
        capsys, ["generate", "--run", str(llama)], "holds a llama model (LlamaForCausalLM), not a polycom model"
    )
    assert "polycom convert" in err and "polycom export" in err

    (tmp_path / "empty").mkdir()
    fails(
        capsys,
        ["generate", "--run", str(tmp_path / "empty")],
        "is neither a polycom run folder",
        "nor a Hugging Face folder",
    )
