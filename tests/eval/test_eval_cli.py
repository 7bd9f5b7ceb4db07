"""`polycom eval` end to end: results files, perplexity of a trained vs untrained model, bad input."""

from __future__ import annotations

import json
import shutil

import pytest
from eval_runs import TEXT, fake_run, one_torch_thread, train_tiny, write_run  # noqa: F401  (autouse fixture)

from polycom.cli import main


def test_trained_model_has_lower_perplexity_than_untrained(tmp_path, capsys):
    text_file = tmp_path / "val.txt"
    text_file.write_text(TEXT * 4)
    untrained_dir, model = fake_run(tmp_path / "untrained", seed=5)
    losses = train_tiny(model, TEXT * 20, steps=40)
    assert losses[-1] < losses[0]
    trained_dir = write_run(tmp_path / "trained", model, step=40)

    results = {}
    for name, folder in (("untrained", untrained_dir), ("trained", trained_dir)):
        out = tmp_path / f"eval-{name}"
        assert main(["eval", "--model", str(folder), "--text", str(text_file), "--out", str(out)]) == 0
        report = json.loads((out / "results.json").read_text())
        assert "bits_per_byte" in (out / "results.md").read_text()
        results[name] = report["perplexity"][0]
    capsys.readouterr()
    assert results["trained"]["token_perplexity"] < 0.7 * results["untrained"]["token_perplexity"]
    assert results["trained"]["bits_per_byte"] < results["untrained"]["bits_per_byte"]
    # byte tokenizer: tokens == bytes, so byte perplexity equals token perplexity
    for r in results.values():
        assert r["tokens"] == r["bytes"] == len((TEXT * 4).encode())
        assert r["byte_perplexity"] == pytest.approx(r["token_perplexity"], rel=1e-9)


def test_cli_tasks_writes_json_and_markdown(tmp_path, capsys):
    folder, _ = fake_run(tmp_path / "run")
    assert main(["eval", "--model", str(folder), "--tasks", "polycom_tiny_mc", "--out", str(tmp_path / "ev")]) == 0
    report = json.loads((tmp_path / "ev" / "results.json").read_text())
    row = report["tasks"]["polycom_tiny_mc"]
    assert 0.0 <= row["acc"] <= 1.0 and row["samples"] == 24
    assert report["environment"]["versions"]["lm_eval"]
    md = (tmp_path / "ev" / "results.md").read_text()
    assert f"| polycom_tiny_mc | {row['acc']:.4f}" in md
    assert "| polycom_tiny_mc |" in capsys.readouterr().out


def _err(capsys) -> str:
    return capsys.readouterr().err


def test_cli_bad_input(tmp_path, capsys):
    from polycom.data import train_bpe
    from polycom.hf.export import export_model
    from polycom.models import ModelConfig, build_model

    assert main(["eval", "--model", str(tmp_path / "missing"), "--text", "x.txt"]) == 2
    assert "does not exist" in _err(capsys)

    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    assert main(["eval", "--model", str(tmp_path / "junk"), "--text", "x.txt"]) == 2
    assert "is not a model" in _err(capsys)

    folder, _ = fake_run(tmp_path / "run")
    assert main(["eval", "--model", str(folder)]) == 2
    assert "nothing to evaluate" in _err(capsys)
    assert main(["eval", "--model", str(folder), "--text", str(tmp_path / "nope.txt")]) == 2
    assert "text file" in _err(capsys)

    # an exported folder whose tokenizer files were removed
    hf = export_model(
        build_model(ModelConfig(vocab_size=256, d_model=32, n_layers=1, n_heads=2)), None, tmp_path / "hf"
    )
    assert main(["eval", "--model", str(hf), "--text", str(tmp_path / "junk" / "notes.txt")]) == 2
    assert "tokenizer missing" in _err(capsys)

    # a tokenizer with more tokens than the model's embedding rows
    bpe = train_bpe([TEXT * 30], 300)
    shutil.rmtree(folder / "tokenizer")
    bpe.save(folder / "tokenizer")
    assert main(["eval", "--model", str(folder), "--text", str(tmp_path / "junk" / "notes.txt")]) == 2
    assert "vocabulary mismatch" in _err(capsys)


def test_eval_of_a_converted_llama_folder_matches_direct_scoring(tmp_path):
    import math

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from polycom.data import ByteTokenizer
    from polycom.eval import evaluate
    from polycom.hf import convert, load_converted
    from polycom.hf.persistence import save_converted
    from polycom.hf.tokenizer import to_hf_tokenizer

    cfg = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    model = LlamaForCausalLM(cfg)
    convert(model, "polynorm", "ungated")  # needs load_converted: the eval loader must take that path
    folder = save_converted(model, to_hf_tokenizer(ByteTokenizer()), tmp_path / "llama-ug")
    text_file = tmp_path / "t.txt"
    text_file.write_text(TEXT)

    result = evaluate(folder, text_files=[text_file])["perplexity"][0]
    reloaded = load_converted(folder)
    ids = [10, *TEXT.encode()]  # byte tokenizer has no EOS: the prefix token is a newline
    with torch.no_grad():
        logp = torch.log_softmax(reloaded(torch.tensor([ids[:-1]])).logits[0].double(), -1)
    nll = -sum(logp[i, ids[i + 1]].item() for i in range(len(ids) - 1))
    assert result["nll"] == pytest.approx(nll, rel=1e-6)
    assert result["bits_per_byte"] == pytest.approx(nll / (len(TEXT.encode()) * math.log(2)), rel=1e-6)
