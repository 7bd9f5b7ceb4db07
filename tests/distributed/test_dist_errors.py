"""Bad layouts, missing rendezvous, missing peers and bad checkpoints: clear errors, on every rank, no hang."""

from __future__ import annotations

import pytest
import torch
from dist_harness import run_workers, values
from dist_workers import init_error_worker, missing_peer_worker, skipped_collective_worker, tiny_config

from polycom.distributed import DistContext, ParallelConfig, init_distributed, parallelize
from polycom.distributed.parallelize import check_tp_compatible
from polycom.errors import UserError
from polycom.models import build_model
from polycom.train.checkpoint import export_safetensors, load_sharded, save_sharded

pytestmark = pytest.mark.distributed

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def clean_env(monkeypatch):
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.slow
def test_world_size_not_divisible_by_tp_fails_on_every_rank():
    messages = values(run_workers(init_error_worker, 2, 4, timeout_s=60))
    assert len(messages) == 2
    for message in messages:
        assert message.startswith("UserError: world size 2 is not divisible by parallel.tp=4"), message


def test_missing_rendezvous_variables(clean_env):
    clean_env.setenv("WORLD_SIZE", "2")
    clean_env.setenv("RANK", "0")
    with pytest.raises(UserError, match="MASTER_ADDR, MASTER_PORT are not set.*torchrun"):
        init_distributed(ParallelConfig())


def test_bad_torchrun_environment(clean_env):
    clean_env.setenv("WORLD_SIZE", "two")
    with pytest.raises(UserError, match="WORLD_SIZE='two' is not an integer"):
        init_distributed(ParallelConfig())
    clean_env.setenv("WORLD_SIZE", "2")
    clean_env.setenv("RANK", "5")
    with pytest.raises(UserError, match="RANK=5, WORLD_SIZE=2"):
        init_distributed(ParallelConfig())


def test_single_process_layouts(clean_env):
    ctx = init_distributed(ParallelConfig())
    assert (ctx.world_size, ctx.rank, ctx.dp_size, ctx.tp_size, ctx.is_main, ctx.mesh) == (1, 0, 1, 1, True, None)
    model = build_model(tiny_config())
    assert parallelize(model, ParallelConfig(), ctx) is model
    with pytest.raises(UserError, match="parallel.tp=2 needs 2 processes"):
        init_distributed(ParallelConfig(tp=2))
    with pytest.raises(UserError, match="parallel.tp must be an integer >= 1"):
        init_distributed(ParallelConfig(tp=0))
    with pytest.raises(UserError, match="timeout_s must be > 0"):
        init_distributed(ParallelConfig(timeout_s=0))


def test_tp_divisibility_and_unsupported_layers():
    check_tp_compatible(build_model(tiny_config()), 4)  # 4 heads, hidden 128: fine
    with pytest.raises(UserError, match=r"layers\.0\.attn: n_heads=4 is not divisible by parallel.tp=3"):
        check_tp_compatible(build_model(tiny_config()), 3)
    with pytest.raises(UserError, match=r"layers\.0\.mlp: MLP hidden size 100 is not divisible by parallel.tp=8"):
        check_tp_compatible(build_model(tiny_config(n_heads=8, hidden_size=100)), 8)
    with pytest.raises(UserError, match="qk_norm"):
        check_tp_compatible(build_model(tiny_config(qk_norm=True)), 2)


def test_tp_with_data_parallel_needs_fsdp():
    ctx = DistContext(rank=0, world_size=4, dp_size=2, tp_size=2, mesh=object())
    with pytest.raises(UserError, match="needs parallel.fsdp=true"):
        parallelize(build_model(tiny_config()), ParallelConfig(tp=2, ddp=True), ctx)


@pytest.mark.slow
def test_missing_peer_times_out_instead_of_hanging():
    # one process told that the world has 2 ranks: its peer never arrives
    results = values(run_workers(missing_peer_worker, 1, 3, timeout_s=60, env={"WORLD_SIZE": "2"}))
    message, seconds = results[0]
    assert message.startswith("UserError: rank 0: could not join the process group"), message
    assert "parallel.timeout_s" in message
    assert seconds < 30


@pytest.mark.slow
def test_skipped_collective_times_out_instead_of_hanging():
    results = values(run_workers(skipped_collective_worker, 2, 3, timeout_s=60))
    message, seconds = results[0]
    assert message != "no error"
    assert 2 < seconds < 9, (message, seconds)


def test_bad_checkpoint_folders(tmp_path):
    model = build_model(tiny_config())
    with pytest.raises(UserError, match="does not exist"):
        load_sharded(tmp_path / "nope", model, None, DistContext())
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a polycom distributed checkpoint"):
        load_sharded(tmp_path / "empty", model, None, DistContext())
    with pytest.raises(UserError, match="not a polycom distributed checkpoint"):
        export_safetensors(tmp_path / "empty", tmp_path / "out.safetensors")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "polycom_meta.json").write_text("{not json")
    with pytest.raises(UserError, match="unreadable"):
        load_sharded(bad, model, None, DistContext())


def test_single_process_save_load_roundtrip_and_optimizer_mismatch(tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_config())
    save_sharded(tmp_path / "ck", model, None, {"step": 7}, DistContext())
    other = build_model(tiny_config())
    assert load_sharded(tmp_path / "ck", other, None, DistContext()) == {"step": 7}
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name
    opt = torch.optim.AdamW(other.parameters())
    with pytest.raises(UserError, match="holds no optimizer state"):
        load_sharded(tmp_path / "ck", other, opt, DistContext())
    # saving again over the folder replaces it atomically
    save_sharded(tmp_path / "ck", other, opt, {"step": 8}, DistContext())
    assert load_sharded(tmp_path / "ck", model, torch.optim.AdamW(model.parameters()), DistContext()) == {"step": 8}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_export_command_line(tmp_path, capsys):
    from safetensors import safe_open

    from polycom.cli import main

    out = str(tmp_path / "out.safetensors")
    assert main(["export", "--checkpoint", str(tmp_path / "missing"), "--out", out]) == 2
    assert "polycom export: error: checkpoint folder" in capsys.readouterr().err
    model = build_model(tiny_config(tie_embeddings=True))
    save_sharded(tmp_path / "ck", model, None, {}, DistContext())
    assert main(["export", "--checkpoint", str(tmp_path / "ck"), "--out", out, "--step", "3"]) == 2
    assert "--step and --no-verify apply to --run" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(tmp_path / "ck"), "--out", out]) == 0
    assert main(["export", "--checkpoint", str(tmp_path / "ck"), "--out", out]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(tmp_path / "ck"), "--out", out, "--overwrite"]) == 0
    with safe_open(str(tmp_path / "out.safetensors"), "pt") as f:
        assert set(f.keys()) == set(model.state_dict())
        assert "lm_head.weight" not in set(f.keys())
        assert '"tie_embeddings": true' in f.metadata()["polycom_config"]
        torch.testing.assert_close(f.get_tensor("embed.weight"), model.embed.weight.detach(), rtol=0, atol=0)
