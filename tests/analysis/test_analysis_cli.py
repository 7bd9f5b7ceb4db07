"""`polycom analyze` end to end: outputs on good input, one clear line and exit 2 on bad input."""

import json

import pytest
import torch

from polycom.cli import main
from polycom.data import ByteTokenizer
from polycom.models import build_model, get_preset
from polycom.train.checkpoint import save_checkpoint


def _make_run(folder, activation: str):
    """A harness run folder (config.json, tokenizer, one checkpoint) holding a tiny model."""
    cfg = get_preset("tiny", activation=activation, n_layers=2, max_seq_len=64)
    model = build_model(cfg)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model": cfg.to_dict()}))
    ByteTokenizer().save(folder / "tokenizer")
    save_checkpoint(folder, 1, {"model": model.state_dict()})
    return model


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_analyze_model_on_run_folders(tmp_path, capsys):
    _make_run(tmp_path / "swiglu", "swiglu")
    _make_run(tmp_path / "polynorm", "polynorm")
    out = tmp_path / "report"
    rc = main(
        ["analyze", "model", "--run", str(tmp_path / "swiglu"), "--run", str(tmp_path / "polynorm"), "--tokens", "256",
         "--seq-len", "64", "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    report = json.loads((out / "model_analysis.json").read_text())
    assert [r["activation"] for r in report["runs"]] == ["swiglu", "polynorm"]
    assert all(r["input_shape"] == [4, 64] for r in report["runs"])
    assert "embedded Shakespeare" in report["runs"][0]["validation_source"]
    for name in ("model_erank.png", "model_similarity.png", "model_activations.png", "model_coefficients.png"):
        assert (out / name).stat().st_size > 0
    assert "| polynorm | polynorm | 2 |" in capsys.readouterr().out


def test_analyze_model_on_hf_folder(tmp_path):
    from polycom.hf.export import export_model

    model = _make_run(tmp_path / "run", "polyrelu")
    export_model(model, ByteTokenizer(), tmp_path / "hf")
    text = tmp_path / "val.txt"
    text.write_text("To be, or not to be, that is the question. " * 20)
    out = tmp_path / "report"
    rc = main(
        ["analyze", "model", "--run", str(tmp_path / "hf"), "--run", str(tmp_path / "run"), "--text", str(text),
         "--tokens", "128", "--seq-len", "32", "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    runs = json.loads((out / "model_analysis.json").read_text())["runs"]
    assert [r["kind"] for r in runs] == ["hf", "run"]
    # the exported model is the same network: same ranks, coefficients and hidden-state similarity
    assert runs[0]["effective_rank"][1]["weights"]["up_proj"]["erank"] == pytest.approx(
        runs[1]["effective_rank"][1]["weights"]["up_proj"]["erank"], rel=1e-6
    )
    assert runs[0]["polycom_coefficients"][0]["weight"] == pytest.approx(runs[1]["polycom_coefficients"][0]["weight"])
    assert runs[0]["similarity"]["adjacent"] == pytest.approx(runs[1]["similarity"]["adjacent"], abs=1e-4)


def test_run_folder_without_checkpoint(tmp_path, capsys):
    run = tmp_path / "empty-run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": get_preset("tiny").to_dict()}))
    assert main(["analyze", "model", "--run", str(run), "--out", str(tmp_path / "o")]) == 2
    err = _error_line(capsys)
    assert "polycom analyze: error:" in err and "no checkpoint" in err and "empty-run" in err


def test_missing_and_non_model_folders(tmp_path, capsys):
    assert main(["analyze", "model", "--run", str(tmp_path / "nope")]) == 2
    assert "does not exist" in _error_line(capsys)
    (tmp_path / "plain").mkdir()
    assert main(["analyze", "model", "--run", str(tmp_path / "plain")]) == 2
    assert "neither a polycom run folder" in _error_line(capsys)


def test_bad_device_and_labels(tmp_path, capsys):
    _make_run(tmp_path / "r", "gelu")
    assert main(["analyze", "model", "--run", str(tmp_path / "r"), "--device", "nonsense"]) == 2
    assert "--device 'nonsense'" in _error_line(capsys)
    assert main(["analyze", "model", "--run", str(tmp_path / "r"), "--label", "a", "--label", "b"]) == 2
    assert "2 --label value(s) for 1 --run" in _error_line(capsys)


def test_approx_bad_input(tmp_path, capsys):
    assert main(["analyze", "approx", "--targets", "wiggle", "--out", str(tmp_path)]) == 2
    assert "unknown target function 'wiggle'" in _error_line(capsys)
    assert main(["analyze", "approx", "--activations", "relu", "softsign", "--out", str(tmp_path)]) == 2
    assert "unknown activation 'softsign'" in _error_line(capsys)
    assert main(["analyze", "approx", "--widths", "8", "0", "--out", str(tmp_path)]) == 2
    assert "widths must be positive integers" in _error_line(capsys)
    with pytest.raises(SystemExit) as exc:  # argparse: --widths needs at least one value
        main(["analyze", "approx", "--widths"])
    assert exc.value.code == 2


def test_approx_cli_small_run(tmp_path, capsys):
    out = tmp_path / "approx"
    rc = main(
        ["analyze", "approx", "--targets", "abspow1d", "--activations", "relu,polyrelu", "--widths", "2", "8",
         "--seeds", "1", "--adam-steps", "50", "--lbfgs-steps", "10", "--n-train", "64", "--n-test", "64",
         "--jobs", "1", "--no-progress", "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    data = json.loads((out / "approx.json").read_text())
    assert {f["activation"] for f in data["fits"]} == {"relu", "polyrelu"}
    assert (out / "approx.png").stat().st_size > 0 and (out / "approx.md").is_file()


def test_represent_cli(tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["analyze", "represent", "--max-level", "5", "--inputs", "256", "--out", str(out)]) == 0
    data = json.loads((out / "represent.json").read_text())
    assert all(c["bitwise_equal"] for c in data["representation_checks"])
    assert {c["activation"] for c in data["representation_checks"]} == {"relu", "relu2"}
    assert data["polyrelu_units"]["x^3"]["sup_error_fp32"] == 0.0
    assert (out / "represent.png").stat().st_size > 0
    assert main(["analyze", "represent", "--max-level", "1", "--out", str(out)]) == 2
    assert "--max-level" in _error_line(capsys)


def test_analyze_without_subcommand(capsys):
    assert main(["analyze"]) == 2
    assert "approx" in capsys.readouterr().out


def test_torch_threads_restored_after_approx(tmp_path):
    torch.set_num_threads(2)  # the autouse fixture restores the suite's setting afterwards
    before = torch.get_num_threads()
    main(["analyze", "approx", "--targets", "sin1d", "--activations", "relu", "--widths", "2", "--seeds", "1",
          "--adam-steps", "5", "--lbfgs-steps", "2", "--n-train", "16", "--n-test", "16", "--jobs", "1",
          "--no-progress", "--out", str(tmp_path)])  # fmt: skip
    assert torch.get_num_threads() == before
