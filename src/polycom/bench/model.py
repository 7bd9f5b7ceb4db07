"""Training-step and MLP-block benchmark per MLP activation (the engine behind `polycom bench model`).

One LM step = forward with targets, backward, AdamW step (fused on CUDA), on a fixed random token
batch (batch_size, seq_len). One MLP-block step = forward + backward of a parameter-matched
`polycom.MLP` on (mlp_tokens, mlp_d_model) (`polycom.bench.mlp_block`). Each variant is an
(activation, fused MLP path or not) pair: by default every activation on the fused path plus SwiGLU on
the unfused (eager) path; ``mlp_paths="both"`` measures every activation both ways.

All variants are built and warmed up first, then timed in interleaved rounds (round k times step k of
every variant in turn), so machine noise hits them alike; each reports the median over the rounds.
Per variant: step time, tokens/s = batch_size * seq_len / step time, MFU = flops_per_token(seq_len) *
tokens/s / peak (`polycom.utils.hardware.peak_flops`, dense bf16 peak; None on CPU or an unknown
card), the peak CUDA memory of its own build + steps (max allocated minus what was allocated before
it; None on CPU), and the bytes autograd saves in one forward (`polycom.bench.saved`; None under
compile). Ratios "vs_swiglu" divide by SwiGLU on the same path, "vs_swiglu_eager" by unfused SwiGLU.

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

from polycom.bench.mlp_block import mlp_block_case
from polycom.bench.rows import provenance_fields
from polycom.bench.saved import count_saved
from polycom.errors import UserError
from polycom.models.config import ModelConfig
from polycom.models.presets import get_preset
from polycom.models.transformer import build_model
from polycom.modules.activations import DEFAULT_ACTIVATIONS
from polycom.ops import cpu_compile
from polycom.train.config import TrainConfig, apply_override, parse_override
from polycom.utils.hardware import peak_flops, pick_device

BASELINE = "swiglu"
CSV_FIELDS = [
    "date", "card", "git_commit", "torch", "cuda", "triton", "preset", "overrides", "batch_size", "seq_len",
    "dtype", "compile", "cpu_compile", "activation_checkpointing", "backend", "steps", "warmup", "peak_flops",
    "activation", "fused_mlp", "params", "active_params", "hidden_size", "step_ms", "step_ms_min", "tokens_per_s",
    "flops_per_token", "mfu", "peak_mem_gib", "saved_mib", "final_loss", "step_vs_swiglu", "mem_vs_swiglu",
    "saved_vs_swiglu", "params_vs_swiglu", "step_vs_swiglu_eager", "saved_vs_swiglu_eager", "mlp_d_model",
    "mlp_tokens", "mlp_hidden_size", "mlp_ms", "mlp_saved_mib", "mlp_vs_swiglu", "mlp_saved_vs_swiglu",
    "mlp_vs_swiglu_eager", "mlp_saved_vs_swiglu_eager",
]  # fmt: skip
MLP_PATHS = ("fused", "both")


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
    mlp_paths: str = "fused"  # fused: every activation fused + SwiGLU unfused; both: every activation both ways
    mlp_d_model: int | None = None  # MLP-block width; None = the model's d_model
    mlp_tokens: int | None = None  # MLP-block tokens; None = batch_size * seq_len; 0 = no MLP-block rows
    cpu_compile: bool = True  # POLYCOM_CPU_COMPILE for the run: 1 compiled closed-form math on CPU tensors, 0 eager
    commit: str | None = None  # git commit for the rows when the tree has no .git (a copied checkout)

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
        if self.mlp_paths not in MLP_PATHS:
            raise ValueError(f"mlp-paths must be one of {', '.join(MLP_PATHS)}, got {self.mlp_paths!r}")
        for name in ("mlp_d_model", "mlp_tokens"):
            value = getattr(self, name)
            if value is not None and value < (1 if name == "mlp_d_model" else 0):
                raise ValueError(
                    f"{name.replace('_', '-')} must be >= {1 if name == 'mlp_d_model' else 0}, got {value}"
                )
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


def model_config(settings: BenchSettings, activation: str, fused: bool = True) -> ModelConfig:
    """The preset with the overrides (train's grammar and checks), `activation`, the MLP path, and a
    max_seq_len that fits seq_len unless an override sets it."""
    cfg = TrainConfig(model=get_preset(settings.preset), preset=settings.preset)
    for item in settings.overrides:
        apply_override(cfg, item)
    updates: dict[str, Any] = {"activation": activation, "fused_mlp": fused}
    if "max_seq_len" not in override_dict(settings.overrides):
        updates["max_seq_len"] = max(settings.seq_len, cfg.model.max_seq_len)
    return dataclasses.replace(cfg.model, **updates)


Variant = tuple[str, bool]  # (activation, fused MLP path)


def variants(settings: BenchSettings) -> list[Variant]:
    """Fused rows per activation (SwiGLU first) and unfused SwiGLU; with mlp_paths="both" every unfused row."""
    names = [BASELINE] + [a for a in settings.activations if a != BASELINE]
    unfused = names if settings.mlp_paths == "both" else [BASELINE]
    return [(a, True) for a in names] + [(a, False) for a in unfused]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_function(settings: BenchSettings, model, device: torch.device, vocab_size: int) -> tuple[Callable, Callable]:
    """(step, forward) on a fixed random batch: step = zero grads, forward (autocast bf16 or fp32), backward,
    AdamW; forward = the forward alone (for counting saved bytes)."""
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

    def forward():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            return step_fn(inputs, targets)

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        out = forward()
        out.loss.backward()
        optimizer.step()
        return out.loss.detach()

    return step, forward


@dataclass
class _Prepared:
    """A built, warmed-up variant: its timed step and what was measured while preparing it."""

    step: Callable[[], Any]
    row: dict[str, Any]
    mlp_step: Callable[[], Any] | None = None
    losses: list[torch.Tensor] = field(default_factory=list)


def prepare_variant(settings: BenchSettings, variant: Variant, device: torch.device) -> _Prepared:
    """Build the LM (and MLP block) of `variant`, count saved bytes, run the warmup, measure its own CUDA peak."""
    activation, fused = variant
    cfg = model_config(settings, activation, fused)
    _sync(device)
    base_mem = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(settings.seed)
    model = build_model(cfg, device=device)
    model.train()
    step, forward = _step_function(settings, model, device, cfg.vocab_size)
    saved = None if settings.compile else count_saved(forward, exclude=model.parameters())[1]
    for _ in range(max(settings.warmup, 1)):
        step()
    _sync(device)
    peak = (torch.cuda.max_memory_allocated(device) - base_mem) / 2**30 if device.type == "cuda" else None
    row = {
        "activation": activation,
        "fused_mlp": fused,
        "params": model.num_parameters(),
        "active_params": model.num_active_parameters(),
        "hidden_size": cfg.expert_hidden_size() if cfg.is_moe else cfg.mlp_hidden_size(),
        "flops_per_token": model.flops_per_token(settings.seq_len),
        "peak_mem_gib": peak,
        "saved_mib": saved.mib if saved else None,
    }
    prepared = _Prepared(step, row)
    tokens = settings.batch_size * settings.seq_len if settings.mlp_tokens is None else settings.mlp_tokens
    if tokens:
        d = settings.mlp_d_model or cfg.d_model
        case = mlp_block_case(d, tokens, activation, fused, device, settings.dtype == "bf16", settings.seed)
        case.step()  # warm
        prepared.mlp_step = case.step
        row.update(mlp_d_model=d, mlp_tokens=tokens, mlp_hidden_size=case.hidden_size, mlp_saved_mib=case.saved.mib)
    return prepared


def interleaved_times(steps: list[Callable[[], Any]], rounds: int, device: torch.device) -> list[list[float]]:
    """Per step function, its times (s) over `rounds` rounds that each run every function once, in turn."""
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(rounds):
        for i, fn in enumerate(steps):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[i].append(time.perf_counter() - t0)
    return times


def _release_memory(device: torch.device) -> None:
    """Collect garbage before the next variant measures its peak."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextmanager
def _env(name: str, value: str | None) -> Iterator[None]:
    """Environment variable `name` = value for the block (None: leave it as it is), restored afterwards."""
    previous = os.environ.get(name)
    if value:
        os.environ[name] = value
    try:
        yield
    finally:
        if value and previous is None:
            os.environ.pop(name, None)
        elif value:
            os.environ[name] = previous


def _header(settings: BenchSettings, device: torch.device) -> dict[str, Any]:
    """Provenance and settings shared by every row of the run."""
    header = provenance_fields(device, settings.commit)
    peak = settings.peak_flops or peak_flops(device, torch.bfloat16, card=header["card"])
    return {
        **header,
        "preset": settings.preset,
        "overrides": override_dict(settings.overrides),
        "batch_size": settings.batch_size,
        "seq_len": settings.seq_len,
        "dtype": settings.dtype,
        "compile": settings.compile,
        "cpu_compile": settings.cpu_compile,
        "activation_checkpointing": settings.activation_checkpointing,
        "backend": os.environ.get("POLYCOM_BACKEND", "auto"),
        "steps": settings.steps,
        "warmup": settings.warmup,
        "peak_flops": peak,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    """vs_swiglu: against SwiGLU on the same MLP path; vs_swiglu_eager: against unfused SwiGLU."""
    swiglu = {r["fused_mlp"]: r for r in rows if r["activation"] == BASELINE}
    eager = swiglu[False]
    for row in rows:
        base = swiglu.get(row["fused_mlp"], eager)
        row["step_vs_swiglu"] = _ratio(row["step_ms"], base["step_ms"])
        row["mem_vs_swiglu"] = _ratio(row["peak_mem_gib"], base["peak_mem_gib"])
        row["saved_vs_swiglu"] = _ratio(row["saved_mib"], base["saved_mib"])
        row["params_vs_swiglu"] = _ratio(row["params"], base["params"])
        row["step_vs_swiglu_eager"] = _ratio(row["step_ms"], eager["step_ms"])
        row["saved_vs_swiglu_eager"] = _ratio(row["saved_mib"], eager["saved_mib"])
        for key, ref in (("mlp_vs_swiglu", base), ("mlp_vs_swiglu_eager", eager)):
            row[key] = _ratio(row.get("mlp_ms"), ref.get("mlp_ms"))
        row["mlp_saved_vs_swiglu"] = _ratio(row.get("mlp_saved_mib"), base.get("mlp_saved_mib"))
        row["mlp_saved_vs_swiglu_eager"] = _ratio(row.get("mlp_saved_mib"), eager.get("mlp_saved_mib"))


def run_benchmark(settings: BenchSettings, progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Prepare every variant (SwiGLU first), time them in interleaved rounds; return complete result rows."""
    settings.validate()
    device = torch.device(settings.device)
    todo = variants(settings)
    for activation, fused in todo:  # fail early on a bad name or config, before any timing
        model_config(settings, activation, fused)
    with _env("POLYCOM_BACKEND", settings.backend), _env("POLYCOM_CPU_COMPILE", "1" if settings.cpu_compile else "0"):
        header = _header(settings, device)
        prepared = []
        for activation, fused in todo:
            if progress:
                progress(f"{activation} ({'fused' if fused else 'unfused'})")
            _release_memory(device)
            prepared.append(prepare_variant(settings, (activation, fused), device))
        if progress:
            progress("interleaved timing")
        lm_times = interleaved_times([p.step for p in prepared], settings.steps, device)
        mlp = [p.mlp_step for p in prepared if p.mlp_step is not None]
        mlp_times = interleaved_times(mlp, settings.steps, device) if len(mlp) == len(prepared) else None
        loss = [float(p.step()) for p in prepared]
        # what ran, not what was asked: no C++ compiler or a failed build means eager closed-form math
        header["cpu_compile"] = settings.cpu_compile and device.type == "cpu" and cpu_compile.active()
    rows = []
    for i, p in enumerate(prepared):
        if not torch.isfinite(torch.tensor(loss[i])):
            raise RuntimeError(f"{p.row['activation']}: loss became {loss[i]} during the benchmark")
        step_s = statistics.median(lm_times[i])
        row = {**header, **p.row, "final_loss": loss[i], "step_ms": step_s * 1e3, "step_ms_min": min(lm_times[i]) * 1e3}
        row["tokens_per_s"] = settings.batch_size * settings.seq_len / step_s
        row["mfu"] = row["flops_per_token"] * row["tokens_per_s"] / row["peak_flops"] if row["peak_flops"] else None
        row["mlp_ms"] = statistics.median(mlp_times[i]) * 1e3 if mlp_times else None
        rows.append(row)
    _add_ratios(rows)
    return rows


def _pair(row: dict[str, Any], fmt: Callable, same: str, eager: str) -> str:
    return f"{fmt(row[same], '.2f', 'x')} ({fmt(row[eager], '.2f', 'x')})"


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the rows (what the CLI prints and docs quote); ratios against SwiGLU on the same
    MLP path, then against unfused (eager) SwiGLU."""

    def fmt(v, spec, suffix=""):
        return "n/a" if v is None else format(v, spec) + suffix

    lines = [
        "| activation | MLP path | params | step ms | step vs SwiGLU (eager) | saved MiB | saved vs SwiGLU (eager) | "
        "MLP ms | MLP vs SwiGLU (eager) | MLP saved vs SwiGLU (eager) | tokens/s | MFU | peak mem GiB | "
        "mem vs SwiGLU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pair = functools.partial(_pair, r, fmt)
        lines.append(
            f"| {r['activation']} | {'fused' if r['fused_mlp'] else 'unfused'} | {r['params'] / 1e6:.1f}M | "
            f"{r['step_ms']:.1f} | {pair('step_vs_swiglu', 'step_vs_swiglu_eager')} | {fmt(r['saved_mib'], '.1f')} | "
            f"{pair('saved_vs_swiglu', 'saved_vs_swiglu_eager')} | {fmt(r['mlp_ms'], '.1f')} | "
            f"{pair('mlp_vs_swiglu', 'mlp_vs_swiglu_eager')} | {pair('mlp_saved_vs_swiglu', 'mlp_saved_vs_swiglu_eager')} | "
            f"{r['tokens_per_s']:,.0f} | {fmt(r['mfu'], '.1%')} | {fmt(r['peak_mem_gib'], '.2f')} | "
            f"{fmt(r['mem_vs_swiglu'], '.2f', 'x')} |"
        )
    return "\n".join(lines)
