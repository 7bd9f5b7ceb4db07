"""`polycom compare`: train one LM per activation (x seeds) on the same data, then report.

Every run shares the data folder, the model shape (d_model, layers, heads; the MLP width is the
parameter-matched default for each activation), the training recipe (`polycom.compare.recipe`) and --
for seed i -- the seed, so all activations see the same batches in the same order. The output folder
is described in `polycom.compare.layout`.
"""

from __future__ import annotations

import contextlib
import json
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
    clock = _Clock(enabled=ctx is None or ctx.is_main)

    def setup() -> tuple[Path, Path]:
        out = prepare_output_folder(cfg.out, overwrite=cfg.overwrite, resume=cfg.resume)
        record = {"config": asdict(cfg), "recipe": recipe.to_dict(), "device": str(device)}
        clock.begin(out, record, resume=cfg.resume)
        prepare = PrepareConfig(source=cfg.data, tokenizer=cfg.tokenizer)
        try:
            return out, resolve_prepared_data(prepare, folder=out / DATA_FOLDER, show_progress=show_progress).folder
        except BaseException:
            if not cfg.resume:  # bad --data: leave no compare.json that would block the next run
                _remove_outputs_of_setup(out)
            raise

    out, data_folder = _on_main_then_share(ctx, setup)
    shards = TokenShards(data_folder)
    runs = [
        (arm.label, seed, build_run_config(cfg, recipe, arm, seed, shards.folder, shards.vocab_size))
        for arm in arms
        for seed in range(cfg.seeds)
    ]
    prompt = _sample_prompt(cfg, shards, runs[0][2].model.max_seq_len)  # checked before the training
    with clock.saved_on_exit():  # an interrupted part adds its time to the comparison's total
        _train_runs(cfg, out, runs, shards, ctx, show_progress=show_progress, console=console)
        if ctx is not None and not ctx.is_main:  # rank 0 alone reads the runs back and writes the report
            _on_main_then_share(ctx, lambda: None)
            _leave_process_group(ctx)
            return {}
        results = collect_results(out, activations, cfg.seeds, cfg, recipe, device, baseline=cfg.baseline)
        add_paired_analysis(results, out)  # paired tests, convergence, validation noise (>= 2 seeds)
        sample_console = _sample_console(console, show_progress)
        results["samples"] = generate_samples(out, activations, cfg, console=sample_console, prompt=prompt)
        results["sample_prompt"] = prompt
    results["finished"] = _now()  # after the samples: the report is complete from here on
    results["wall_s"] = clock.total()  # all parts: the first run and every --resume
    _on_main_then_share(ctx, lambda: write_report(out, results))
    _leave_process_group(ctx)
    return results


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class _Clock:
    """Wall time of a comparison summed over its parts: compare.json keeps ``elapsed_s``, the time of the
    parts before this one (the first run, then each --resume), updated when a part ends for any reason."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled, self.t0, self.before, self.out, self.record = enabled, time.perf_counter(), 0.0, None, {}

    def begin(self, out: Path, record: dict[str, Any], *, resume: bool) -> None:
        """Write OUT/compare.json (`record` plus the elapsed time), continuing the sum on --resume."""
        if resume and (out / COMPARE_FILE).is_file():
            self.before = float(_read_json(out / COMPARE_FILE).get("elapsed_s", 0.0))
        self.out, self.record = out, record
        write_json(out / COMPARE_FILE, {**record, "elapsed_s": self.before})

    def total(self) -> float:
        return self.before + time.perf_counter() - self.t0

    @contextlib.contextmanager
    def saved_on_exit(self):
        try:
            yield
        finally:
            if self.enabled and self.out is not None:
                write_json(self.out / COMPARE_FILE, {**self.record, "elapsed_s": self.total()})


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a JSON object")
    return data


def _remove_outputs_of_setup(out: Path) -> None:
    """Undo a fresh comparison's setup (compare.json, a half-prepared data folder); OUT itself stays, empty."""
    (out / COMPARE_FILE).unlink(missing_ok=True)
    if (out / DATA_FOLDER).is_dir():
        shutil.rmtree(out / DATA_FOLDER)


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


def _sample_prompt(cfg: CompareConfig, shards, max_seq_len: int) -> str:
    """``--prompt`` (refused when it leaves no room in the context), else the validation line."""
    if cfg.sample_prompt is None:
        return validation_prompt(shards, max_tokens=max(1, max_seq_len // 4))
    n = len(shards.tokenizer().encode(cfg.sample_prompt))
    if n >= max_seq_len:
        raise UserError(f"--prompt is {n} tokens long; the model's context is {max_seq_len}: give a shorter one")
    return cfg.sample_prompt


def validation_prompt(shards, *, max_chars: int = 80, max_tokens: int | None = None) -> str:
    """The default sample prompt: the first line of the first validation document, with its newline.

    The document starts after the first eos token among the first 4096 validation tokens; without one
    (byte tokens have none) after the first newline, so the prompt is a whole line of the user's own data
    (a speaker's name such as ``ROMEO:`` on the embedded plays). At most `max_chars` characters and
    `max_tokens` tokens (the line is cut at the end so that the samples have room in the context).
    """
    tok = shards.tokenizer()
    ids = [int(t) for t in shards.val.tokens[:4096]]
    text = None
    if tok.eos_id is not None and tok.eos_id in ids[:-1]:
        text = tok.decode(ids[ids.index(tok.eos_id) + 1 :])
    if text is None:
        text = tok.decode(ids)
        text = text.split("\n", 1)[1] if "\n" in text else text
    line = next((line for line in text.split("\n") if line.strip()), text)[:max_chars].rstrip()
    while max_tokens is not None and line and len(tok.encode(line + "\n")) > max_tokens:
        line = line[:-1]
    return line + "\n"


def generate_samples(
    out: Path, activations: list[str], cfg: CompareConfig, *, console=None, prompt: str | None = None
) -> dict[str, str]:
    """A text sample per activation from its seed-0 model (same prompt and sampling seed for all).

    prompt: the text the samples continue (default: ``cfg.sample_prompt``, ``--prompt``).
    Runs under the CPU thread policy (`polycom.train.threads.cpu_threads`) and prints one line per
    activation to `console`, so a long sample phase is never silent.
    """
    from polycom.train.threads import cpu_threads

    prompt = prompt if prompt is not None else (cfg.sample_prompt or "\n")
    with cpu_threads():
        return _generate_samples(out, activations, cfg, console, prompt)


def _generate_samples(out: Path, activations: list[str], cfg: CompareConfig, console, prompt: str) -> dict[str, str]:
    from polycom.train.checkpoint import load_run

    samples = {}
    for i, activation in enumerate(activations, 1):
        if console is not None:
            console.print(f"sampling {i}/{len(activations)}: {activation} ({cfg.sample_tokens} tokens)")
        model, _, tok, _, _ = load_run(run_dir(out, activation, 0))
        ids = tok.encode(prompt) or [0]
        prompt_ids = torch.tensor([ids], dtype=torch.long)
        room = max(0, model.config.max_seq_len - prompt_ids.shape[1])
        gen = torch.Generator().manual_seed(1234)
        with torch.no_grad():
            outputs = model.generate(prompt_ids, min(cfg.sample_tokens, room), temperature=0.8, top_k=40, generator=gen)
        samples[activation] = tok.decode(outputs[0].tolist())
    return samples


def rebuild_report(out: str | Path) -> dict[str, Any]:
    """``polycom compare --report-only --out OUT``: report.md, loss.png and results.json again from the run
    folders alone, without training or sampling; returns the results.

    Samples, their prompt, the finish time and the wall time come from an earlier results.json when there
    is one (else: no samples, the total time kept in compare.json). Every run must be finished.
    """
    from polycom.compare.config import baseline_activation
    from polycom.compare.layout import RESULTS_FILE
    from polycom.compare.paired_report import add_paired_analysis
    from polycom.compare.report import collect_results, write_report

    out = Path(out).expanduser()
    if not (out / COMPARE_FILE).is_file():
        what = "does not exist" if not out.exists() else f"holds no comparison (no {COMPARE_FILE})"
        raise UserError(f"--report-only: {out} {what}")
    record = _read_json(out / COMPARE_FILE)
    known = set(CompareConfig.__dataclass_fields__)
    cfg = CompareConfig(**{k: v for k, v in record.get("config", {}).items() if k in known})
    activations, seeds = list(cfg.activations or []), cfg.seeds or 1
    for activation in activations:
        for seed in range(seeds):
            folder = run_dir(out, activation, seed)
            config = folder / "config.json"
            steps = _read_json(config).get("train", {}).get("steps") if config.is_file() else None
            if steps is None or not run_finished(folder, steps):
                raise UserError(
                    f"--report-only: run {folder.name} is not finished; continue the comparison with "
                    f"`polycom compare --resume --out {out}`"
                )
    recipe = TrainConfig.from_dict(record["recipe"])
    baseline = cfg.baseline or baseline_activation(activations)
    results = collect_results(out, activations, seeds, cfg, recipe, record.get("device", "cpu"), baseline=baseline)
    add_paired_analysis(results, out)
    earlier = _read_json(out / RESULTS_FILE) if (out / RESULTS_FILE).is_file() else {}
    results["samples"] = earlier.get("samples", {})
    if "sample_prompt" in earlier:
        results["sample_prompt"] = earlier["sample_prompt"]
    results["finished"] = earlier.get("finished", results["finished"])
    results["wall_s"] = earlier.get("wall_s", record.get("elapsed_s", 0.0))
    write_report(out, results)
    return results
