"""The training loop: one language model, one run folder.

    result = train(cfg, "runs/my-run")                 # new run
    result = train(cfg, "runs/my-run", resume=True)    # continue from its latest checkpoint

Per optimizer step s (0-based): lr = schedule(s); for each of grad_accum micro-batches, the batch
(seed, s, micro) from `WindowSampler` -> forward under autocast (bf16 on CUDA) -> loss / grad_accum ->
backward; clip the global grad norm; AdamW step. Everything that decides step s+1 (model, optimizer,
schedule position, RNG, data position) is in the checkpoint, so on CPU a resumed run reproduces the
uninterrupted run bit for bit.

Files (rank 0 only): config.json, run.json, metrics.jsonl, tokenizer/, checkpoints/ (see checkpoint.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from polycom.data.loader import WindowSampler, eval_batches
from polycom.data.shards import TokenShards
from polycom.errors import UserError
from polycom.models import build_model
from polycom.train.checkpoint import (
    find_checkpoint,
    load_checkpoint,
    read_run_config,
    save_checkpoint,
    save_dcp_checkpoint,
)
from polycom.train.config import DataConfig, TrainConfig
from polycom.train.metrics import MetricsWriter
from polycom.train.run_header import run_header
from polycom.train.schedule import WarmupCosine
from polycom.train.threads import ThreadGovernor
from polycom.utils.atomic import write_json

# Dense bf16 peak FLOP/s per GPU, for MFU (vendor datasheet numbers, no sparsity).
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}

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


# ---------------------------------------------------------------------------------------------------
# Distributed context: polycom.distributed when present, otherwise a single-process stand-in.


@dataclass
class _LocalContext:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    dp_rank: int = 0
    dp_size: int = 1
    tp_size: int = 1
    mesh: object | None = None

    @property
    def is_main(self) -> bool:
        return True


def _init_context(cfg: TrainConfig):
    """(ctx, parallelize_fn | None, shutdown_fn | None)."""
    try:
        from polycom.distributed import init_distributed, parallelize, shutdown
    except ImportError:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UserError("multi-process training needs polycom.distributed, which is not installed") from None
        return _LocalContext(device=_pick_device(cfg.train.device)), None, None
    ctx = init_distributed(cfg.parallel)
    if ctx.world_size == 1 and cfg.train.device != "auto":
        ctx.device = _pick_device(cfg.train.device)
    return ctx, parallelize, shutdown


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"train.device {name!r} is not a device name (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train.device={name} but no CUDA GPU is available")
    return device


# ---------------------------------------------------------------------------------------------------


def resolve_data(data: DataConfig, *, show_progress: bool = True, is_main: bool = True) -> TokenShards:
    """The prepared data of a run: `data.path`, or `data.source` prepared once into the cache folder."""
    from polycom.data.prepare import PrepareConfig, prepare_data

    if data.path:
        path = Path(data.path).expanduser()
        if not path.exists():
            raise UserError(f"data.path {path} not found")
        if not (path / "meta.json").is_file():
            raise UserError(
                f"data.path {path} is not a prepared data folder (no meta.json); prepare it with "
                f"`polycom data prepare --source {path} --out DIR`, or pass it as data.source"
            )
        return TokenShards(path)
    cache = Path(data.cache_dir or os.environ.get("POLYCOM_DATA_CACHE") or Path.home() / ".cache" / "polycom" / "data")
    tag = data.tokenizer if data.tokenizer != "bpe" else f"bpe{data.bpe_vocab_size}"
    folder = cache / f"{_slug(data.source)}-{_slug(tag)}-val{data.val_fraction:g}"
    if not (folder / "meta.json").is_file() and is_main:
        prepare = PrepareConfig(
            source=data.source,
            tokenizer=data.tokenizer,
            bpe_vocab_size=data.bpe_vocab_size,
            val_fraction=data.val_fraction,
        )
        prepare_data(prepare, folder, overwrite=True, show_progress=show_progress)
    _barrier()
    return TokenShards(folder)


def _slug(text: str) -> str:
    import hashlib

    path = Path(text).expanduser()
    if path.exists():  # local source: name + hash of absolute path, size and mtime, so edits re-prepare
        st = path.stat()
        h = hashlib.sha1(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:10]
        return f"{path.name}-{h}"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:80]


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


# ---------------------------------------------------------------------------------------------------


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW; weight decay on >= 2-D weights only (no decay on norms, biases, PolyCom coefficients)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_polycom = ".act." in f".{name}"
        (no_decay if p.ndim < 2 or is_polycom else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    kwargs: dict[str, Any] = {"lr": cfg.optim.lr, "betas": (cfg.optim.beta1, cfg.optim.beta2), "eps": cfg.optim.eps}
    if device.type == "cuda":
        kwargs["fused"] = True
    return torch.optim.AdamW(groups, **kwargs)


def _autocast(device: torch.device, precision: str):
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _peak_memory_mb(device: torch.device) -> tuple[float | None, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    # Linux reports ru_maxrss in KiB: the peak resident memory of the whole process.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_peak_rss"


def _peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS.items():
        if key in name:
            return flops
    return None


class _StopFlag:
    """First Ctrl-C asks the loop to stop after the current step (and checkpoint); a second one aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


# ---------------------------------------------------------------------------------------------------


def prepare_run_dir(run_dir: Path, resume: bool) -> None:
    if resume:
        if not run_dir.is_dir():
            raise UserError(f"cannot resume: run folder {run_dir} not found")
        return
    if run_dir.exists() and ((run_dir / "config.json").exists() or (run_dir / "checkpoints").exists()):
        raise UserError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --out")


def train(
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    on_event: Callable[[Event], None] | None = None,
    show_progress: bool = False,
    shards: TokenShards | None = None,
) -> TrainResult:
    """Train `cfg` into `run_dir` (see the module docstring); `on_event` receives every logged record."""
    run_dir = Path(run_dir)
    cfg.validate()
    prepare_run_dir(run_dir, resume)
    state = None
    if resume:
        # Verify the checkpoint before anything is written: a corrupt file leaves the folder untouched.
        path = find_checkpoint(run_dir)
        if path.is_dir():  # a multi-process (DCP) checkpoint folder: loaded after parallelize, below
            state = {"dcp_path": path}
        else:
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                raise UserError(f"{path} was saved by a single process; resume it with one process")
            state = load_checkpoint(path, map_location="cpu")

    threads_before = torch.get_num_threads()
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    ctx, parallelize_fn, shutdown_fn = _init_context(cfg)
    try:
        return _train(cfg, run_dir, ctx, parallelize_fn, state, on_event, show_progress, shards)
    finally:
        torch.set_num_threads(threads_before)
        if shutdown_fn is not None:
            shutdown_fn(ctx)


def _train(cfg, run_dir, ctx, parallelize_fn, state, on_event, show_progress, shards) -> TrainResult:
    t_start = time.perf_counter()
    device = ctx.device
    tc = cfg.train
    seq_len = cfg.seq_len
    if shards is None:
        shards = resolve_data(cfg.data, show_progress=show_progress and ctx.is_main, is_main=ctx.is_main)
    shards.check_vocab(cfg.model.vocab_size)
    sampler = WindowSampler(
        shards.train, seq_len, tc.batch_size, tc.seed, dp_rank=ctx.dp_rank, dp_size=getattr(ctx, "dp_size", 1)
    )
    val = eval_batches(
        shards.val,
        seq_len,
        tc.batch_size,
        tc.eval_batches,
        seed=tc.seed + 1_000_003,
        dp_rank=ctx.dp_rank,
        dp_size=getattr(ctx, "dp_size", 1),
    )

    torch.manual_seed(tc.seed)
    raw_model = build_model(cfg.model)
    n_params = raw_model.num_parameters()
    flops_per_token = raw_model.flops_per_token(seq_len)
    raw_model.to(device)
    if state is not None and "model" in state:
        raw_model.load_state_dict(state["model"])
    model = raw_model
    if parallelize_fn is not None and (ctx.world_size > 1 or cfg.parallel.activation_checkpointing):
        model = parallelize_fn(raw_model, cfg.parallel, ctx)
    optimizer = build_optimizer(model, cfg, device)
    schedule = WarmupCosine(cfg.optim.lr, tc.steps, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio)
    start_step = 0
    if state is not None and "dcp_path" in state:
        from polycom.distributed.checkpoint import load_checkpoint as dcp_load

        state = {**dcp_load(state["dcp_path"], model, optimizer, ctx), "optimizer": None}
    if state is not None:
        if state["optimizer"] is not None:
            optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        start_step = int(state["step"])
    forward = torch.compile(model) if tc.compile else model

    metrics = MetricsWriter(run_dir / "metrics.jsonl", enabled=ctx.is_main)
    if ctx.is_main:
        _write_run_files(cfg, run_dir, shards, n_params, start_step, resumed=state is not None)
        metrics.truncate_after(start_step)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    peak_flops = _peak_flops(device)
    autocast = _autocast(device, tc.precision)
    tokens_per_step = tc.batch_size * seq_len * tc.grad_accum * getattr(ctx, "dp_size", 1)

    def emit(record: Event) -> None:
        metrics.write(record)
        if on_event is not None and ctx.is_main:
            on_event(record)

    def evaluate() -> float:
        model.eval()
        total = 0.0
        with torch.no_grad():
            for x, y in val:
                with autocast:
                    out = forward(x.to(device), y.to(device))
                total += float(out.ce_loss)
        model.train()
        return _all_reduce_mean(total / len(val), ctx)

    def checkpoint(step: int, val_loss: float | None) -> None:
        rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []}
        extra = {
            "step": step,
            "scheduler": {**schedule.state_dict(), "step": step},
            "rng": rng,
            "data": {"seed": tc.seed, "next_step": step, "seq_len": seq_len, "batch_size": tc.batch_size},
            "config": cfg.to_dict(),
            "val_loss": val_loss,
        }
        if ctx.world_size > 1:  # every rank writes its shards (torch.distributed.checkpoint)
            save_dcp_checkpoint(run_dir, step, model, optimizer, extra, ctx, keep=tc.keep_checkpoints)
            return
        if ctx.is_main:
            state = {"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(), **extra}
            save_checkpoint(run_dir, step, state, keep=tc.keep_checkpoints)

    initial_val = last_val = None
    if state is not None:
        last_val = state.get("val_loss")
        initial_val = _initial_val_from_metrics(run_dir)
    else:
        initial_val = last_val = evaluate()
        emit({"step": 0, "val_loss": initial_val, "tokens": 0})

    model.train()
    step = start_step
    interrupted = False
    in_update = False
    window_loss, window_n, window_time, train_time = 0.0, 0, 0.0, 0.0
    recent_losses: list[float] = []
    tps_samples: list[float] = []
    governor = ThreadGovernor(enabled=tc.threads == -1 and device.type == "cpu")
    with _StopFlag() as stop:
        try:
            while step < tc.steps:
                t0 = time.perf_counter()
                lr = schedule.apply(optimizer, step)
                loss_sum = torch.zeros((), device=device)
                for micro in range(tc.grad_accum):
                    x, y = sampler.batch(step, micro)
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    with autocast:
                        out = forward(x, y)
                    (out.loss / tc.grad_accum).backward()
                    loss_sum += out.ce_loss.detach()
                clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
                grad_norm = clip_grad_norm(model.parameters(), clip, ctx)
                in_update = True
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                in_update = False
                step += 1
                loss_value = float(loss_sum) / tc.grad_accum
                dt = time.perf_counter() - t0
                threads_used = torch.get_num_threads()
                governor.step_done(dt)
                window_loss += loss_value
                window_n += 1
                window_time += dt
                train_time += dt
                recent_losses = (recent_losses + [loss_value])[-20:]
                if not math.isfinite(loss_value):
                    raise UserError(f"training diverged: loss is {loss_value} at step {step}; lower --optim.lr")

                is_last = step == tc.steps
                do_eval = is_last or (tc.eval_interval and step % tc.eval_interval == 0)
                if step % tc.log_interval == 0 or is_last or do_eval:
                    tps = tokens_per_step * window_n / window_time
                    tps_samples.append(tps)
                    mem, _ = _peak_memory_mb(device)
                    record: Event = {
                        "step": step,
                        "loss": _all_reduce_mean(window_loss / window_n, ctx),
                        "lr": lr,
                        "grad_norm": float(grad_norm),
                        "tokens": step * tokens_per_step,
                        "tokens_per_s": tps,
                        "memory_mb": mem,
                        "threads": threads_used,
                        "elapsed_s": time.perf_counter() - t_start,
                    }
                    if peak_flops:
                        record["mfu"] = flops_per_token * tps / (peak_flops * ctx.world_size)
                    if out.tokens_per_expert is not None:  # MoE: routing load of the last micro-batch
                        record["tokens_per_expert"] = [t.detach().cpu().tolist() for t in out.tokens_per_expert]
                        record["aux_loss"] = float(out.aux_loss.detach())
                    if do_eval:
                        last_val = evaluate()
                        record["val_loss"] = last_val
                    emit(record)
                    window_loss, window_n, window_time = 0.0, 0, 0.0
                elif on_event is not None and ctx.is_main:
                    on_event({"step": step, "loss": loss_value, "progress_only": True})
                if tc.checkpoint_interval and step % tc.checkpoint_interval == 0 and not is_last:
                    checkpoint(step, last_val)
                if stop.requested:
                    interrupted = True
                    break
        except KeyboardInterrupt:
            interrupted = True
            if in_update:  # parameters may be half-updated: do not save them as step `step`
                raise
        if interrupted or step == tc.steps:
            checkpoint(step, last_val)
    governor.restore()
    peak_mem, mem_kind = _peak_memory_mb(device)
    if interrupted:
        metrics.write({"step": step, "interrupted": True})
    return TrainResult(
        run_dir=run_dir,
        steps=step,
        interrupted=interrupted,
        initial_val_loss=initial_val,
        final_val_loss=last_val,
        final_train_loss=sum(recent_losses) / len(recent_losses) if recent_losses else None,
        tokens_per_s=(sum(tps_samples) / len(tps_samples)) if tps_samples else None,
        peak_memory_mb=peak_mem,
        memory_kind=mem_kind,
        num_parameters=n_params,
        wall_s=time.perf_counter() - t_start,
    )


def clip_grad_norm(parameters, max_norm: float, ctx) -> torch.Tensor:
    """Clip the global gradient norm; DTensor-aware (FSDP2 / TP) when running on several processes."""
    if ctx.world_size > 1:
        from polycom.distributed.grad_utils import clip_grad_norm_

        return clip_grad_norm_(parameters, max_norm)
    return torch.nn.utils.clip_grad_norm_(parameters, max_norm)


def _all_reduce_mean(value: float, ctx) -> float:
    if ctx.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    torch.distributed.all_reduce(t)
    return float(t) / ctx.world_size


def _initial_val_from_metrics(run_dir: Path) -> float | None:
    from polycom.train.metrics import read_metrics

    for record in read_metrics(run_dir / "metrics.jsonl"):
        if record.get("step") == 0 and "val_loss" in record:
            return record["val_loss"]
    return None


def _write_run_files(cfg: TrainConfig, run_dir: Path, shards: TokenShards, n_params: int, start: int, resumed: bool):
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "tokenizer").is_dir():
        shards.tokenizer().save(run_dir / "tokenizer")
    write_json(run_dir / "config.json", cfg.to_dict())
    header_path = run_dir / "run.json"
    if resumed and header_path.exists():
        header = json.loads(header_path.read_text())
        header.setdefault("resumed", []).append({"from_step": start, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ")})
    else:
        header = run_header(
            cfg.to_dict(),
            {"num_parameters": n_params, "data": {"folder": str(shards.folder), **shards.meta}},
        )
    write_json(header_path, header)


def load_resume_config(run_dir: str | Path) -> TrainConfig:
    """The TrainConfig saved in a run folder (for --resume)."""
    return TrainConfig.from_dict(read_run_config(run_dir))
