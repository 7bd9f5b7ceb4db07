"""Training loop: loss drops, exact resume, Ctrl-C checkpoint, checksum refusal, schedule, optimizer groups."""

import math

import pytest
import torch

from polycom.errors import UserError
from polycom.models import build_model, get_preset
from polycom.train import WarmupCosine, load_config, load_run, train
from polycom.train.checkpoint import find_checkpoint, list_checkpoints, load_checkpoint
from polycom.train.metrics import read_metrics
from polycom.train.optim import build_optimizer
from tiny_run_args import TINY_RUN

SMALL = [
    *TINY_RUN,
    "--train.threads=1",  # robust to other processes on the cores (2-thread steps can stall)
    "--train.eval_batches=2",
    "--train.log_interval=5",
    "--optim.lr=1e-2",
    "--optim.warmup_steps=5",
]


DATA_CHARS = 200_000  # the data_dir fixture (tests/train/conftest.py) prepares this much text


def small_config(data_dir, *extra):
    return load_config(preset="tiny", overrides=[*SMALL, f'--data.path="{data_dir}"', *extra])


def test_thirty_steps_loss_drops(tmp_path, data_dir):
    cfg = small_config(data_dir, "--train.steps=30", "--train.eval_interval=15", "--model.activation=polynorm")
    result = train(cfg, tmp_path / "run")
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    losses = [r["loss"] for r in records if "loss" in r]
    assert result.steps == 30 and not result.interrupted
    assert math.isclose(result.initial_val_loss, math.log(256), abs_tol=0.3)  # ~uniform at init
    assert losses[-1] < losses[0] - 0.5
    assert result.final_val_loss < result.initial_val_loss - 1.0
    # run folder contract
    run = tmp_path / "run"
    for name in ("run.json", "config.json", "metrics.jsonl", "tokenizer", "checkpoints/latest"):
        assert (run / name).exists(), name
    for key in ("step", "loss", "lr", "grad_norm", "tokens_per_s", "memory_mb"):
        assert key in records[-1]
    model, mcfg, tok, _, _ = load_run(run)
    assert mcfg.activation == "polynorm"
    assert tok.decode(tok.encode("Hamlet")) == "Hamlet"
    state = load_checkpoint(find_checkpoint(run))
    for name, p in model.state_dict().items():
        assert torch.equal(p, state["model"][name])


def test_resume_is_bit_identical(tmp_path, data_dir):
    extra = ("--train.steps=12", "--train.eval_interval=6", "--train.log_interval=1", "--train.keep_checkpoints=0")
    straight = train(small_config(data_dir, *extra), tmp_path / "straight")
    # same run, stopped after 5 steps (first checkpoint), then resumed to 12
    interrupted = small_config(data_dir, *extra, "--train.checkpoint_interval=5")

    def stop_at_5(record):
        if record.get("step") == 5 and "loss" in record:
            raise KeyboardInterrupt

    part = train(interrupted, tmp_path / "split", on_event=stop_at_5)
    assert part.interrupted and part.steps == 5
    resumed = train(small_config(data_dir, *extra, "--train.checkpoint_interval=5"), tmp_path / "split", resume=True)
    assert resumed.steps == 12

    def losses(run):
        return [(r["step"], r["loss"]) for r in read_metrics(tmp_path / run / "metrics.jsonl") if "loss" in r]

    assert losses("straight") == losses("split")  # exact float equality, step by step
    a = load_checkpoint(find_checkpoint(tmp_path / "straight"))
    b = load_checkpoint(find_checkpoint(tmp_path / "split"))
    assert a["step"] == b["step"] == 12
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert straight.final_val_loss == resumed.final_val_loss


def test_keyboard_interrupt_saves_checkpoint(tmp_path, data_dir):
    def interrupt(record):
        if record.get("step") == 3:
            raise KeyboardInterrupt

    result = train(
        small_config(data_dir, "--train.steps=20", "--train.log_interval=1"), tmp_path / "r", on_event=interrupt
    )
    assert result.interrupted and result.steps == 3
    assert [p.name for p in list_checkpoints(tmp_path / "r")] == ["step_00000003.pt"]


def test_corrupt_checkpoint_is_refused_and_nothing_overwritten(tmp_path, data_dir):
    cfg = small_config(data_dir, "--train.steps=4", "--train.eval_interval=0")
    train(cfg, tmp_path / "r")
    ckpt = find_checkpoint(tmp_path / "r")
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    before = {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()}
    cfg2 = small_config(data_dir, "--train.steps=8", "--train.eval_interval=0")
    with pytest.raises(UserError, match="checksum"):
        train(cfg2, tmp_path / "r", resume=True)
    with pytest.raises(UserError, match="checksum"):
        load_run(tmp_path / "r")
    after = {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()}
    assert before == after
    # truncated
    ckpt.write_bytes(bytes(data[:100]))
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_checkpoint(ckpt)


def test_new_run_refuses_existing_run_folder(tmp_path, data_dir):
    cfg = small_config(data_dir, "--train.steps=2")
    train(cfg, tmp_path / "r")
    with pytest.raises(UserError, match="already holds a run"):
        train(cfg, tmp_path / "r")
    with pytest.raises(UserError, match="no checkpoint|not found"):
        train(cfg, tmp_path / "empty", resume=True)


def test_vocab_larger_than_model_is_refused(tmp_path, data_dir):
    with pytest.raises(UserError, match="larger than the model's vocab_size 100"):
        train(small_config(data_dir, "--model.vocab_size=100", "--train.steps=2"), tmp_path / "r")


def test_warmup_cosine_formula():
    s = WarmupCosine(peak_lr=1.0, total_steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert s.lr(0) == pytest.approx(0.1)
    assert s.lr(9) == pytest.approx(1.0)
    assert s.lr(10) == pytest.approx(1.0)
    assert s.lr(60) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the decay
    assert s.lr(110) == pytest.approx(0.1)
    assert s.lr(500) == pytest.approx(0.1)


def test_no_weight_decay_on_vectors_and_polycom_coefficients():
    cfg = load_config(preset="tiny", overrides=["--model.activation=polynorm"])
    model = build_model(get_preset("tiny", activation="polynorm"))
    opt = build_optimizer(model, cfg, torch.device("cpu"))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in model.named_parameters():
        expect = p.ndim >= 2 and ".act." not in name
        assert (id(p) in decayed) == expect, name
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_moe_run_logs_expert_load(tmp_path, data_dir):
    cfg = load_config(
        preset="moe-tiny",
        overrides=[*SMALL, f'--data.path="{data_dir}"', "--train.steps=4", "--model.activation=polynorm"],
    )
    result = train(cfg, tmp_path / "moe")
    last = [r for r in read_metrics(tmp_path / "moe" / "metrics.jsonl") if "loss" in r][-1]
    # every token of the last micro-batch (4 x 32) goes to exactly top_k = 2 experts
    assert [sum(layer) for layer in last["tokens_per_expert"]] == [4 * 32 * 2]
    assert last["aux_loss"] > 0 and result.final_val_loss < result.initial_val_loss


def test_thread_governor_picks_the_faster_setting(monkeypatch):
    from polycom.train.threads import ThreadGovernor

    calls = []
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n))
    gov = ThreadGovernor(enabled=True, first_probe=2, base_interval=3, max_interval=6)
    gov.step_done(1.0)
    gov.step_done(1.0)  # 2 steps on 2 threads -> probe 1 thread
    assert gov.current == 1
    gov.step_done(0.1)  # 1 thread is 10x faster (a busy neighbour): keep it
    assert gov.current == 1
    for _ in range(3):
        gov.step_done(0.1)
    assert gov.current == 2  # 3 steps later: probe 2 threads
    gov.step_done(1.0)  # still slow: back to 1, next probe after 6 steps
    assert gov.current == 1 and gov.interval == 6
    for _ in range(6):
        gov.step_done(0.1)
    assert gov.current == 2
    gov.step_done(0.05)  # the neighbour left: 2 threads faster -> keep 2, probe interval reset
    assert gov.current == 2 and gov.interval == 3
    assert calls == [1, 2, 1, 2]
    assert not ThreadGovernor(enabled=False).enabled
