"""The training loop: one language model, one run folder.

    result = train(cfg, "runs/my-run")                 # new run
    result = train(cfg, "runs/my-run", resume=True)    # continue from its latest checkpoint

Per optimizer step s (0-based): lr = schedule(s); for each of grad_accum micro-batches, the batch
(seed, s, micro) from `WindowSampler` -> forward under autocast (bf16 on CUDA) -> loss / grad_accum ->
backward; clip the global grad norm; AdamW step. Everything that decides step s+1 (model, optimizer,
schedule position, RNG, data position) is in the checkpoint, so on CPU a resumed run reproduces the
uninterrupted run bit for bit.

A step whose loss or gradient norm is not finite is skipped (no optimizer step; the data and the schedule
move on) and counted; more than `train.max_bad_steps` such steps in a row stop the run with an error.
Parameters that are not finite are never saved. SIGINT / SIGTERM stop after the current step and save
(every rank agrees on the step). A full disk or read-only folder is a UserError naming the path.

`Trainer` holds one run (`train_step`, `evaluate`, `save`, `load`, `fit`); the monitors it reports
through live in `monitors.py`, Ctrl-C handling in `signals.py`, the optimizer in `optim.py`, the run
folder's files in `run_files.py`. Files (rank 0 only): config.json, run.json, metrics.jsonl,
tokenizer/, checkpoints/ (see polycom.train.checkpoint).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from polycom.data.loader import WindowSampler, eval_batches
from polycom.data.shards import TokenShards
from polycom.distributed import DistContext, init_distributed, parallelize, shutdown
from polycom.errors import UserError, writing_to
from polycom.models import build_model
from polycom.ops import cpu_compile
from polycom.train.checkpoint import (
    check_global_batch,
    checkpoint_dir,
    clean_stale_temp,
    find_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_sharded,
    save_checkpoint,
    save_sharded_checkpoint,
)
from polycom.train.config import TrainConfig
from polycom.train.data_setup import resolve_data
from polycom.train.metrics import MetricsWriter
from polycom.train.monitors import Cadence, LossMonitor, MemoryMonitor, ThroughputMonitor
from polycom.train.optim import build_optimizer, clip_grad_norm
from polycom.train.run_files import initial_val_from_metrics, prepare_run_dir, write_run_files
from polycom.train.schedule import WarmupCosine
from polycom.train.signals import StopFlag
from polycom.train.threads import ThreadGovernor, thread_setting
from polycom.utils.hardware import autocast_context, matmul_dtype, peak_flops, pick_device

__all__ = ["StepOutput", "TrainResult", "Trainer", "train"]

Event = dict[str, Any]


@dataclass
class TrainResult:
    """Summary of a finished (or interrupted) run."""

    run_dir: Path
    steps: int
    interrupted: bool
    initial_val_loss: float | None
    final_val_loss: float | None
    final_train_loss: float | None
    tokens_per_s: float | None
    peak_memory_mb: float | None
    memory_kind: str
    num_parameters: int
    wall_s: float
    stop_signal: str = ""  # "SIGINT" / "SIGTERM" when a signal stopped the run
    skipped_steps: int = 0  # steps skipped for a non-finite loss or gradient norm


class NonFiniteWeights(UserError):
    """The parameters are not finite: nothing is saved (the kept checkpoints stay as they are)."""


@dataclass
class StepOutput:
    """What one optimizer step reports: mean CE loss over its micro-batches, pre-clip grad norm, lr, and the
    model output of the last micro-batch (MoE routing statistics)."""

    loss: float
    grad_norm: torch.Tensor
    lr: float
    out: Any
    skipped: bool = False  # non-finite loss or gradient norm: the optimizer step was not taken


def train(
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    resume_step: int | None = None,
    on_event: Callable[[Event], None] | None = None,
    show_progress: bool = False,
    shards: TokenShards | None = None,
) -> TrainResult:
    """Train `cfg` into `run_dir` (see the module docstring); `on_event` receives every logged record.

    resume: continue from the latest checkpoint (`resume_step`: from that kept checkpoint instead); a run
    folder without any checkpoint (stopped before its first one) starts again from step 0.
    """
    run_dir = Path(run_dir)
    cfg.validate()
    prepare_run_dir(run_dir, resume)
    # Verify the checkpoint before anything is written: a corrupt file leaves the folder untouched.
    state = _read_resume_state(run_dir, resume_step) if resume else None
    cfg = replace(cfg, train=replace(cfg.train, threads=thread_setting(cfg.train.threads)))  # POLYCOM_THREADS wins
    threads_before = torch.get_num_threads()
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    ctx = init_distributed(cfg.parallel)
    try:
        if ctx.world_size == 1 and cfg.train.device != "auto":
            ctx.device = pick_device(cfg.train.device)
        with cpu_compile.training_loop():  # a long loop of the same shapes: the compiled CPU ops pay back here
            trainer = Trainer(
                cfg, run_dir, ctx, state=state, on_event=on_event, show_progress=show_progress, shards=shards
            )
            return trainer.fit()
    finally:
        torch.set_num_threads(threads_before)
        shutdown(ctx)


def _read_resume_state(run_dir: Path, step: int | None = None) -> dict[str, Any] | None:
    """The state of the latest checkpoint (or of `step`); None when the run has no checkpoint yet.

    A multi-process (DCP) folder is only named here, loaded after parallelize. Temp files of a save that
    crashed (``.step_*.pt.tmp``, ``step_*.tmp/``) are removed first (rank 0).
    """
    if os.environ.get("RANK", "0") == "0":
        clean_stale_temp(run_dir)
    if step is None and not list_checkpoints(run_dir):
        return None  # stopped before its first checkpoint: start again from step 0 with the saved config
    path = find_checkpoint(run_dir, step)
    if path.is_dir():
        return {"dcp_path": path}
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError(f"{path} was saved by a single process; resume it with one process")
    return load_checkpoint(path, map_location="cpu")


class Trainer:
    """One run: data, model, optimizer, schedule and monitors built from `cfg` on `ctx.device`.

    `state` is a checkpoint's state (resume) or None (new run). `fit()` runs the remaining steps and
    returns the TrainResult; `train_step`, `evaluate`, `save` and `load` are its parts.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: Path,
        ctx: DistContext,
        *,
        state: dict[str, Any] | None = None,
        on_event: Callable[[Event], None] | None = None,
        show_progress: bool = False,
        shards: TokenShards | None = None,
    ) -> None:
        self.t_start = time.perf_counter()
        self.cfg, self.run_dir, self.ctx, self.on_event = cfg, run_dir, ctx, on_event
        self.device = ctx.device
        tc = cfg.train
        self._build_data(shards, show_progress)
        self._build_model(state)
        self.optimizer = build_optimizer(self.model, cfg, self.device)
        schedule_steps = cfg.optim.schedule_steps or tc.steps
        self.schedule = WarmupCosine(cfg.optim.lr, schedule_steps, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio)
        self.resumed = state is not None
        self.skipped_steps = 0
        self.start_step, self.resumed_val_loss = self.load(state) if self.resumed else (0, None)
        self.forward = torch.compile(self.model) if tc.compile else self.model

        self.metrics = MetricsWriter(run_dir / "metrics.jsonl", enabled=ctx.is_main)
        if ctx.is_main:
            with writing_to(run_dir, "the run files", "choose a writable --out with free space"):
                write_run_files(cfg, run_dir, self.shards, self.num_parameters, self.start_step, resumed=self.resumed)
                # A run started again from step 0 (no checkpoint yet) keeps no record of the lost attempt.
                self.metrics.truncate_after(self.start_step if self.resumed else -1)
        self.memory = MemoryMonitor(self.device)
        self.autocast = autocast_context(self.device, tc.precision)
        tokens_per_step = tc.batch_size * cfg.seq_len * tc.grad_accum * ctx.dp_size
        peak = peak_flops(self.device, matmul_dtype(self.device, tc.precision))
        self.throughput = ThroughputMonitor(tokens_per_step, self.flops_per_token, peak, ctx.world_size)
        self.losses = LossMonitor()
        self.cadence = Cadence.from_config(tc)
        self._in_update = False  # True while optimizer.step() may leave the parameters half-updated

    def _build_data(self, shards: TokenShards | None, show_progress: bool) -> None:
        cfg, ctx, tc = self.cfg, self.ctx, self.cfg.train
        if shards is None:
            shards = resolve_data(cfg.data, show_progress=show_progress and ctx.is_main, is_main=ctx.is_main)
        shards.check_vocab(cfg.model.vocab_size)
        self.shards = shards
        self.sampler = WindowSampler(
            shards.train, cfg.seq_len, tc.batch_size, tc.seed, dp_rank=ctx.dp_rank, dp_size=ctx.dp_size
        )
        self.val = eval_batches(
            shards.val,
            cfg.seq_len,
            tc.batch_size,
            tc.eval_batches,
            seed=tc.eval_seed if tc.eval_seed >= 0 else tc.seed + 1_000_003,
            dp_rank=ctx.dp_rank,
            dp_size=ctx.dp_size,
        )
        self.held_out = {}  # name -> validation batches of an extra held-out set (data.held_out)
        for entry in cfg.data.held_out:
            name, _, folder = entry.partition("=")
            extra = TokenShards(folder)
            extra.check_vocab(cfg.model.vocab_size)
            self.held_out[name] = eval_batches(
                extra.val, cfg.seq_len, tc.batch_size, tc.eval_batches, seed=0, dp_rank=ctx.dp_rank, dp_size=ctx.dp_size
            )

    def _build_model(self, state: dict[str, Any] | None) -> None:
        cfg, ctx = self.cfg, self.ctx
        torch.manual_seed(cfg.train.seed)
        self.raw_model = build_model(cfg.model)
        self.num_parameters = self.raw_model.num_parameters()
        self.flops_per_token = self.raw_model.flops_per_token(cfg.seq_len)
        self.raw_model.to(self.device)
        if state is not None and "model" in state:
            # A single-file checkpoint names the unwrapped model's parameters: load before parallelize.
            self.raw_model.load_state_dict(state["model"])
        self.model = self.raw_model
        if ctx.world_size > 1 or cfg.parallel.activation_checkpointing:
            self.model = parallelize(self.raw_model, cfg.parallel, ctx)

    # -------------------------------------------------------------------------------------------------
    def load(self, state: dict[str, Any]) -> tuple[int, float | None]:
        """Restore optimizer, RNG (and, for a sharded checkpoint, the model); returns (step, its val loss)."""
        if "dcp_path" in state:
            tc = self.cfg.train
            check_global_batch(state["dcp_path"], tc.batch_size, tc.grad_accum, self.ctx.dp_size)
            state = {**load_sharded(state["dcp_path"], self.model, self.optimizer, self.ctx), "optimizer": None}
        if state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and state["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        return int(state["step"]), state.get("val_loss")

    def save(self, step: int, val_loss: float | None) -> None:
        """Checkpoint after `step` steps: one file from rank 0, or every rank's shards under torchrun.

        Refuses (NonFiniteWeights) parameters that are not finite; a full disk or a read-only folder is a
        UserError naming the path, and the checkpoints kept so far stay intact.
        """
        if not self._weights_finite():
            raise NonFiniteWeights(
                f"the parameters are not finite after step {step}: not saving them, the kept checkpoints in "
                f"{checkpoint_dir(self.run_dir)} stay as they are; resume from one of them with "
                f"--resume {self.run_dir} --resume-step N and lower --optim.lr"
            )
        hint = (
            f"the kept checkpoints stay intact; free space (or make the folder writable), then --resume {self.run_dir}"
        )
        with writing_to(checkpoint_dir(self.run_dir), f"the checkpoint of step {step}", hint):
            self._save(step, val_loss)

    def _save(self, step: int, val_loss: float | None) -> None:
        tc, device = self.cfg.train, self.device
        rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []}
        extra = {
            "step": step,
            "scheduler": {**self.schedule.state_dict(), "step": step},
            "rng": rng,
            "data": {"seed": tc.seed, "next_step": step, "seq_len": self.cfg.seq_len, "batch_size": tc.batch_size},
            "config": self.cfg.to_dict(),
            "val_loss": val_loss,
            "skipped_steps": self.skipped_steps,
        }
        if self.ctx.world_size > 1:  # every rank writes its shards (torch.distributed.checkpoint)
            save_sharded_checkpoint(
                self.run_dir, step, self.model, self.optimizer, extra, self.ctx, keep=tc.keep_checkpoints
            )
            return
        if self.ctx.is_main:
            state = {"model": self.raw_model.state_dict(), "optimizer": self.optimizer.state_dict(), **extra}
            save_checkpoint(self.run_dir, step, state, keep=tc.keep_checkpoints)

    def _weights_finite(self) -> bool:
        """All parameters finite (this rank's shards; all ranks agree under torchrun)."""
        finite = True
        with torch.no_grad():
            for p in self.model.parameters():
                local = p.to_local() if hasattr(p, "to_local") else p
                if not bool(torch.isfinite(local).all()):
                    finite = False
                    break
        return not _any_rank(not finite, self.ctx)

    def evaluate(self, batches: list | None = None) -> float:
        """Mean validation CE loss over the fixed validation batches, or `batches` (averaged over ranks)."""
        batches = self.val if batches is None else batches
        self.model.eval()
        total = 0.0
        with torch.no_grad():
            for x, y in batches:
                with self.autocast:
                    out = self.forward(x.to(self.device), y.to(self.device))
                total += float(out.ce_loss)
        self.model.train()
        return _all_reduce_mean(total / len(batches), self.ctx)

    def _held_out_losses(self, record: Event) -> None:
        """Add ``val_loss_sets`` (the loss on each extra held-out set) to `record` when there are any."""
        if self.held_out:
            record["val_loss_sets"] = {name: self.evaluate(batches) for name, batches in self.held_out.items()}

    def train_step(self, step: int) -> StepOutput:
        """Optimizer step `step` (0-based): grad_accum micro-batches, clip, AdamW (see the module docstring)."""
        tc, device = self.cfg.train, self.device
        lr = self.schedule.apply(self.optimizer, step)
        loss_sum = torch.zeros((), device=device)
        for micro in range(tc.grad_accum):
            x, y = self.sampler.batch(step, micro)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with self.autocast:
                out = self.forward(x, y)
            (out.loss / tc.grad_accum).backward()
            loss_sum += out.ce_loss.detach()
        grad_norm = clip_grad_norm(self.model.parameters(), self.cfg.optim.grad_clip, self.ctx.world_size)
        loss = float(loss_sum) / tc.grad_accum
        # A finite loss can still give non-finite gradients: one such AdamW step makes every weight NaN.
        if _any_rank(not (math.isfinite(loss) and bool(torch.isfinite(grad_norm))), self.ctx):
            self.optimizer.zero_grad(set_to_none=True)
            return StepOutput(loss, grad_norm, lr, out, skipped=True)
        self._in_update = True
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._in_update = False
        return StepOutput(loss, grad_norm, lr, out)

    # -------------------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train from `start_step` to `train.steps`; Ctrl-C / SIGTERM stop after the current step and checkpoint."""
        initial_val, last_val = self._initial_eval()
        self.model.train()
        step, interrupted, bad_run = self.start_step, False, 0
        governor = ThreadGovernor(enabled=self.cfg.train.threads == -1 and self.device.type == "cpu")
        with StopFlag() as stop:
            try:
                while step < self.cfg.train.steps:
                    t0 = time.perf_counter()
                    result = self.train_step(step)
                    step += 1
                    dt = time.perf_counter() - t0
                    threads_used = torch.get_num_threads()
                    governor.step_done(dt)
                    self.throughput.step_done(dt)
                    bad_run = self._skipped(step, result, bad_run + 1) if result.skipped else 0
                    if not result.skipped:
                        self.losses.step_done(step, result.loss)
                    if self.cadence.should_log(step):
                        last_val = self._log(step, result, threads_used, last_val)
                    elif self.on_event is not None and self.ctx.is_main:
                        self.on_event({"step": step, "loss": result.loss, "progress_only": True})
                    if self.cadence.should_checkpoint(step):
                        self.save(step, last_val)
                    if _any_rank(stop.requested, self.ctx):  # every rank stops (and saves) at the same step
                        interrupted = True
                        break
            except KeyboardInterrupt:
                interrupted = True
                if self._in_update:  # parameters may be half-updated: do not save them as step `step`
                    raise
            if interrupted or step == self.cfg.train.steps:
                self.save(step, last_val)
        governor.restore()
        if interrupted:
            self.metrics.write({"step": step, "interrupted": True, "signal": stop.signal_name or "SIGINT"})
        result = self._result(step, interrupted, initial_val, last_val)
        result.stop_signal = stop.signal_name if interrupted else ""
        return result

    def _skipped(self, step: int, result: StepOutput, bad_run: int) -> int:
        """Count and record a skipped step; UserError once more than `max_bad_steps` are skipped in a row."""
        self.skipped_steps += 1
        grad_norm = float(result.grad_norm)
        self._emit({"step": step, "skipped_step": True, "grad_norm": grad_norm, "skipped_steps": self.skipped_steps})
        if bad_run > self.cfg.train.max_bad_steps:
            kept = [p.name for p in list_checkpoints(self.run_dir)]
            raise UserError(
                f"{bad_run} steps in a row (up to step {step}) had a non-finite loss or gradient norm "
                f"(last: loss {result.loss}, grad norm {grad_norm}); stopping without saving "
                f"(train.max_bad_steps = {self.cfg.train.max_bad_steps}). Kept checkpoints: {kept or 'none'}; "
                f"lower --optim.lr and resume with --resume {self.run_dir} [--resume-step N]"
            )
        return bad_run

    def _initial_eval(self) -> tuple[float | None, float | None]:
        """(step-0 val loss, latest val loss): measured now for a new run, read back for a resumed one."""
        if self.resumed:
            return initial_val_from_metrics(self.run_dir), self.resumed_val_loss
        val = self.evaluate()
        record: Event = {"step": 0, "val_loss": val, "tokens": 0}
        self._held_out_losses(record)
        self._emit(record)
        return val, val

    def _log(self, step: int, result: StepOutput, threads_used: int, last_val: float | None) -> float | None:
        """Write the metrics record of `step` (evaluating first when due); returns the latest val loss."""
        tps = self.throughput.window_tokens_per_s()
        record: Event = {
            "step": step,
            "loss": _all_reduce_mean(self.losses.window_mean(), self.ctx) if self.losses.has_window() else None,
            "lr": result.lr,
            "grad_norm": float(result.grad_norm),
            "tokens": step * self.throughput.tokens_per_step,
            "tokens_per_s": tps,
            "memory_mb": self.memory.peak_mb(),
            "threads": threads_used,
            "elapsed_s": time.perf_counter() - self.t_start,
        }
        if record["loss"] is None:  # every step of the window was skipped (non-finite)
            del record["loss"]
        if self.skipped_steps:
            record["skipped_steps"] = self.skipped_steps
        mfu = self.throughput.mfu(tps)
        if mfu is not None:
            record["mfu"] = mfu
        if result.out.tokens_per_expert is not None:  # MoE: routing load of the last micro-batch
            record["tokens_per_expert"] = [t.detach().cpu().tolist() for t in result.out.tokens_per_expert]
            record["aux_loss"] = float(result.out.aux_loss.detach())
        if self.cadence.should_eval(step):
            last_val = self.evaluate()
            record["val_loss"] = last_val
            self._held_out_losses(record)
        self._emit(record)
        return last_val

    def _emit(self, record: Event) -> None:
        self.metrics.write(record)
        if self.on_event is not None and self.ctx.is_main:
            self.on_event(record)

    def _result(self, step: int, interrupted: bool, initial_val: float | None, last_val: float | None) -> TrainResult:
        peak_mem, mem_kind = self.memory.peak()
        return TrainResult(
            run_dir=self.run_dir,
            steps=step,
            interrupted=interrupted,
            initial_val_loss=initial_val,
            final_val_loss=last_val,
            final_train_loss=self.losses.final,
            tokens_per_s=self.throughput.mean_tokens_per_s,
            peak_memory_mb=peak_mem,
            memory_kind=mem_kind,
            num_parameters=self.num_parameters,
            wall_s=time.perf_counter() - self.t_start,
            skipped_steps=self.skipped_steps,
        )


def _any_rank(flag: bool, ctx: DistContext) -> bool:
    """True when `flag` is True on any rank (one tiny all-reduce under torchrun; the local flag otherwise)."""
    if ctx.world_size == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


def _all_reduce_mean(value: float, ctx: DistContext) -> float:
    if ctx.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    torch.distributed.all_reduce(t)
    return float(t) / ctx.world_size
