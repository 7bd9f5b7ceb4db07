"""`polycom compare`: train one LM per activation (x seeds) on the same data, then report.

Every run shares the data folder, the model shape (d_model, layers, heads; the MLP width is the
parameter-matched default for each activation), the optimizer recipe, and -- for seed i -- the seed, so
all activations see the same batches in the same order. Output folder::

    OUT/compare.json      what was asked (written first; marks the folder as a comparison)
    OUT/data/             the prepared token shards (unless --data names a prepared folder)
    OUT/runs/<act>-s<i>/  each run's folder (config.json, run.json, metrics.jsonl, checkpoints/, tokenizer/)
    OUT/results.json      numbers per activation (written last: marks the comparison as finished)
    OUT/report.md, OUT/loss.png

Default recipe: on CPU the `tiny` model (d 128, 2 layers, byte vocab) at sequence 128 x batch 16 for 250
steps, sized so all six default activations finish within 5 minutes on 2 cores; on a GPU the `small`
model (d 512, 6 layers) at 512 x 32 for 2000 steps.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from polycom.errors import UserError
from polycom.utils.atomic import write_json

DEFAULT_ACTIVATIONS = ("swiglu", "gelu", "relu", "relu2", "polyrelu", "polynorm")
BASELINE = "swiglu"


@dataclass
class Recipe:
    """Training settings of a comparison (everything but the activation)."""

    preset: str
    seq_len: int
    batch_size: int
    steps: int
    lr: float
    warmup_steps: int
    eval_interval: int
    eval_batches: int
    log_interval: int


CPU_RECIPE = Recipe(
    preset="tiny",
    seq_len=128,
    batch_size=16,
    steps=250,
    lr=3e-3,
    warmup_steps=25,
    eval_interval=50,
    eval_batches=8,
    log_interval=10,
)
GPU_RECIPE = Recipe(
    preset="small",
    seq_len=512,
    batch_size=32,
    steps=2000,
    lr=1e-3,
    warmup_steps=100,
    eval_interval=200,
    eval_batches=16,
    log_interval=20,
)


@dataclass
class CompareConfig:
    """What `polycom compare` runs (CLI flags map one to one).

    activations: registry names; `swiglu` is the report's baseline when listed, else the first activation.
    seeds: runs per activation (seed 0..seeds-1); >= 2 gives std and Welch t-tests.
    preset: model preset; None -> `tiny` on CPU, `small` on GPU. steps: None -> the recipe's.
    data: "embedded", a raw source (file/folder/hf:NAME) or a prepared data folder. tokenizer: for raw sources.
    overrides: extra ``--section.key=value`` applied to every run (e.g. ``--model.d_model=256``).
    """

    out: str
    activations: list[str] = field(default_factory=lambda: list(DEFAULT_ACTIVATIONS))
    seeds: int = 1
    preset: str | None = None
    steps: int | None = None
    data: str = "embedded"
    tokenizer: str = "byte"
    device: str = "auto"
    overrides: list[str] = field(default_factory=list)
    sample_prompt: str = "ROMEO.\n"
    sample_tokens: int = 200
    overwrite: bool = False
    resume: bool = False


def default_recipe(device: torch.device) -> Recipe:
    return GPU_RECIPE if device.type == "cuda" else CPU_RECIPE


def run_name(activation: str, seed: int) -> str:
    return f"{activation}-s{seed}"


def _check_activations(names: list[str]) -> list[str]:
    from polycom import activation_names

    valid = activation_names()
    clean = []
    for name in names:
        key = name.strip().lower()
        if key not in valid:
            raise UserError(f"unknown activation {name!r}; available: {', '.join(valid)}")
        if key in clean:
            raise UserError(f"activation {key!r} is listed twice")
        clean.append(key)
    if not clean:
        raise UserError("no activations to compare")
    return clean


def prepare_output_folder(cfg: CompareConfig) -> Path:
    """Create or check OUT; refuse a finished comparison unless --overwrite / --resume."""
    out = Path(cfg.out).expanduser()
    if cfg.overwrite and cfg.resume:
        raise UserError("--overwrite and --resume exclude each other")
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} exists and is not a folder")
    finished = (out / "results.json").exists()
    started = (out / "compare.json").exists()
    if out.exists() and any(out.iterdir()):
        if cfg.overwrite:
            if not started and not finished:
                raise UserError(f"{out} is not empty and is not a comparison folder; refusing to overwrite it")
            for name in ("runs", "data", "results.json", "report.md", "loss.png", "compare.json"):
                target = out / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        elif cfg.resume:
            if not started:
                raise UserError(f"cannot resume: {out} holds no comparison (no compare.json)")
        elif finished:
            raise UserError(
                f"{out} already holds a finished comparison (results.json); pass --overwrite to redo it, "
                "--resume to reuse its runs, or choose another --out"
            )
        elif started:
            raise UserError(f"{out} holds an unfinished comparison; pass --resume to continue it or --overwrite")
        else:
            raise UserError(f"output folder {out} is not empty; choose a new --out")
    elif cfg.resume:
        raise UserError(f"cannot resume: {out} holds no comparison")
    out.mkdir(parents=True, exist_ok=True)
    return out


def resolve_compare_data(cfg: CompareConfig, out: Path, show_progress: bool):
    """A prepared data folder shared by all runs: --data itself when prepared, else OUT/data."""
    from polycom.data.prepare import PrepareConfig, prepare_data
    from polycom.data.shards import TokenShards

    given = Path(cfg.data).expanduser()
    if (given / "meta.json").is_file():
        return TokenShards(given)
    folder = out / "data"
    if (folder / "meta.json").is_file():
        return TokenShards(folder)
    if folder.exists():
        shutil.rmtree(folder)  # a half-prepared folder from an interrupted run
    return prepare_data(PrepareConfig(source=cfg.data, tokenizer=cfg.tokenizer), folder, show_progress=show_progress)


def build_run_config(cfg: CompareConfig, recipe: Recipe, activation: str, seed: int, data_path: Path, vocab: int):
    """The TrainConfig of one run of the comparison."""
    from polycom.train.config import load_config

    steps = cfg.steps if cfg.steps is not None else recipe.steps
    base = [
        f"--model.activation={activation}",
        f"--model.vocab_size={vocab}",
        f"--model.max_seq_len={max(recipe.seq_len, 1)}",
        f"--train.steps={steps}",
        f"--train.batch_size={recipe.batch_size}",
        f"--train.seed={seed}",
        f"--train.eval_interval={min(recipe.eval_interval, steps)}",
        f"--train.eval_batches={recipe.eval_batches}",
        f"--train.log_interval={min(recipe.log_interval, steps)}",
        "--train.keep_checkpoints=1",
        f"--train.device={json.dumps(cfg.device)}",
        "--train.threads=-1",  # adaptive on CPU: other processes on the cores must not stall the runs
        f"--optim.lr={recipe.lr}",
        f"--optim.warmup_steps={min(recipe.warmup_steps, max(1, steps // 10))}",
        f"--data.path={json.dumps(str(data_path))}",
    ]
    run_cfg = load_config(preset=cfg.preset or recipe.preset, overrides=base + list(cfg.overrides))
    if run_cfg.model.activation != activation:
        raise UserError("--model.activation cannot be overridden in a comparison; use --activations")
    return run_cfg


def run_finished(run_dir: Path, steps: int) -> bool:
    from polycom.train.checkpoint import list_checkpoints
    from polycom.train.metrics import read_metrics

    records = read_metrics(run_dir / "metrics.jsonl")
    done = any(r.get("step") == steps and "val_loss" in r for r in records)
    return done and bool(list_checkpoints(run_dir))


def run_compare(cfg: CompareConfig, *, show_progress: bool = True, console=None) -> dict[str, Any]:
    """Run the whole comparison; returns the results dict (also written to OUT/results.json)."""
    from polycom.compare.progress import CompareProgress
    from polycom.compare.report import collect_results, write_report
    from polycom.data.shards import TokenShards
    from polycom.train.checkpoint import list_checkpoints
    from polycom.train.trainer import _pick_device, train

    activations = _check_activations(cfg.activations)
    if cfg.seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {cfg.seeds}")
    if cfg.steps is not None and cfg.steps < 1:
        raise UserError(f"--steps must be >= 1, got {cfg.steps}")
    device = _pick_device(cfg.device)
    recipe = default_recipe(device)
    # Validate the run config (bad preset / override) before touching the output folder.
    probe_cfg = build_run_config(cfg, recipe, activations[0], 0, Path("."), 256)
    ctx = _join_process_group(probe_cfg)  # None for a single process
    is_main = ctx is None or ctx.is_main
    t0 = time.perf_counter()

    def setup() -> tuple[Path, Path]:
        out = prepare_output_folder(cfg)
        write_json(out / "compare.json", {"config": asdict(cfg), "recipe": asdict(recipe), "device": str(device)})
        return out, resolve_compare_data(cfg, out, show_progress).folder

    out, data_folder = _on_main_then_share(ctx, setup)
    shards = TokenShards(data_folder)

    runs: list[tuple[str, int, Any]] = []
    for activation in activations:
        for seed in range(cfg.seeds):
            run_cfg = build_run_config(cfg, recipe, activation, seed, shards.folder, shards.vocab_size)
            runs.append((activation, seed, run_cfg))
    steps = runs[0][2].train.steps

    if not is_main:  # one rank reports progress
        from rich.console import Console

        console = Console(quiet=True)
    progress = CompareProgress(len(runs), steps, enabled=show_progress and is_main, console=console)
    with progress:
        for activation, seed, run_cfg in runs:
            run_dir = out / "runs" / run_name(activation, seed)
            progress.start_run(activation, seed)
            if cfg.resume and run_finished(run_dir, steps):
                progress.finish_run(activation, seed, skipped=True)
                continue
            resume_run = cfg.resume and bool(list_checkpoints(run_dir))

            def clear_stale_run(run_dir: Path = run_dir, resume_run: bool = resume_run) -> None:
                if run_dir.exists() and not resume_run:
                    shutil.rmtree(run_dir)  # a run that never reached a checkpoint: start it again

            _on_main_then_share(ctx, clear_stale_run)
            result = train(run_cfg, run_dir, resume=resume_run, on_event=progress.on_event, shards=shards)
            if result.interrupted:
                raise KeyboardInterrupt
            progress.finish_run(activation, seed, result=result)

    if not is_main:  # rank 0 alone reads the runs back and writes the report
        _on_main_then_share(ctx, lambda: None)
        _leave_process_group(ctx)
        return {}
    baseline = BASELINE if BASELINE in activations else activations[0]
    results = collect_results(out, activations, cfg.seeds, cfg, recipe, device, baseline=baseline)
    results["samples"] = generate_samples(out, activations, cfg)
    results["wall_s"] = time.perf_counter() - t0
    _on_main_then_share(ctx, lambda: write_report(out, results))
    _leave_process_group(ctx)
    return results


def _leave_process_group(ctx) -> None:
    if ctx is not None:
        from polycom.distributed import shutdown

        shutdown(ctx)


def _join_process_group(run_cfg):
    """Under torchrun (WORLD_SIZE > 1) start the process group once for all runs; else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from polycom.distributed import init_distributed

    return init_distributed(run_cfg.parallel)


def _on_main_then_share(ctx, fn: Callable[[], Any]) -> Any:
    """Run `fn` on rank 0 only and give its result (or its UserError) to every rank.

    Files of a comparison (output folder, data, report) have one writer; the other ranks wait here,
    so a refusal such as "folder holds a finished comparison" stops every rank with the same message.
    """
    if ctx is None:
        return fn()
    import torch.distributed as dist

    box: list[Any] = [None]
    if ctx.is_main:
        try:
            box[0] = ("ok", fn())
        except UserError as exc:
            box[0] = ("error", str(exc))
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise UserError(value)
    return value


def generate_samples(out: Path, activations: list[str], cfg: CompareConfig) -> dict[str, str]:
    """A text sample per activation from its seed-0 model (same prompt and sampling seed for all)."""
    from polycom.train.checkpoint import load_run_model

    samples = {}
    for activation in activations:
        model, _, tok = load_run_model(out / "runs" / run_name(activation, 0))
        ids = tok.encode(cfg.sample_prompt) or [0]
        prompt = torch.tensor([ids], dtype=torch.long)
        room = model.config.max_seq_len - prompt.shape[1]
        gen = torch.Generator().manual_seed(1234)
        with torch.no_grad():
            outputs = model.generate(prompt, min(cfg.sample_tokens, room), temperature=0.8, top_k=40, generator=gen)
        samples[activation] = tok.decode(outputs[0].tolist())
    return samples
