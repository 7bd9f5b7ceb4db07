"""Opening a stranger's run folder: no pickle from it is executed, ``latest`` stays inside ``checkpoints/``.

The payloads write a marker file when unpickled (``__reduce__``); the marker must never appear.
"""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from polycom.distributed import DistContext
from polycom.errors import UserError
from polycom.models import ModelConfig, build_model
from polycom.train.checkpoint import find_checkpoint, load_run, load_sharded, save_checkpoint, save_sharded_checkpoint
from polycom.train.checkpoint.extra_state import read_extra_state, write_extra_state


class _Evil:
    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _tiny() -> ModelConfig:
    return ModelConfig(vocab_size=256, d_model=16, n_layers=1, n_heads=2, max_seq_len=32, activation="polynorm")


def _run_folder(folder, *, sharded: bool, extra: dict | None = None):
    model = build_model(_tiny())
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model": model.config.to_dict()}))
    if sharded:
        return model, save_sharded_checkpoint(folder, 5, model, None, extra or {"step": 5}, DistContext())
    return model, save_checkpoint(folder, 5, {"model": model.state_dict()})


# ---------------------------------------------------------------------------------------------
# sharded (DCP) extra state


def _trainer_like_extra() -> dict:
    return {
        "step": 7,
        "scheduler": {"step": 7, "warmup": 2, "name": "cosine"},
        "rng": {"torch": torch.get_rng_state(), "cuda": [torch.get_rng_state(), torch.get_rng_state()[:8]]},
        "data": {"seed": 1, "next_step": 7, "seq_len": 32, "batch_size": 4},
        "config": {"model": {"d_model": 16, "mlp_ratio": 2.5, "tie": True, "note": None}},
        "val_loss": 3.25,
        "lost": float("inf"),
    }


def test_extra_state_round_trips_without_pickle(tmp_path):
    extra = _trainer_like_extra()
    write_extra_state(tmp_path, extra)
    assert not list(tmp_path.glob("*.pt")), "extra state must not be a pickle"
    json.loads((tmp_path / "extra_state.json").read_text())  # plain JSON
    back = read_extra_state(tmp_path)
    assert torch.equal(back["rng"]["torch"], extra["rng"]["torch"]) and back["rng"]["torch"].dtype == torch.uint8
    assert [t.tolist() for t in back["rng"]["cuda"]] == [t.tolist() for t in extra["rng"]["cuda"]]
    plain = {k: v for k, v in extra.items() if k != "rng"}
    assert {k: v for k, v in back.items() if k != "rng"} == plain


def test_extra_state_refuses_what_json_cannot_hold(tmp_path):
    with pytest.raises(TypeError, match="extra_state"):
        write_extra_state(tmp_path, {"step": 1, "bad": object()})
    with pytest.raises(TypeError, match="keys"):
        write_extra_state(tmp_path, {1: "int key"})


def test_sharded_round_trip_restores_extra_state(tmp_path):
    extra = _trainer_like_extra()
    model, ckpt = _run_folder(tmp_path / "run", sharded=True, extra=extra)
    back = load_sharded(ckpt, build_model(_tiny()), None, DistContext())
    assert back["step"] == 7 and torch.equal(back["rng"]["torch"], extra["rng"]["torch"])


def test_crafted_legacy_extra_state_pickle_is_not_executed(tmp_path):
    marker = tmp_path / "MARKER"
    _, ckpt = _run_folder(tmp_path / "run", sharded=True)
    for name in ("extra_state.json", "extra_state.safetensors", "checksums.json"):  # as an older polycom wrote it
        (ckpt / name).unlink(missing_ok=True)
    with (ckpt / "extra_state.pt").open("wb") as fh:
        pickle.dump({"step": _Evil(marker)}, fh)
    with pytest.raises(UserError, match="extra_state.pt") as info:
        load_sharded(ckpt, build_model(_tiny()), None, DistContext())
    assert "\n" not in str(info.value)
    with pytest.raises(UserError):  # every tool that opens the run goes through the same reader
        load_run(tmp_path / "run")
    assert not marker.exists()


def test_legacy_extra_state_of_plain_values_still_loads(tmp_path):
    _, ckpt = _run_folder(tmp_path / "run", sharded=True)
    for name in ("extra_state.json", "extra_state.safetensors", "checksums.json"):  # as an older polycom wrote it
        (ckpt / name).unlink(missing_ok=True)
    torch.save({"step": 5, "rng": {"torch": torch.get_rng_state()}}, ckpt / "extra_state.pt")  # older polycom
    back = load_sharded(ckpt, build_model(_tiny()), None, DistContext())
    assert back["step"] == 5 and back["rng"]["torch"].dtype == torch.uint8


# ---------------------------------------------------------------------------------------------
# safe loading: only weights_only / safetensors files


def test_safe_load_run_reads_single_file_checkpoints(tmp_path):
    model, _ = _run_folder(tmp_path / "run", sharded=False)
    run = load_run(tmp_path / "run", safe=True)
    assert torch.equal(run.model.embed.weight, model.embed.weight)


def test_safe_load_run_refuses_a_sharded_checkpoint_before_unpickling(tmp_path, monkeypatch):
    _run_folder(tmp_path / "run", sharded=True)
    import torch.distributed.checkpoint as dcp

    def no_dcp(*args, **kwargs):
        raise AssertionError("DCP (which unpickles .metadata) was called in safe mode")

    monkeypatch.setattr(dcp, "load", no_dcp)
    with pytest.raises(UserError, match="export --checkpoint"):
        load_run(tmp_path / "run", safe=True)


def test_cli_generate_safe_flag(tmp_path, capsys):
    from polycom.cli import main

    _run_folder(tmp_path / "run", sharded=True)
    assert main(["generate", "--run", str(tmp_path / "run"), "--max-new-tokens", "2", "--safe"]) == 2
    assert ".metadata" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# checkpoints/latest


@pytest.mark.parametrize("target", ["../../elsewhere/step_00000009.pt", "/etc/passwd", "..", "../checkpoints"])
def test_latest_pointing_outside_checkpoints_is_refused(tmp_path, target):
    _run_folder(tmp_path / "run", sharded=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    torch.save({"x": 1}, elsewhere / "step_00000009.pt")
    (tmp_path / "run" / "checkpoints" / "latest").write_text(target + "\n")
    with pytest.raises(UserError, match="latest"):
        find_checkpoint(tmp_path / "run")


def test_latest_through_a_symlink_out_of_checkpoints_is_refused(tmp_path):
    _run_folder(tmp_path / "run", sharded=False)
    outside = tmp_path / "outside.pt"
    outside.write_bytes(b"x")
    (tmp_path / "run" / "checkpoints" / "step_00000009.pt").symlink_to(outside)
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step_00000009.pt\n")
    with pytest.raises(UserError, match="outside"):
        find_checkpoint(tmp_path / "run")


def test_latest_inside_checkpoints_still_resolves(tmp_path):
    _run_folder(tmp_path / "run", sharded=False)
    assert find_checkpoint(tmp_path / "run").name == "step_00000005.pt"
