"""Run config: presets, TOML files, --section.key=value overrides, unknown keys, types."""

import pytest

from polycom.errors import UserError
from polycom.models import get_preset
from polycom.train.cli_overrides import OverrideParser, enable_overrides
from polycom.train.config import TrainConfig, load_config, parse_override


def test_defaults_and_preset():
    cfg = load_config()
    assert cfg.model == get_preset("tiny")
    cfg = load_config(preset="small")
    assert cfg.model.d_model == get_preset("small").d_model and cfg.preset == "small"


def test_overrides_are_parsed_as_toml_values():
    assert parse_override("--model.d_model=512") == (["model", "d_model"], 512)
    assert parse_override("--optim.lr=1e-3") == (["optim", "lr"], 1e-3)
    assert parse_override("--train.compile=true") == (["train", "compile"], True)
    assert parse_override("--model.activation=polynorm") == (["model", "activation"], "polynorm")
    assert parse_override("--model.moe.top_k=4") == (["model", "moe", "top_k"], 4)
    cfg = load_config(
        overrides=["--model.d_model=64", "--optim.lr=1", "--model.activation=polyrelu", "--model.moe.num_experts=4"]
    )
    assert cfg.model.d_model == 64 and cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.model.activation == "polyrelu" and cfg.model.moe.num_experts == 4


def test_toml_file_then_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        'preset = "tiny"\n[model]\nactivation = "gelu"\nd_model = 64\n[train]\nsteps = 7\n[optim]\nlr = 0.01\n'
    )
    cfg = load_config(path, overrides=["--train.steps=9"])
    assert cfg.model.activation == "gelu" and cfg.model.d_model == 64
    assert cfg.train.steps == 9 and cfg.optim.lr == 0.01
    again = TrainConfig.from_dict(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict()


@pytest.mark.parametrize(
    "override, listed",
    [
        ("--train.stepz=3", "train.steps"),
        ("--model.dmodel=3", "model.d_model"),
        ("--optim.learning_rate=3", "optim.lr"),
        ("--model.moe.experts=3", "model.moe.num_experts"),
        ("--parallel.fsdpp=true", "parallel.fsdp"),
    ],
)
def test_unknown_key_lists_valid_keys(override, listed):
    with pytest.raises(UserError, match="unknown key") as info:
        load_config(overrides=[override])
    assert listed in str(info.value)


def test_bad_section_type_and_file(tmp_path):
    with pytest.raises(UserError, match="valid sections"):
        load_config(overrides=["--trainer.steps=3"])
    with pytest.raises(UserError, match="must be of type int"):
        load_config(overrides=["--train.steps=fast"])
    with pytest.raises(UserError, match="must look like"):
        load_config(overrides=["--steps"])
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nsteps=")
    with pytest.raises(UserError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(UserError, match="unknown model preset"):
        load_config(preset="gigantic")
    with pytest.raises(UserError, match="d_model"):
        load_config(overrides=["--model.d_model=130", "--model.n_heads=4"])  # not divisible


def test_override_parser_collects_dotted_options():
    import argparse

    parser = enable_overrides(argparse.ArgumentParser())
    parser.add_argument("--steps", type=int)
    assert isinstance(parser, OverrideParser)
    args = parser.parse_args(["--model.d_model", "64", "--steps", "3", "--optim.lr=0.1", "--data.path=/a/b.c"])
    assert args.steps == 3
    assert args.overrides == ["--model.d_model=64", "--optim.lr=0.1", "--data.path=/a/b.c"]


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
@pytest.mark.parametrize("key", ["lr", "min_lr_ratio", "grad_clip", "weight_decay", "eps"])
def test_non_finite_optim_values_are_refused_up_front(key, value):
    with pytest.raises(UserError, match=rf"optim\.{key} must be a finite number, got {value}"):
        load_config(overrides=[f"--optim.{key}={value}"])


def test_data_text_errors_is_checked_and_reaches_the_preparation(monkeypatch):
    with pytest.raises(UserError, match="data.text_errors must be strict or replace"):
        load_config(overrides=["--data.text_errors=ignore"])
    from polycom.train import data_setup

    seen = {}
    monkeypatch.setattr(data_setup, "resolve_prepared_data", lambda prepare, **kw: seen.setdefault("p", prepare))
    monkeypatch.setattr(data_setup, "TokenShards", lambda folder: folder)
    cfg = load_config(overrides=["--data.text_errors=replace", "--data.source=notes.txt"])
    data_setup.resolve_data(cfg.data, show_progress=False)
    assert seen["p"].text_errors == "replace" and seen["p"].source == "notes.txt"
