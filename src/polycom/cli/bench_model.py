"""`polycom bench model`: LM training-step and MLP-block time, saved bytes, MFU and peak memory per activation.

Defaults: on a GPU the anchor benchmark config (preset `anchor`: d 1024, 8 layers,
16 heads, vocab 32000; batch 16 x 1024, bf16 autocast, fused AdamW); on CPU the `tiny` preset with a
small batch in fp32 (MFU and memory "n/a"). SwiGLU always runs first as the baseline; every activation runs
on the fused MLP path and SwiGLU also unfused (--mlp-paths both: all unfused too), timed in interleaved
rounds (medians). Rows (card,
versions, git commit, date, settings, numbers) are appended to
benchmarks/results/bench_model.jsonl (and .csv beside it) unless --no-save. The model is changed with
``--model.key=value`` overrides, the grammar of `polycom train`.

    polycom bench model --quick                      # ~1-2 min on an H100/H200
    polycom bench model --activations swiglu,polynorm --steps 50 --compile
    polycom bench model --preset paper-1b --batch-size 4 --seq-len 4096 --model.n_layers=4
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from polycom.bench.model import CSV_FIELDS, DEFAULT_ACTIVATIONS, BenchSettings, format_table, run_benchmark, variants
from polycom.bench.rows import append_rows
from polycom.models.presets import get_preset
from polycom.train.cli_overrides import enable_overrides

DEFAULT_OUT = Path("benchmarks/results/bench_model.jsonl")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "model",
        help="Training-step time, tokens/s, MFU and peak memory of the LM per activation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", help="model preset (default: anchor on GPU, tiny on CPU)")
    p.add_argument(
        "--activations",
        default=",".join(DEFAULT_ACTIVATIONS),
        help="comma-separated activations; swiglu is always added as the baseline (default: %(default)s)",
    )
    p.add_argument("--batch-size", type=int, help="sequences per step (default: 16 on GPU, 4 on CPU)")
    p.add_argument("--seq-len", type=int, help="tokens per sequence (default: 1024 on GPU, 128 on CPU)")
    p.add_argument("--steps", type=int, help="timed steps (default 30 GPU / 5 CPU; 10 / 2 with --quick)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 5 GPU / 1 CPU; 3 / 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="few steps: a first look in ~1-2 minutes on a GPU")
    p.add_argument(
        "--dtype", choices=("bf16", "fp32"), help="bf16 autocast or plain fp32 (default: bf16 GPU, fp32 CPU)"
    )
    p.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when available)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument(
        "--activation-checkpointing", action="store_true", help="recompute every block in backward (saves memory)"
    )
    p.add_argument("--backend", choices=("auto", "torch", "triton"), help="PolyCom op backend for the run")
    p.add_argument(
        "--mlp-paths",
        choices=("fused", "both"),
        default="fused",
        help="fused: every activation on the fused MLP path plus unfused SwiGLU; both: every activation both ways",
    )
    p.add_argument("--mlp-d-model", type=int, help="MLP-block benchmark width (default: the model's d_model)")
    p.add_argument("--mlp-tokens", type=int, help="MLP-block tokens (default: batch x seq-len; 0: no MLP block)")
    p.add_argument(
        "--cpu-compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compiled closed-form activation math on CPU tensors (POLYCOM_CPU_COMPILE, the default); "
        "--no-cpu-compile: eager",
    )
    p.add_argument("--peak-tflops", type=float, help="peak bf16 TFLOP/s for MFU when the card is not in the table")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON-lines file to append to (default: %(default)s)")
    p.add_argument("--no-save", action="store_true", help="print the table only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--commit", help="git commit to record in the rows when the checkout has no .git (default: git rev-parse HEAD)"
    )
    enable_overrides(p)  # --model.key=value (e.g. --model.n_layers=4, --model.moe.top_k=2), as in `polycom train`
    p.set_defaults(handler=run)


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.startswith("cuda")
    preset = args.preset or ("anchor" if gpu else "tiny")
    get_preset(preset)  # unknown -> ValueError listing the presets
    activations = tuple(a.strip().lower() for a in args.activations.split(",") if a.strip())
    if args.quick:
        steps, warmup = (10, 3) if gpu else (2, 1)
    else:
        steps, warmup = (30, 5) if gpu else (5, 1)
    return BenchSettings(
        preset=preset,
        activations=activations,
        batch_size=args.batch_size or (16 if gpu else 4),
        seq_len=args.seq_len or (1024 if gpu else 128),
        steps=args.steps if args.steps is not None else steps,
        warmup=args.warmup if args.warmup is not None else warmup,
        dtype=args.dtype or ("bf16" if gpu else "fp32"),
        device=device,
        compile=args.compile,
        activation_checkpointing=args.activation_checkpointing,
        backend=args.backend,
        peak_flops=args.peak_tflops * 1e12 if args.peak_tflops else None,
        overrides=list(args.overrides),
        seed=args.seed,
        mlp_paths=args.mlp_paths,
        mlp_d_model=args.mlp_d_model,
        mlp_tokens=args.mlp_tokens,
        cpu_compile=args.cpu_compile,
        commit=args.commit,
    )


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    settings = settings_from_args(args)
    console = Console(stderr=True)
    console.print(
        f"bench model: preset {settings.preset}, batch {settings.batch_size} x {settings.seq_len}, {settings.dtype}, "
        f"{settings.warmup} warmup + {settings.steps} timed steps on {settings.device}"
    )
    n = len(variants(settings)) + 1
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task("activations", total=n)
        seen = []

        def on_activation(name: str) -> None:
            if seen:
                progress.advance(task)
            seen.append(name)
            progress.update(task, description=f"measuring {name}")

        rows = run_benchmark(settings, on_activation)
        progress.advance(task)
    first = rows[0]
    print(f"card: {first['card']} | torch {first['torch']} | commit {first['git_commit']} | {first['date']}")
    print(format_table(rows))
    if first["peak_flops"] is None:
        reason = "CPU run" if settings.device == "cpu" else "card not in the peak table; pass --peak-tflops"
        print(f"MFU: n/a ({reason})")
    if not args.no_save:
        append_rows(args.out, rows, CSV_FIELDS)
        print(f"appended {len(rows)} rows to {args.out} and {args.out.with_suffix('.csv').name}")
    return 0
