"""Training-step benchmark of the LM per MLP activation (the engine behind `polycom bench model`).

One step = forward with targets, backward, AdamW step (fused on CUDA), on random token batches of
shape (batch_size, seq_len). Per activation it reports the median step time over the timed steps,
tokens/s = batch_size * seq_len / step time, MFU = flops_per_token(seq_len) * tokens/s / peak
(the card's dense bf16 peak; "n/a" on CPU or an unknown card), and the peak allocated CUDA memory
(torch.cuda.max_memory_allocated, "n/a" on CPU). SwiGLU always runs first in the same process as the
baseline of the "vs SwiGLU" ratios.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import gc
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from polycom.models.config import ModelConfig
from polycom.models.presets import get_preset
from polycom.models.transformer import build_model
from polycom.utils.hardware import peak_flops
from polycom.utils.provenance import git_commit, versions

DEFAULT_ACTIVATIONS = ("swiglu", "gelu", "relu2", "polyrelu", "polynorm")
BASELINE = "swiglu"


@dataclass
class BenchSettings:
    """What to measure. preset + overrides give the model; activation replaces the preset's."""

    preset: str = "anchor"
    activations: tuple[str, ...] = DEFAULT_ACTIVATIONS
    batch_size: int = 16
    seq_len: int = 1024
    steps: int = 20
    warmup: int = 5
    dtype: str = "bf16"  # autocast dtype: bf16 | fp32 (no autocast)
    device: str = "cuda"
    compile: bool = False
    activation_checkpointing: bool = False  # recompute each block in backward (less memory, more time)
    backend: str | None = None  # POLYCOM_BACKEND for the run (torch | triton | auto); None = leave as is
    peak_flops: float | None = None  # override of the peak table
    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def validate(self) -> None:
        for name in ("batch_size", "seq_len", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.dtype not in ("bf16", "fp32"):
            raise ValueError(f"dtype must be bf16 or fp32, got {self.dtype!r}")
        if not self.activations:
            raise ValueError("no activations to benchmark")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("device cuda requested but no CUDA GPU is available; use --device cpu")


# --------------------------------------------------------------------------------------------------
def card_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


# --------------------------------------------------------------------------------------------------
def model_config(settings: BenchSettings, activation: str) -> ModelConfig:
    overrides = dict(settings.overrides)
    overrides["activation"] = activation
    overrides.setdefault("max_seq_len", max(settings.seq_len, get_preset(settings.preset).max_seq_len))
    return get_preset(settings.preset, **overrides)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_activation(settings: BenchSettings, activation: str, device: torch.device) -> dict[str, Any]:
    """Build the model for `activation`, run warmup + timed training steps, return one result row."""
    cfg = model_config(settings, activation)
    torch.manual_seed(settings.seed)
    model = build_model(cfg, device=device)
    model.train()
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, **fused)
    if settings.activation_checkpointing:
        for block in model.layers:
            block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
    step_fn: Callable = model
    if settings.compile:
        step_fn = torch.compile(model)
    gen = torch.Generator(device="cpu").manual_seed(settings.seed)
    ids = torch.randint(0, cfg.vocab_size, (settings.batch_size, settings.seq_len + 1), generator=gen).to(device)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    use_bf16 = settings.dtype == "bf16"

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = step_fn(inputs, targets)
        out.loss.backward()
        optimizer.step()
        return out.loss.detach()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(settings.warmup):
        step()
    _sync(device)
    times = []
    loss = None
    for _ in range(settings.steps):
        t0 = time.perf_counter()
        loss = step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    loss_value = float(loss)
    if not torch.isfinite(torch.tensor(loss_value)):
        raise RuntimeError(f"{activation}: loss became {loss_value} during the benchmark")
    step_s = statistics.median(times)
    tokens = settings.batch_size * settings.seq_len
    row = {
        "activation": activation,
        "params": model.num_parameters(),
        "active_params": model.num_active_parameters(),
        "hidden_size": cfg.expert_hidden_size() if cfg.is_moe else cfg.mlp_hidden_size(),
        "step_ms": step_s * 1e3,
        "step_ms_min": min(times) * 1e3,
        "tokens_per_s": tokens / step_s,
        "flops_per_token": model.flops_per_token(settings.seq_len),
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "final_loss": loss_value,
    }
    return row


def _release_memory(device: torch.device) -> None:
    """Free the previous activation's model and optimizer before the next one measures its peak."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_benchmark(settings: BenchSettings, progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Measure every activation (SwiGLU first as the baseline); return complete result rows."""
    settings.validate()
    device = torch.device(settings.device)
    activations = [BASELINE] + [a for a in settings.activations if a != BASELINE]
    for a in activations:  # fail early on a bad name or config, before any timing
        model_config(settings, a)
    previous_backend = os.environ.get("POLYCOM_BACKEND")
    if settings.backend:
        os.environ["POLYCOM_BACKEND"] = settings.backend
    try:
        card = card_name(device)
        peak = settings.peak_flops or peak_flops(device, torch.bfloat16, card=card)
        header = {
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "commit": git_commit(),
            "card": card,
            "versions": versions(),
            "preset": settings.preset,
            "overrides": settings.overrides,
            "batch_size": settings.batch_size,
            "seq_len": settings.seq_len,
            "dtype": settings.dtype,
            "compile": settings.compile,
            "activation_checkpointing": settings.activation_checkpointing,
            "backend": os.environ.get("POLYCOM_BACKEND", "auto"),
            "steps": settings.steps,
            "warmup": settings.warmup,
            "peak_flops": peak,
        }
        rows = []
        for activation in activations:
            if progress:
                progress(activation)
            _release_memory(device)
            row = {**header, **measure_activation(settings, activation, device)}
            row["mfu"] = row["flops_per_token"] * row["tokens_per_s"] / peak if peak else None
            rows.append(row)
    finally:
        if settings.backend:
            if previous_backend is None:
                os.environ.pop("POLYCOM_BACKEND", None)
            else:
                os.environ["POLYCOM_BACKEND"] = previous_backend
    base = rows[0]
    for row in rows:
        row["step_vs_swiglu"] = row["step_ms"] / base["step_ms"]
        row["mem_vs_swiglu"] = (
            row["peak_mem_gib"] / base["peak_mem_gib"] if row["peak_mem_gib"] and base["peak_mem_gib"] else None
        )
        row["params_vs_swiglu"] = row["params"] / base["params"]
    return rows


def append_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append JSON lines to `path` atomically (existing rows + new rows to a temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    text = old + "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the rows (what the CLI prints and docs quote)."""

    def fmt(v, spec, none="n/a"):
        return none if v is None else format(v, spec)

    lines = [
        "| activation | params | hidden | step ms | vs SwiGLU | tokens/s | MFU | peak mem GiB | mem vs SwiGLU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['activation']} | {r['params'] / 1e6:.1f}M | {r['hidden_size']} | {r['step_ms']:.1f} | "
            f"{r['step_vs_swiglu']:.2f}x | {r['tokens_per_s']:,.0f} | {fmt(r['mfu'], '.1%')} | "
            f"{fmt(r['peak_mem_gib'], '.2f')} | {fmt(r['mem_vs_swiglu'], '.2f', 'n/a')}{'x' if r['mem_vs_swiglu'] else ''} |"
        )
    return "\n".join(lines)


def settings_dict(settings: BenchSettings) -> dict[str, Any]:
    return dataclasses.asdict(settings)
