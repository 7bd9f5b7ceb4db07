"""`polycom compare`: train one LM per activation (x seeds) on the same data, then report.

Every run shares the data folder, the model shape (d_model, layers, heads; the MLP width is the
parameter-matched default for each activation), the training recipe (`polycom.compare.recipe`) and --
for seed i -- the seed, so all activations see the same batches in the same order. The output folder
is described in `polycom.compare.layout`.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from polycom.compare.config import CompareConfig
from polycom.compare.layout import COMPARE_FILE, DATA_FOLDER, prepare_output_folder, run_dir, run_finished
from polycom.compare.recipe import build_run_config, resolve_comparison
from polycom.errors import UserError
from polycom.train.config import TrainConfig
from polycom.utils.atomic import write_json


def run_compare(cfg: CompareConfig, *, show_progress: bool = True, console=None) -> dict[str, Any]:
    """Run the whole comparison; returns the results dict (also written to OUT/results.json)."""
    from polycom.compare.paired_report import add_paired_analysis
    from polycom.compare.report import collect_results, write_report
    from polycom.data.prepare import PrepareConfig
    from polycom.data.resolve import resolve_prepared_data
    from polycom.data.shards import TokenShards
    from polycom.utils.hardware import pick_device

    if cfg.steps is not None and cfg.steps < 1:
        raise UserError(f"--steps must be >= 1, got {cfg.steps}")
    device = pick_device(cfg.device, option="--device")
    cfg, recipe, arms = resolve_comparison(cfg, device)  # arms, seeds, baseline from --recipe or the defaults
    activations = [arm.label for arm in arms]
    # Validate the run config (bad preset / override) before touching the output folder.
    probe_cfg = build_run_config(cfg, recipe, arms[0], 0, Path("."), 256)
    ctx = _join_process_group(probe_cfg)  # None for a single process
    t0 = time.perf_counter()

    def setup() -> tuple[Path, Path]:
        out = prepare_output_folder(cfg.out, overwrite=cfg.overwrite, resume=cfg.resume)
        write_json(out / COMPARE_FILE, {"config": asdict(cfg), "recipe": recipe.to_dict(), "device": str(device)})
        prepare = PrepareConfig(source=cfg.data, tokenizer=cfg.tokenizer)
        return out, resolve_prepared_data(prepare, folder=out / DATA_FOLDER, show_progress=show_progress).folder

    out, data_folder = _on_main_then_share(ctx, setup)
    shards = TokenShards(data_folder)
    runs = [
        (arm.label, seed, build_run_config(cfg, recipe, arm, seed, shards.folder, shards.vocab_size))
        for arm in arms
        for seed in range(cfg.seeds)
    ]
    _train_runs(cfg, out, runs, shards, ctx, show_progress=show_progress, console=console)

    if ctx is not None and not ctx.is_main:  # rank 0 alone reads the runs back and writes the report
        _on_main_then_share(ctx, lambda: None)
        _leave_process_group(ctx)
        return {}
    results = collect_results(out, activations, cfg.seeds, cfg, recipe, device, baseline=cfg.baseline)
    add_paired_analysis(results, out)  # paired tests, convergence, validation noise (>= 2 seeds)
    results["samples"] = generate_samples(out, activations, cfg, console=_sample_console(console, show_progress))
    results["wall_s"] = time.perf_counter() - t0
    _on_main_then_share(ctx, lambda: write_report(out, results))
    _leave_process_group(ctx)
    return results


def _train_runs(
    cfg: CompareConfig,
    out: Path,
    runs: list[tuple[str, int, TrainConfig]],
    shards,
    ctx,
    *,
    show_progress: bool,
    console=None,
) -> None:
    """Train every (activation, seed) run in order; with --resume skip finished runs, continue the others."""
    from polycom.compare.progress import CompareProgress
    from polycom.train.checkpoint import list_checkpoints
    from polycom.train.trainer import train

    is_main = ctx is None or ctx.is_main
    steps = runs[0][2].train.steps
    if not is_main:  # one rank reports progress
        from rich.console import Console

        console = Console(quiet=True)
    progress = CompareProgress(len(runs), steps, enabled=show_progress and is_main, console=console)
    with progress:
        for activation, seed, run_cfg in runs:
            folder = run_dir(out, activation, seed)
            progress.start_run(activation, seed)
            if cfg.resume and run_finished(folder, steps):
                progress.finish_run(activation, seed, skipped=True)
                continue
            resume_run = cfg.resume and bool(list_checkpoints(folder))

            def clear_stale_run(folder: Path = folder, resume_run: bool = resume_run) -> None:
                if folder.exists() and not resume_run:
                    shutil.rmtree(folder)  # a run that never reached a checkpoint: start it again

            _on_main_then_share(ctx, clear_stale_run)
            result = train(run_cfg, folder, resume=resume_run, on_event=progress.on_event, shards=shards)
            if result.interrupted:
                raise KeyboardInterrupt
            progress.finish_run(activation, seed, result=result)


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


def _sample_console(console, show_progress: bool):
    """Where the sample phase reports its progress: the given console, stderr, or nowhere (--no-progress)."""
    from rich.console import Console

    return console if console is not None else Console(stderr=True, quiet=not show_progress)


def generate_samples(out: Path, activations: list[str], cfg: CompareConfig, *, console=None) -> dict[str, str]:
    """A text sample per activation from its seed-0 model (same prompt and sampling seed for all).

    Runs under the CPU thread policy (`polycom.train.threads.cpu_threads`) and prints one line per
    activation to `console`, so a long sample phase is never silent.
    """
    from polycom.train.threads import cpu_threads

    with cpu_threads():
        return _generate_samples(out, activations, cfg, console)


def _generate_samples(out: Path, activations: list[str], cfg: CompareConfig, console) -> dict[str, str]:
    from polycom.train.checkpoint import load_run

    samples = {}
    for i, activation in enumerate(activations, 1):
        if console is not None:
            console.print(f"sampling {i}/{len(activations)}: {activation} ({cfg.sample_tokens} tokens)")
        model, _, tok, _, _ = load_run(run_dir(out, activation, 0))
        ids = tok.encode(cfg.sample_prompt) or [0]
        prompt = torch.tensor([ids], dtype=torch.long)
        room = model.config.max_seq_len - prompt.shape[1]
        gen = torch.Generator().manual_seed(1234)
        with torch.no_grad():
            outputs = model.generate(prompt, min(cfg.sample_tokens, room), temperature=0.8, top_k=40, generator=gen)
        samples[activation] = tok.decode(outputs[0].tolist())
    return samples
