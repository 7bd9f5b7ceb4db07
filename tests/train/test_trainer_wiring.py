"""The Trainer's wiring against independent arithmetic written in this file.

- the LR every param group holds when ``optimizer.step()`` runs (and the logged LR) is the schedule formula
  below, step by step, also after a resume;
- one step equals a manual computation: forward/backward of a copy of the model on the same batch,
  global-norm clip, then AdamW's first update with the configured weight decay on the matrices only;
- batch 8 x grad_accum 1 equals batch 4 x grad_accum 2 on the same rows (losses, gradients, parameters).

Schedule (linear warmup, cosine decay to a floor), s = 0-based index of the step about to be taken:

    lr(s) = peak * (s + 1) / warmup                                     s < warmup
    lr(s) = peak * (m + (1 - m) * (1 + cos(pi * p)) / 2),  p = min(1, (s - warmup) / (total - warmup))

AdamW, first step (m_hat = g, v_hat = g**2):  p <- p * (1 - lr * wd) - lr * g / (|g| + eps)
Clip: g <- g * min(1, clip / (||g||_2 + 1e-6)) over all parameters together (torch's clip_grad_norm_).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from polycom.distributed import DistContext
from polycom.train import Trainer, load_config, train
from polycom.train.checkpoint import find_checkpoint, load_checkpoint
from tiny_run_args import TINY_MODEL

SMALL = [
    *TINY_MODEL,
    "--model.activation=polynorm",
    "--train.batch_size=4",
    "--train.threads=1",
    "--train.eval_batches=1",
    "--train.eval_interval=0",
    "--train.log_interval=1",
    "--train.precision=fp32",
    "--train.device=cpu",
]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic sums, and robust on a shared CI machine
    yield
    torch.set_num_threads(before)


def config(data_dir, *extra):
    cfg = load_config(preset="tiny", overrides=[*SMALL, f'--data.path="{data_dir}"', *extra])
    cfg.validate()
    return cfg


def make_trainer(tmp_path, data_dir, *extra, name="run", **kwargs) -> Trainer:
    return Trainer(config(data_dir, *extra), tmp_path / name, DistContext(), **kwargs)


def schedule_lr(s: int, peak: float, warmup: int, total: int, m: float) -> float:
    if s < warmup:
        return peak * (s + 1) / warmup
    p = min(1.0, (s - warmup) / max(1, total - warmup))
    return peak * (m + (1 - m) * (1 + math.cos(math.pi * p)) / 2)


def record_step_lrs(trainer: Trainer) -> list[list[float]]:
    """Each param group's lr at the moment optimizer.step() runs, one list per step."""
    seen: list[list[float]] = []
    trainer.optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append([g["lr"] for g in opt.param_groups]))
    return seen


def record_step_grads(trainer: Trainer) -> list[dict[str, torch.Tensor]]:
    """Every parameter's gradient as optimizer.step() sees it (after accumulation and clipping)."""
    seen: list[dict[str, torch.Tensor]] = []
    names = {id(p): n for n, p in trainer.raw_model.named_parameters()}

    def hook(opt, args, kwargs):
        seen.append({names[id(p)]: p.grad.clone() for g in opt.param_groups for p in g["params"]})

    trainer.optimizer.register_step_pre_hook(hook)
    return seen


# ------------------------------------------------------------------------------------ learning rate

LR_RUN = ("--train.steps=12", "--optim.lr=2e-3", "--optim.warmup_steps=4", "--optim.min_lr_ratio=0.2")


def test_every_param_group_gets_the_schedule_lr_at_every_step(tmp_path, data_dir):
    records: list[dict] = []
    trainer = make_trainer(tmp_path, data_dir, *LR_RUN, on_event=records.append)
    seen = record_step_lrs(trainer)
    trainer.fit()
    want = [schedule_lr(s, 2e-3, 4, 12, 0.2) for s in range(12)]
    assert len(seen) == 12
    for s, group_lrs in enumerate(seen):
        assert len(group_lrs) == 2  # decay and no-decay groups
        assert group_lrs == pytest.approx([want[s]] * 2, rel=1e-12, abs=0), f"step {s}"
    logged = {r["step"]: r["lr"] for r in records if "lr" in r}
    assert [logged[s + 1] for s in range(12)] == pytest.approx(want, rel=1e-12, abs=0)  # record step = steps done


def test_resumed_run_continues_the_schedule(tmp_path, data_dir):
    """Stopped after 5 steps and resumed: steps 5..11 use lr(5)..lr(11), not a restarted warmup."""

    def stop_at_5(record):
        if record.get("step") == 5 and "loss" in record:
            raise KeyboardInterrupt

    part = train(config(data_dir, *LR_RUN), tmp_path / "r", on_event=stop_at_5)
    assert part.interrupted and part.steps == 5
    state = load_checkpoint(find_checkpoint(tmp_path / "r"))
    trainer = make_trainer(tmp_path, data_dir, *LR_RUN, name="r", state=state)
    seen = record_step_lrs(trainer)
    trainer.fit()
    want = [schedule_lr(s, 2e-3, 4, 12, 0.2) for s in range(5, 12)]
    assert [lrs[0] for lrs in seen] == pytest.approx(want, rel=1e-12, abs=0)
    assert all(lrs[0] == lrs[1] for lrs in seen)


# ------------------------------------------------------------------------------ one step by hand


def _manual_first_step(trainer: Trainer, clip: float, lr: float, wd: float, eps: float):
    """Raw gradients of a copy of the model on the trainer's step-0 batch, clipped by hand -> (grads, params)."""
    model = copy.deepcopy(trainer.raw_model)
    x, y = trainer.sampler.batch(0, 0)
    model(x, y).loss.backward()
    grads = {n: p.grad.double() for n, p in model.named_parameters()}
    norm = math.sqrt(sum(float(g.square().sum()) for g in grads.values()))
    scale = min(1.0, clip / (norm + 1e-6)) if clip > 0 else 1.0
    clipped = {n: g * scale for n, g in grads.items()}
    params = {}
    for n, p in model.named_parameters():
        decay = wd if p.ndim >= 2 else 0.0  # matrices only; norm gains and PolyCom coefficients are 1-D
        g = clipped[n]
        params[n] = p.detach().double() * (1 - lr * decay) - lr * g / (g.abs() + eps)
    return clipped, params, norm


@pytest.mark.parametrize("clip", [0.0, 1e-6], ids=["no-clip", "tiny-clip"])
def test_first_step_is_manual_clip_then_adamw(tmp_path, data_dir, clip):
    """Non-default weight decay 0.37 on the matrices only, warmup lr = peak / 4, and (tiny-clip) a clip far below
    the gradient norm: the trainer's gradients and updated parameters equal the manual computation."""
    wd, peak, eps = 0.37, 0.05, 1e-8
    trainer = make_trainer(
        tmp_path,
        data_dir,
        "--train.steps=3",
        f"--optim.lr={peak}",
        "--optim.warmup_steps=4",
        f"--optim.weight_decay={wd}",
        f"--optim.grad_clip={clip}",
    )
    lr = peak / 4
    want_grads, want_params, norm = _manual_first_step(trainer, clip, lr, wd, eps)
    assert clip == 0 or norm > 1e4 * clip  # the clip really bites
    groups = {g["weight_decay"]: {id(p) for p in g["params"]} for g in trainer.optimizer.param_groups}
    assert set(groups) == {wd, 0.0}
    for n, p in trainer.raw_model.named_parameters():
        assert id(p) in groups[wd if p.ndim >= 2 else 0.0], n

    seen = record_step_grads(trainer)
    out = trainer.train_step(0)
    assert out.lr == pytest.approx(lr, rel=1e-12)
    for n, p in trainer.raw_model.named_parameters():
        g_want = want_grads[n]
        torch.testing.assert_close(seen[0][n].double(), g_want, rtol=1e-5, atol=1e-6 * g_want.abs().max().item(), msg=n)
        torch.testing.assert_close(p.detach().double(), want_params[n], rtol=0, atol=1e-4 * lr, msg=n)


def test_first_step_check_sees_the_weight_decay(tmp_path, data_dir):
    """Guard for the test above: with weight decay 0.1 instead of 0.37 some matrix moves by far more than its tolerance."""
    wd, peak = 0.37, 0.05
    trainer = make_trainer(tmp_path, data_dir, "--train.steps=3", f"--optim.lr={peak}", "--optim.warmup_steps=4")
    _, with_037, _ = _manual_first_step(trainer, 1.0, peak / 4, wd, 1e-8)
    _, with_01, _ = _manual_first_step(trainer, 1.0, peak / 4, 0.1, 1e-8)
    moved = max((with_037[n] - with_01[n]).abs().max().item() for n in with_037)
    assert moved > 20 * 1e-4 * peak / 4


# ---------------------------------------------------------------------------------- accumulation


class FixedRows:
    """A sampler that serves the same global rows however they are split into micro-batches."""

    def __init__(self, rows: list[tuple[torch.Tensor, torch.Tensor]], batch_size: int) -> None:
        self.rows, self.batch_size = rows, batch_size

    def batch(self, step: int, micro: int = 0):
        x, y = self.rows[step]
        lo = micro * self.batch_size
        return x[lo : lo + self.batch_size], y[lo : lo + self.batch_size]


def test_batch_8_equals_batch_4_times_accum_2(tmp_path, data_dir):
    steps = 3
    common = (f"--train.steps={steps}", "--optim.lr=1e-3", "--optim.warmup_steps=1", "--optim.grad_clip=0")
    whole = make_trainer(tmp_path, data_dir, *common, "--train.batch_size=8", name="whole")
    split = make_trainer(tmp_path, data_dir, *common, "--train.batch_size=4", "--train.grad_accum=2", name="split")
    rows = [whole.sampler.batch(s) for s in range(steps)]
    whole.sampler, split.sampler = FixedRows(rows, 8), FixedRows(rows, 4)
    for a, b in zip(whole.raw_model.parameters(), split.raw_model.parameters()):
        assert torch.equal(a, b)  # same seed, same initial model
    grads_whole, grads_split = record_step_grads(whole), record_step_grads(split)
    for s in range(steps):
        loss_whole, loss_split = whole.train_step(s).loss, split.train_step(s).loss
        assert loss_split == pytest.approx(loss_whole, rel=1e-6, abs=0), f"step {s}"
        for n, g in grads_whole[s].items():
            torch.testing.assert_close(grads_split[s][n], g, rtol=1e-5, atol=1e-6 * g.abs().max().item(), msg=n)
    for (n, a), b in zip(whole.raw_model.named_parameters(), split.raw_model.parameters()):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6, msg=n)
