"""Training-step benchmark of the LM per MLP activation (the engine behind `polycom bench model`).

One step = forward with targets, backward, AdamW step (fused on CUDA), on random token batches of
shape (batch_size, seq_len). Per activation it reports the median step time over the timed steps,
tokens/s = batch_size * seq_len / step time, MFU = flops_per_token(seq_len) * tokens/s / peak
(`polycom.utils.hardware.peak_flops`, the card's dense bf16 peak; None on CPU or an unknown card), and
the peak allocated CUDA memory (torch.cuda.max_memory_allocated, None on CPU). SwiGLU always runs first
in the same process as the baseline of the "vs SwiGLU" ratios.

The model is the preset changed by ``--model.key=value`` overrides, the grammar of `polycom train`
(`polycom.train.config`), with the activation replaced per measurement.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from polycom.bench.rows import provenance_fields
from polycom.errors import UserError
from polycom.models.config import ModelConfig
from polycom.models.presets import get_preset
from polycom.models.transformer import build_model
from polycom.modules.activations import DEFAULT_ACTIVATIONS
from polycom.train.config import TrainConfig, apply_override, parse_override
from polycom.utils.hardware import peak_flops, pick_device

BASELINE = "swiglu"
CSV_FIELDS = [
    "date", "card", "git_commit", "torch", "cuda", "triton", "preset", "overrides", "batch_size", "seq_len",
    "dtype", "compile", "activation_checkpointing", "backend", "steps", "warmup", "peak_flops", "activation",
    "params", "active_params", "hidden_size", "step_ms", "step_ms_min", "tokens_per_s", "flops_per_token", "mfu",
    "peak_mem_gib", "final_loss", "step_vs_swiglu", "mem_vs_swiglu", "params_vs_swiglu",
]  # fmt: skip


@dataclass
class BenchSettings:
    """What to measure. preset + overrides (``--model.key=value`` items) give the model; activation
    replaces the preset's."""

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
    overrides: list[str] = field(default_factory=list)
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
        for item in self.overrides:
            if parse_override(item)[0][0] != "model":
                raise UserError(
                    f"bench model takes --model.* overrides only, got {item!r} "
                    "(batch, length, steps and precision have their own options)"
                )
        pick_device(self.device, option="--device")


def override_dict(overrides: list[str]) -> dict[str, Any]:
    """``["--model.n_layers=1", "--model.moe.top_k=2"]`` -> ``{"n_layers": 1, "moe": {"top_k": 2}}``."""
    out: dict[str, Any] = {}
    for item in overrides:
        parts, value = parse_override(item)
        node = out
        for part in parts[1:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def model_config(settings: BenchSettings, activation: str) -> ModelConfig:
    """The preset with the overrides (train's grammar and checks), `activation`, and a max_seq_len that
    fits seq_len unless an override sets it."""
    cfg = TrainConfig(model=get_preset(settings.preset), preset=settings.preset)
    for item in settings.overrides:
        apply_override(cfg, item)
    updates: dict[str, Any] = {"activation": activation}
    if "max_seq_len" not in override_dict(settings.overrides):
        updates["max_seq_len"] = max(settings.seq_len, cfg.model.max_seq_len)
    return dataclasses.replace(cfg.model, **updates)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_function(settings: BenchSettings, model, device: torch.device, vocab_size: int) -> Callable:
    """One training step on a fixed random batch: zero grads, forward (autocast bf16 or fp32), backward, AdamW."""
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, **fused)
    if settings.activation_checkpointing:
        for block in model.layers:
            block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
    step_fn: Callable = torch.compile(model) if settings.compile else model
    gen = torch.Generator(device="cpu").manual_seed(settings.seed)
    ids = torch.randint(0, vocab_size, (settings.batch_size, settings.seq_len + 1), generator=gen).to(device)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    use_bf16 = settings.dtype == "bf16"

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = step_fn(inputs, targets)
        out.loss.backward()
        optimizer.step()
        return out.loss.detach()

    return step


def measure_activation(settings: BenchSettings, activation: str, device: torch.device) -> dict[str, Any]:
    """Build the model for `activation`, run warmup + timed training steps, return one result row."""
    cfg = model_config(settings, activation)
    torch.manual_seed(settings.seed)
    model = build_model(cfg, device=device)
    model.train()
    step = _step_function(settings, model, device, cfg.vocab_size)
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
    return {
        "activation": activation,
        "params": model.num_parameters(),
        "active_params": model.num_active_parameters(),
        "hidden_size": cfg.expert_hidden_size() if cfg.is_moe else cfg.mlp_hidden_size(),
        "step_ms": step_s * 1e3,
        "step_ms_min": min(times) * 1e3,
        "tokens_per_s": settings.batch_size * settings.seq_len / step_s,
        "flops_per_token": model.flops_per_token(settings.seq_len),
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "final_loss": loss_value,
    }


def _release_memory(device: torch.device) -> None:
    """Free the previous activation's model and optimizer before the next one measures its peak."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextmanager
def _backend(name: str | None) -> Iterator[None]:
    """POLYCOM_BACKEND=name for the block (None: leave it as it is), restored afterwards."""
    previous = os.environ.get("POLYCOM_BACKEND")
    if name:
        os.environ["POLYCOM_BACKEND"] = name
    try:
        yield
    finally:
        if name and previous is None:
            os.environ.pop("POLYCOM_BACKEND", None)
        elif name:
            os.environ["POLYCOM_BACKEND"] = previous


def _header(settings: BenchSettings, device: torch.device) -> dict[str, Any]:
    """Provenance and settings shared by every row of the run."""
    header = provenance_fields(device)
    peak = settings.peak_flops or peak_flops(device, torch.bfloat16, card=header["card"])
    return {
        **header,
        "preset": settings.preset,
        "overrides": override_dict(settings.overrides),
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


def run_benchmark(settings: BenchSettings, progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Measure every activation (SwiGLU first as the baseline); return complete result rows."""
    settings.validate()
    device = torch.device(settings.device)
    activations = [BASELINE] + [a for a in settings.activations if a != BASELINE]
    for a in activations:  # fail early on a bad name or config, before any timing
        model_config(settings, a)
    rows = []
    with _backend(settings.backend):
        header = _header(settings, device)
        for activation in activations:
            if progress:
                progress(activation)
            _release_memory(device)
            row = {**header, **measure_activation(settings, activation, device)}
            peak = row["peak_flops"]
            row["mfu"] = row["flops_per_token"] * row["tokens_per_s"] / peak if peak else None
            rows.append(row)
    base = rows[0]
    for row in rows:
        row["step_vs_swiglu"] = row["step_ms"] / base["step_ms"]
        row["mem_vs_swiglu"] = (
            row["peak_mem_gib"] / base["peak_mem_gib"] if row["peak_mem_gib"] and base["peak_mem_gib"] else None
        )
        row["params_vs_swiglu"] = row["params"] / base["params"]
    return rows


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
