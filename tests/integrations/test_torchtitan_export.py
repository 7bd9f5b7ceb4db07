"""torchtitan checkpoint (DCP, as torchtitan's checkpointer writes it) -> polycom Hugging Face folder -> same logits.

The checkpoint is written the way torchtitan's CheckpointManager writes a model: its `ModelWrapper`
state dict (flattened model FQNs) through `torch.distributed.checkpoint.save`. Weights and coefficients
are random (not the init), so a mis-mapped tensor changes the logits.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torchtitan.components.checkpoint import ModelWrapper

from polycom.errors import UserError
from polycom.integrations.torchtitan import recipes
from polycom.integrations.torchtitan.export import (
    build_torchtitan_model,
    export_checkpoint,
    main,
    state_dict_to_polycom,
)
from polycom.train.config import apply_override

pytestmark = pytest.mark.slow


def _trained_like(name: str, overrides: tuple[str, ...] = (), seed: int = 0) -> torch.nn.Module:
    tc = recipes.train_config(name)
    for item in overrides:
        apply_override(tc, item)
    model = build_torchtitan_model(name, tc.model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            scale = 0.3 if pname.endswith(("act.weight", "act.bias")) else 0.05
            p.add_(torch.randn(p.shape, generator=gen) * scale)
        for bname, b in model.named_buffers():
            if bname.endswith("expert_bias_E"):  # trained load balancing moves the top-k choice
                b.copy_(torch.randn(b.shape, generator=gen) * 0.05)
    return model


def _save(model: torch.nn.Module, folder) -> None:
    dcp.save(ModelWrapper(model).state_dict(), checkpoint_id=str(folder))


@torch.no_grad()
def _logits(model, length: int = 16, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, model.config.vocab_size, (2, length), generator=torch.Generator().manual_seed(seed))
    positions = torch.arange(length).repeat(2, 1)
    return ids, model(ids, positions, model.get_attention_masks(positions)).float()


def _tokenizer_folder(tmp_path, vocab_size: int):
    from polycom.data.tokenizers import train_bpe

    tok = train_bpe(["To be, or not to be, that is the question. " * 40], vocab_size=300)
    assert tok.vocab_size <= vocab_size
    folder = tmp_path / "assets"
    folder.mkdir()
    tok._tok.save(str(folder / "tokenizer.json"))
    return folder


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("polycom_debug_polynorm", ()),
        ("polycom_debug_moe_polyrelu", ()),
        ("polycom_debug_moe_polynorm", ("model.moe.shared_coefficients=false",)),  # one coefficient set per expert
        ("polycom_debug_moe_polyrelu", ("model.qk_norm=true",)),  # torchtitan's per-head QK-norm, as the paper MoE
        ("polycom_debug_swiglu", ()),
    ],
)
def test_export_round_trip_gives_the_torchtitan_logits(tmp_path, name, overrides):
    from polycom.hf.persistence import load_model_folder

    model = _trained_like(name, overrides).eval()
    ckpt = tmp_path / "outputs" / "checkpoint" / "step-10"
    _save(model, ckpt)
    tokenizer = _tokenizer_folder(tmp_path, model.config.vocab_size)
    out = export_checkpoint(ckpt, tmp_path / "hf", config=name, tokenizer=tokenizer, model_overrides=list(overrides))
    hf, hf_tok = load_model_folder(out)
    ids, expected = _logits(model)
    got = hf(ids).logits.float()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    assert hf.config.activation == recipes.train_config(name).model.activation_name
    assert hf_tok is not None and hf_tok.decode(hf_tok.encode("to be", add_special_tokens=False)) == "to be"


def test_cli_exports_and_refuses_a_checkpoint_of_another_config(tmp_path, capsys):
    model = _trained_like("polycom_debug_swiglu").eval()
    ckpt = tmp_path / "checkpoint" / "step-5"
    _save(model, ckpt)
    # The SwiGLU checkpoint has w3 and no coefficients: exporting it as the PolyNorm config must name that.
    assert main([str(ckpt), str(tmp_path / "hf"), "--config", "polycom_debug_polynorm"]) == 2
    err = capsys.readouterr().err
    assert "does not hold" in err and "act.weight" in err
    assert not (tmp_path / "hf").exists()
    assert main([str(ckpt), str(tmp_path / "hf"), "--config", "polycom_debug_swiglu"]) == 0
    assert (tmp_path / "hf" / "model.safetensors").is_file()


def test_model_changes_on_the_command_line_are_applied(tmp_path):
    name = "polycom_debug_polynorm"
    tc = recipes.train_config(name)
    tc.model.activation_order = 2
    model = build_torchtitan_model(name, tc.model)
    ckpt = tmp_path / "checkpoint" / "step-1"
    _save(model, ckpt)
    with pytest.raises(UserError, match="has shape"):
        export_checkpoint(ckpt, tmp_path / "a", config=name)  # order 3 expected: coefficient shapes differ
    out = export_checkpoint(ckpt, tmp_path / "b", config=name, model_overrides=["--model.activation_order=2"])
    assert (out / "config.json").read_text().count('"activation_order": 2') == 1


def test_bad_input_is_named(tmp_path):
    with pytest.raises(UserError, match="missing does not exist"):
        export_checkpoint(tmp_path / "missing", tmp_path / "out", config="polycom_debug_polynorm")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no .metadata file"):
        export_checkpoint(tmp_path / "empty", tmp_path / "out", config="polycom_debug_polynorm")
    with pytest.raises(UserError, match="did you mean: polycom_debug_polynorm"):
        export_checkpoint(tmp_path / "empty", tmp_path / "out", config="polycom_debug_polynrm")
    with pytest.raises(UserError, match="tokenizer file"):
        export_checkpoint(tmp_path / "empty", tmp_path / "out", config="polycom_debug_polynorm", tokenizer=tmp_path)


def test_unknown_entries_are_named():
    mc = recipes.train_config("polycom_debug_moe_polynorm").model
    with pytest.raises(UserError, match="no polycom counterpart"):
        state_dict_to_polycom({"layers.0.feed_forward.gate.weight": torch.ones(4)}, mc)
    with pytest.raises(UserError, match="unexpected entry"):
        state_dict_to_polycom({"encoder.weight": torch.ones(4)}, mc)


def test_polycom_tools_run_on_an_exported_torchtitan_model(tmp_path, capsys):
    """What the export is for: polycom generate, eval and analyze model on the folder."""
    from polycom.cli import main as polycom_main

    name = "polycom_debug_polynorm"
    model = _trained_like(name).eval()
    ckpt = tmp_path / "checkpoint" / "step-3"
    _save(model, ckpt)
    out = export_checkpoint(ckpt, tmp_path / "hf", config=name, tokenizer=_tokenizer_folder(tmp_path, 2048))
    text = tmp_path / "text.txt"
    text.write_text("To be, or not to be, that is the question.\n" * 20)
    assert polycom_main(["generate", "--run", str(out), "--prompt", "To be", "--temperature", "0",
                         "--max-new-tokens", "4", "--device", "cpu"]) == 0  # fmt: skip
    assert capsys.readouterr().out.startswith("To be")
    assert polycom_main(["eval", "--model", str(out), "--text", str(text), "--out", str(tmp_path / "eval"),
                         "--device", "cpu", "--max-length", "64"]) == 0  # fmt: skip
    assert (tmp_path / "eval" / "results.json").is_file()
    assert polycom_main(["analyze", "model", "--run", str(out), "--text", str(text), "--tokens", "256",
                         "--seq-len", "64", "--device", "cpu", "--out", str(tmp_path / "analysis")]) == 0  # fmt: skip
    assert any((tmp_path / "analysis").iterdir())
