"""`polycom export` / `polycom.hf.export`: harness run folder -> HF folder that loads with the Auto API."""

from __future__ import annotations

import json

import pytest
import torch
from hf_tiny_models import one_torch_thread_hf  # noqa: F401  (autouse fixture)

import polycom.hf  # noqa: F401
from polycom.cli import main
from polycom.data import ByteTokenizer, train_bpe
from polycom.errors import UserError
from polycom.hf.export import export_model
from polycom.models import ModelConfig, build_model
from polycom.train.checkpoint import save_checkpoint

TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind — café naïve.\n"


def _fake_run(folder, cfg: ModelConfig, tokenizer, step: int = 3):
    """A run folder in the documented layout (config.json, tokenizer/, checkpoints/) without training."""
    model = build_model(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model": cfg.to_dict()}))
    tokenizer.save(folder / "tokenizer")
    save_checkpoint(folder, step, {"model": model.state_dict()})
    return model


@pytest.mark.parametrize(
    "tied, activation, options",
    [(False, "polynorm", {}), (True, "polynorm", {}), (False, "polycom", {"base": "silu", "composition": 2})],
    ids=["untied", "tied", "polycom-options"],
)
def test_export_cli_round_trip_byte_tokenizer(tmp_path, tied, activation, options):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = ModelConfig(
        vocab_size=256,
        d_model=32,
        n_layers=2,
        n_heads=4,
        activation=activation,
        activation_options=options,
        tie_embeddings=tied,
    )
    harness = _fake_run(tmp_path / "run", cfg, ByteTokenizer()).eval()
    assert main(["export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 0
    hf = tmp_path / "hf"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in hf.iterdir()}
    saved = json.loads((hf / "config.json").read_text())
    assert saved["polycom_source"]["checkpoint"] == "step_00000003.pt"
    assert saved.get("activation_options", {}) == options  # the run's activation options travel with the folder
    card = (hf / "README.md").read_text()
    assert "import polycom.hf" in card and "step_00000003.pt" in card and activation in card

    model = AutoModelForCausalLM.from_pretrained(hf).eval()
    tok = AutoTokenizer.from_pretrained(hf)
    ids = tok(TEXT, return_tensors="pt").input_ids
    assert ids[0].tolist() == list(TEXT.encode("utf-8"))  # byte tokens, no specials
    assert tok.decode(ids[0]) == TEXT
    torch.testing.assert_close(model(ids).logits, harness(ids).logits, rtol=0, atol=1e-6)
    out = model.generate(ids[:, :10], max_new_tokens=6, do_sample=False)
    assert out[0].tolist() == harness.generate(ids[:, :10], 6, temperature=0)[0].tolist()


def test_export_bpe_tokenizer_matches_harness_encoding(tmp_path):
    from transformers import AutoTokenizer

    bpe = train_bpe([TEXT * 20], 300)
    cfg = ModelConfig(vocab_size=bpe.vocab_size, d_model=32, n_layers=1, n_heads=2, activation="swiglu")
    export_model(build_model(cfg), bpe, tmp_path / "hf")
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok.encode(TEXT, add_special_tokens=False) == bpe.encode(TEXT)
    assert tok.eos_token_id == bpe.eos_id
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["eos_token_id"] == bpe.eos_id


def test_export_refuses_existing_folder_and_tokenizer_larger_than_vocab(tmp_path):
    cfg = ModelConfig(vocab_size=256, d_model=32, n_layers=1, n_heads=2)
    (tmp_path / "hf").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        export_model(build_model(cfg), ByteTokenizer(), tmp_path / "hf")
    small = ModelConfig(vocab_size=100, d_model=32, n_layers=1, n_heads=2)
    with pytest.raises(UserError, match=r"tokenizer vocabulary \(256\) is larger than the model's vocab_size \(100\)"):
        export_model(build_model(small), ByteTokenizer(), tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_export_cli_errors(tmp_path, capsys):
    assert main(["export", "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "hf")]) == 2
    assert "run folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    assert main(["export", "--run", str(tmp_path / "empty"), "--out", str(tmp_path / "hf")]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err


def test_export_of_a_real_polycom_train_run(tmp_path):
    """`polycom train` (a few steps) -> `polycom export` -> Auto API: same logits and same tokenizer as the run."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from polycom.train.checkpoint import load_run

    run = tmp_path / "run"
    train_args = ["train", "--steps", "3", "--out", str(run), "--no-progress", "--model.activation=polynorm"]
    train_args += ["--model.d_model=32", "--model.n_layers=2", "--model.n_heads=2", "--model.max_seq_len=64"]
    train_args += ["--train.batch_size=4", "--train.seq_len=32", "--train.eval_batches=1", "--train.device=cpu"]
    train_args += [f"--data.cache_dir={tmp_path / 'cache'}"]
    assert main(train_args) == 0
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "hf")]) == 0

    harness, _, tokenizer, _, _ = load_run(run)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = hf_tok(TEXT[:60], return_tensors="pt").input_ids
    assert ids[0].tolist() == tokenizer.encode(TEXT[:60])
    torch.testing.assert_close(model(ids).logits, harness(ids).logits, rtol=0, atol=1e-6)
    # the trained PolyNorm coefficients moved away from their init and were exported per layer
    coeffs = [layer.mlp.act.weight.detach() for layer in model.model.layers]
    assert all(not torch.allclose(c, torch.full((3,), 1 / 3)) for c in coeffs)
