"""`polycom train`: train one language model into a run folder.

    polycom train                                         # tiny preset on the embedded corpus
    polycom train --config configs/tiny-cpu.toml --steps 1000 --out runs/a
    polycom train --preset small --model.activation=polynorm --optim.lr=1e-3
    polycom train --resume runs/a                         # continue from the latest checkpoint
    polycom train --resume runs/a --steps 2000            # ... and train longer
    polycom train --resume runs/a --resume-step 400       # ... from an older kept checkpoint

Any config key can be set with --section.key=value (sections: model, data, optim, train, parallel);
an unknown key is an error that lists the valid ones. Ctrl-C or SIGTERM (preemption, a scheduler's time
limit) saves a checkpoint and exits (130 / 143) with the command that resumes. --resume on a run folder
stopped before its first checkpoint starts it again from step 0 with its saved config.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from polycom.train.cli_overrides import enable_overrides
from polycom.train.threads import THREADS_HELP
from polycom.utils.progress import DeferredProgress


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="Train one language model (run folder with metrics, checkpoints, tokenizer)",
        description=__doc__,
        epilog=THREADS_HELP + "; --train.threads=N sets it for this run.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", default=None, help="TOML run config ([model], [data], [optim], [train], ...)")
    parser.add_argument("--preset", default=None, help="model preset (tiny, small, 125m, ...)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (train.steps)")
    parser.add_argument("--data", default=None, help="data source or prepared data folder")
    parser.add_argument("--out", default=None, help="run folder (default: runs/train-<timestamp>)")
    parser.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    parser.add_argument(
        "--resume-step",
        type=int,
        default=None,
        metavar="N",
        help="with --resume: continue from the kept checkpoint of step N",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    enable_overrides(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from polycom.errors import UserError
    from polycom.train import load_resume_config, train
    from polycom.train.checkpoint import list_checkpoints
    from polycom.train.config import load_config

    is_main = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 talks

    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"--train.steps={args.steps}")
    if args.data is not None:
        key = "data.path" if (Path(args.data) / "meta.json").is_file() else "data.source"
        overrides.append(f"--{key}={json.dumps(args.data)}")
    if args.resume_step is not None and not args.resume:
        raise UserError("--resume-step needs --resume RUN_DIR")
    if args.resume:
        if args.config or args.preset or args.out:
            raise UserError("--resume takes the run's own config; do not combine it with --config, --preset or --out")
        if any(o.startswith("--model.") for o in overrides):
            raise UserError("the model of a resumed run cannot change; drop the --model.* overrides")
        run_dir = Path(args.resume)
        cfg = load_config(base=load_resume_config(run_dir), overrides=overrides)
        if args.resume_step is None and not list_checkpoints(run_dir) and is_main:
            print(f"{run_dir} holds no checkpoint yet: starting it again from step 0 with its config", file=sys.stderr)
    else:
        cfg = load_config(args.config, preset=args.preset, overrides=overrides)
        run_dir = Path(args.out or f"runs/train-{time.strftime('%Y%m%d-%H%M%S')}")

    if is_main:  # say where the run goes before anything slow (data preparation, the first steps)
        print(f"polycom train: run folder {run_dir}", file=sys.stderr, flush=True)
    if not args.resume and not any(o.startswith("--model.vocab_size=") for o in overrides):
        cfg = _vocab_from_data(cfg, show_progress=not args.no_progress and is_main, is_main=is_main)
    progress = _Progress(cfg.train.steps, enabled=not args.no_progress and is_main)
    with progress:
        result = train(
            cfg,
            run_dir,
            resume=bool(args.resume),
            resume_step=args.resume_step,
            on_event=progress.on_event,
            show_progress=True,
        )
    if result.interrupted:
        if is_main:
            print(
                f"{result.stop_signal or 'interrupted'} at step {result.steps}: checkpoint saved; "
                f"continue with: polycom train --resume {run_dir}",
                file=sys.stderr,
            )
        return 143 if result.stop_signal == "SIGTERM" else 130
    if not is_main:
        return 0
    print(
        f"{run_dir}: {result.steps} steps, val loss {_f(result.initial_val_loss)} -> {_f(result.final_val_loss)}, "
        f"{result.tokens_per_s or 0:,.0f} tokens/s, {result.wall_s:.0f} s"
    )
    return 0


def _vocab_from_data(cfg, *, show_progress: bool, is_main: bool):
    """`cfg` with the model's vocab raised to the data's (a BPE of 4096 tokens on a preset of 256), as
    `polycom compare` sets it; unchanged when the data's vocab fits.

    Called only when --model.vocab_size is not given: an explicit vocab smaller than the data's stays an
    error. The data is opened here when it is a prepared folder, or prepared here (into the cache the
    trainer then reads) in a single process; under torchrun a raw source is left to the trainer, which
    prepares it once for all ranks and names the fix if the vocab is too small.
    """
    from dataclasses import replace

    from polycom.data.resolve import open_prepared_folder
    from polycom.train.data_setup import resolve_data

    if cfg.data.path:
        shards = open_prepared_folder(cfg.data.path, option="data.path")
    elif int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        shards = resolve_data(cfg.data, show_progress=show_progress, is_main=is_main)
    else:
        return cfg
    if shards.vocab_size <= cfg.model.vocab_size:
        return cfg
    if is_main:
        print(
            f"model vocab_size {cfg.model.vocab_size} -> {shards.vocab_size}: the data's vocab "
            "(--model.vocab_size=N sets it)",
            file=sys.stderr,
        )
    return replace(cfg, model=replace(cfg.model, vocab_size=shards.vocab_size))


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


class _Progress(DeferredProgress):
    """One bar over the run's steps; starts at the first logged step (`polycom.utils.progress`)."""

    def __init__(self, steps: int, enabled: bool) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

        super().__init__(
            TextColumn("training"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            enabled=enabled,
        )
        self.task = self.progress.add_task("train", total=steps, info="")

    def on_event(self, record: dict) -> None:
        self.start()
        if record.get("skipped_step"):
            self.console.print(
                f"step {record['step']}: non-finite loss or gradient norm ({record['grad_norm']}): step skipped "
                f"({record['skipped_steps']} so far)"
            )
        self.progress.update(self.task, completed=record.get("step", 0), info=self.loss_info(record))
