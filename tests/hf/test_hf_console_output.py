"""`polycom convert` / `polycom export` output: no transformers progress bars, the report fits 80 columns and pipes.

The full Markdown table is printed only to a terminal wide enough for it; a narrower terminal or a pipe
gets the compact form (lines of at most 80 columns, nothing cut short), and ``--report FILE.md`` keeps
the full table.
"""

from __future__ import annotations

import json
import logging
import sys

import pytest
from hf_tiny_models import one_torch_thread_hf, tiny_models, tiny_moe_models  # noqa: F401  (autouse fixture)

from polycom.cli import main
from polycom.hf.quiet import quiet_transformers
from polycom.hf.report import ConversionReport, MLPChange
from polycom.utils.terminal import compact_width

BAR_TEXT = ("Loading weights", "Writing model shards", "it/s]", "%|")


def _no_bars(text: str) -> None:
    for noise in BAR_TEXT:
        assert noise not in text, f"progress-bar text {noise!r} in output:\n{text}"


def _bar_state() -> tuple:
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as hf_logging

    return hf_logging.is_progress_bar_enabled(), are_progress_bars_disabled(), hf_logging.get_verbosity()


def _terminal(monkeypatch, columns: int) -> None:
    """stdout behaves as a terminal of `columns` columns."""
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    monkeypatch.setenv("COLUMNS", str(columns))


def test_convert_prints_no_bars_and_a_compact_report_in_a_pipe(tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)  # short relative paths: a path is printed whole, however long
    tiny_models()["llama"]().save_pretrained("llama")
    capfd.readouterr()
    before = _bar_state()
    report_md = tmp_path / "conversion.md"
    argv = ["convert", "--model", "llama", "--out", "out", "--report", "conversion.md"]
    assert main(argv) == 0
    out, err = capfd.readouterr()
    _no_bars(out + err)
    assert err == ""
    assert _bar_state() == before  # bars and log level restored after the command
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in out
    assert "| module |" not in out  # not the wide table
    # both layers changed the same way: one entry naming the first and last module, whole
    assert "model.layers.0.mlp to model.layers.1.mlp (2 MLPs):" in lines
    assert "  hidden 64 -> 64, params 6,144 -> 6,148 each" in lines
    assert "2 MLPs changed" in lines and "model parameters 22,688 -> 22,696 (+8)" in lines
    full = report_md.read_text()
    assert (
        "| model.layers.0.mlp | gated | - | SiLUActivation | activation replaced | 64 -> 64 | 6,144 -> 6,148 |" in full
    )
    assert "| model.layers.1.mlp |" in full and full.endswith("\n")


def test_convert_report_width_follows_the_terminal(tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny_moe_models()["olmoe"]().save_pretrained("olmoe")
    capfd.readouterr()
    model = "olmoe"

    _terminal(monkeypatch, 80)
    assert main(["convert", "--model", model, "--out", "a", "--per-expert"]) == 0
    out, err = capfd.readouterr()
    _no_bars(out + err)
    assert max(len(line) for line in out.splitlines()) <= 80 and "…" not in out and "| module |" not in out
    flowing = " ".join(out.split())  # the text with its line breaks undone
    assert "experts (4 experts, 4 coefficient sets), was SiLUActivation: activation replaced" in flowing
    assert "2 MLPs changed (2 expert blocks, 8 experts)" in out
    assert "--report FILE.md writes the full table" in out

    _terminal(monkeypatch, 200)  # wide enough for the Markdown table: printed as is
    report_json = tmp_path / "r.json"
    argv = ["convert", "--model", model, "--out", str(tmp_path / "b"), "--per-expert", "--report", str(report_json)]
    assert main(argv) == 0
    out = capfd.readouterr().out
    assert "| model.layers.0.mlp.experts | experts | 4 (4 coefficient sets) |" in out
    assert json.loads(report_json.read_text())["num_changed"] == 2  # any other suffix: JSON as before


def _change(name: str, **kw) -> MLPChange:
    base = dict(
        kind="experts-plain",
        action="rewritten as plain PolyCom experts",
        old_activation="Qwen3MoeSiLUActivationWithALongName",
        activation_attr="act_fn",
        d_model=4096,
        hidden_before=14336,
        hidden_after=21504,
        params_before=1_409_286_144,
        params_after=1_409_286_152,
        num_experts=128,
        coefficient_sets=128,
    )
    return MLPChange(name=name, **{**base, **kw})


def test_compact_report_keeps_long_names_whole_within_the_width(capsys, monkeypatch):
    names = [f"model.language_model.decoder.layers.{i}.feed_forward.experts" for i in range(3)]
    changes = [_change(names[0]), _change(names[1]), _change(names[2], hidden_after=21000)]
    report = ConversionReport(
        "polynorm", "ungated", 3, per_expert=True, changes=changes, params_before=10, params_after=7
    )
    assert compact_width() == 80  # stdout is a pipe here
    text = report.to_compact(compact_width())
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in text
    words = text.split()
    for name in (names[0], names[1], names[2], "Qwen3MoeSiLUActivationWithALongName:", "1,409,286,144"):
        assert name in words or name + ":" in words, name  # never split across lines
    # the first two are changed alike and grouped; the third differs and has its own entry
    assert lines[2:4] == [f"{names[0]} to", f"    {names[1]} (2 MLPs):"]
    assert f"{names[2]}:" in lines and "hidden 14336 -> 21000, params 1,409,286,144 -> 1,409,286,152" in text
    assert text.count("each") == 1  # only the grouped entry's counts are per MLP
    assert "3 MLPs changed (3 expert blocks, 384 experts)" in lines
    assert "model parameters 10 -> 7 (-3)" in lines
    assert "| module |" in report.to_markdown()  # the full table is unchanged
    _terminal(monkeypatch, 60)  # a terminal narrower than 80: its own width
    assert compact_width() == 60
    for line in report.to_compact(compact_width()).splitlines():
        assert len(line) <= 60 or len(line.split()) == 1, line  # only a name longer than the width overhangs


def test_export_prints_no_bars(tmp_path, capfd):
    from test_hf_export import _fake_run

    from polycom.data import ByteTokenizer
    from polycom.models import ModelConfig

    cfg = ModelConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4, activation="polynorm")
    _fake_run(tmp_path / "run", cfg, ByteTokenizer())
    capfd.readouterr()
    before = _bar_state()
    assert main(["export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 0
    out, err = capfd.readouterr()
    _no_bars(out + err)
    assert err == "" and out.startswith("exported ")
    assert _bar_state() == before


def test_quiet_transformers_keeps_warnings_unless_asked_and_restores_on_error():
    from transformers.utils import logging as hf_logging

    logger = hf_logging.get_logger("transformers.modeling_utils")
    before = _bar_state()
    with quiet_transformers():
        assert not hf_logging.is_progress_bar_enabled()
        assert logger.isEnabledFor(logging.WARNING)  # a user's model loading keeps its warnings
    assert _bar_state() == before
    with pytest.raises(ValueError, match="boom"), quiet_transformers(logging.ERROR):
        assert not logger.isEnabledFor(logging.WARNING) and logger.isEnabledFor(logging.ERROR)
        raise ValueError("boom")  # errors propagate
    assert _bar_state() == before
