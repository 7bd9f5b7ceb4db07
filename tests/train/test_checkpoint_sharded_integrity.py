"""Sharded (DCP) checkpoints: checksums of every file written last, verified before loading; global batch on resume."""

from __future__ import annotations

import hashlib
import json
import warnings

import pytest
import torch

from polycom.distributed import DistContext
from polycom.errors import UserError
from polycom.models import ModelConfig, build_model
from polycom.train.checkpoint import export_safetensors, load_sharded, save_sharded
from polycom.train.checkpoint.sharded import CHECKSUMS_FILE, check_global_batch


def _tiny() -> ModelConfig:
    return ModelConfig(vocab_size=256, d_model=16, n_layers=1, n_heads=2, max_seq_len=32, activation="polynorm")


def _saved(tmp_path, extra=None):
    torch.manual_seed(0)
    model = build_model(_tiny())
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randint(0, 256, (2, 8)), torch.randint(0, 256, (2, 8))).loss.backward()
    opt.step()
    folder = save_sharded(tmp_path / "ck", model, opt, extra or {"step": 3}, DistContext())
    return folder, model


def _fresh():
    model = build_model(_tiny())
    return model, torch.optim.AdamW(model.parameters())


def _shard(folder):
    shards = sorted(folder.glob("*.distcp"))
    assert shards, sorted(p.name for p in folder.iterdir())
    return shards[0]


def test_checksums_cover_every_file_and_match_sha256(tmp_path):
    folder, _ = _saved(tmp_path)
    sums = json.loads((folder / CHECKSUMS_FILE).read_text())
    on_disk = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != CHECKSUMS_FILE)
    assert sorted(sums["files"]) == on_disk
    assert {".metadata", "polycom_meta.json", "extra_state.json"} <= set(on_disk)
    for name, entry in sums["files"].items():
        data = (folder / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}, name
    assert not list(tmp_path.glob("*.tmp")) and not list(folder.glob(".*.tmp"))


def test_intact_checkpoint_loads_without_warning(tmp_path):
    folder, model = _saved(tmp_path)
    other, opt = _fresh()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_sharded(folder, other, opt, DistContext()) == {"step": 3}
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "grow"])
def test_damaged_shard_is_a_user_error_naming_the_file(tmp_path, damage):
    folder, _ = _saved(tmp_path)
    shard = _shard(folder)
    data = bytearray(shard.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
        shard.write_bytes(bytes(data))
        expected = "sha256 mismatch"
    elif damage == "truncate":
        shard.write_bytes(bytes(data[: len(data) // 2]))
        expected = f"truncated: {len(data) // 2} of {len(data)} bytes"
    elif damage == "grow":
        shard.write_bytes(bytes(data) + b"\0")
        expected = f"{len(data) + 1} bytes, expected {len(data)}"
    else:
        shard.unlink()
        expected = "missing"
    model, opt = _fresh()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError, match=rf"{shard.name}.*{expected}"):
        load_sharded(folder, model, opt, DistContext())
    for name, value in model.state_dict().items():  # nothing was read into the model
        assert torch.equal(value, before[name]), name
    with pytest.raises(UserError, match=rf"{shard.name}.*{expected}"):
        export_safetensors(folder, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_damaged_metadata_and_extra_state_are_refused(tmp_path):
    folder, _ = _saved(tmp_path)
    (folder / "extra_state.json").write_text(
        (folder / "extra_state.json").read_text().replace('"step": 3', '"step": 9')
    )
    with pytest.raises(UserError, match="extra_state.json.*sha256 mismatch"):
        load_sharded(folder, *_fresh(), DistContext())


def test_unreadable_checksums_file_is_a_user_error(tmp_path):
    folder, _ = _saved(tmp_path)
    (folder / CHECKSUMS_FILE).write_text("{not json")
    with pytest.raises(UserError, match=rf"{CHECKSUMS_FILE}.*unreadable"):
        load_sharded(folder, *_fresh(), DistContext())
    (folder / CHECKSUMS_FILE).write_text(json.dumps({"format": "other", "files": {}}))
    with pytest.raises(UserError, match=rf"{CHECKSUMS_FILE}.*format"):
        load_sharded(folder, *_fresh(), DistContext())


def test_checkpoint_without_checksums_loads_with_one_line_warning(tmp_path):
    folder, model = _saved(tmp_path)
    (folder / CHECKSUMS_FILE).unlink()  # as an older polycom wrote it
    other, opt = _fresh()
    with pytest.warns(UserWarning) as caught:
        assert load_sharded(folder, other, opt, DistContext()) == {"step": 3}
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "\n" not in messages[0], messages
    assert str(folder) in messages[0] and "no checksums" in messages[0]
    torch.testing.assert_close(other.embed.weight, model.embed.weight, rtol=0, atol=0)


def _extra(batch_size, grad_accum):
    return {"step": 3, "data": {"batch_size": batch_size}, "config": {"train": {"grad_accum": grad_accum}}}


def _with_dp(folder, dp):
    """Pretend the checkpoint came from `dp` data-parallel ranks (as a multi-process run writes it)."""
    meta_path = folder / "polycom_meta.json"
    meta = json.loads(meta_path.read_text())
    meta.update(dp_size=dp, world_size=dp)
    meta_path.write_text(json.dumps(meta))
    (folder / CHECKSUMS_FILE).unlink()  # the edit above would otherwise be refused as damage


def test_global_batch_kept_across_process_counts(tmp_path):
    folder, _ = _saved(tmp_path, _extra(batch_size=4, grad_accum=1))
    _with_dp(folder, 2)  # global batch 4 x 2 x 1 = 8
    check_global_batch(folder, batch_size=4, grad_accum=1, dp_size=2)  # same layout
    check_global_batch(folder, batch_size=8, grad_accum=1, dp_size=1)  # one process, same global batch
    check_global_batch(folder, batch_size=4, grad_accum=2, dp_size=1)
    check_global_batch(folder, batch_size=2, grad_accum=1, dp_size=4)
    check_global_batch(folder, batch_size=16, grad_accum=1, dp_size=2)  # same processes: the user's choice
    with pytest.raises(UserError) as err:
        check_global_batch(folder, batch_size=4, grad_accum=1, dp_size=1)
    message = str(err.value)
    assert "global batch 8" in message and "2 data-parallel" in message and "gives 4" in message
    assert "--train.batch_size=8" in message and "--train.grad_accum=2" in message
    with pytest.raises(UserError, match=r"--train.batch_size=1\b") as err:
        check_global_batch(folder, batch_size=4, grad_accum=1, dp_size=8)
    assert "--train.grad_accum=" not in str(err.value)  # 8 / (8 x 4) is no whole number
    with pytest.raises(UserError, match="no --train.batch_size / --train.grad_accum") as err:
        check_global_batch(folder, batch_size=4, grad_accum=1, dp_size=3)
    assert "2 data-parallel" in str(err.value)


def test_global_batch_check_skips_checkpoints_without_batch_record(tmp_path):
    folder, _ = _saved(tmp_path, {"step": 1})
    _with_dp(folder, 2)
    check_global_batch(folder, batch_size=4, grad_accum=1, dp_size=1)  # nothing recorded: nothing to compare
