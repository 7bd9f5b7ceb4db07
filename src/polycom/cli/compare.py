"""`polycom compare`: train one LM per activation on the same data and compare them.

polycom compare                                   # 6 activations, embedded corpus, <= 5 min on 2 CPU cores
polycom compare --activations swiglu,polynorm --seeds 3 --steps 600 --out runs/cmp
polycom compare --data my_texts/ --model.d_model=256   # extra --section.key=value go to every run
polycom compare --activations swiglu,polynorm,polynorm:order=2,polycom:base=silu:composition=2
polycom compare --report-only --out runs/cmp     # rebuild report.md / loss.png / results.json, nothing else
polycom compare --recipe order-ablation           # a named comparison: main, order-ablation, composition-ablation,
                                                  # relu-variants, moe (src/polycom/compare/recipes/*.toml)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from polycom.modules.activations import DEFAULT_ACTIVATIONS
from polycom.train.cli_overrides import enable_overrides
from polycom.train.threads import THREADS_HELP


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="Train one LM per activation on the same data and compare them (report.md, loss.png)",
        description=__doc__,
        epilog=THREADS_HELP + "; --train.threads=N sets it for the training runs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--activations",
        default=None,
        help="comma-separated arms, name[:option=value...] (default: the recipe's, else "
        f"{','.join(DEFAULT_ACTIVATIONS)}); the baseline is swiglu when listed, else the first",
    )
    parser.add_argument("--recipe", default=None, help="named comparison recipe or a .toml path (see above)")
    parser.add_argument("--baseline", default=None, help="the arm the others are compared with")
    parser.add_argument(
        "--seeds", type=int, default=None, help="runs per arm (default: the recipe's, else 1; >= 2 adds paired tests)"
    )
    parser.add_argument("--preset", default=None, help="model preset (default: tiny on CPU, small on GPU)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: the recipe's)")
    parser.add_argument(
        "--data",
        default="embedded",
        help="'embedded' (default), a .txt/.jsonl/.parquet file or folder, hf:NAME, or a prepared data folder",
    )
    parser.add_argument("--tokenizer", default="byte", help="for raw --data: byte, bpe or a tokenizer folder")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--out", default=None, help="output folder (default: runs/compare-<timestamp>)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--overwrite", action="store_true", help="redo a comparison in an existing output folder")
    group.add_argument("--resume", action="store_true", help="continue a comparison, reusing finished runs")
    parser.add_argument(
        "--prompt",
        default=None,
        help="text the report's samples continue, \\n for a newline (default: the first line of a validation document)",
    )
    group.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild report.md, loss.png and results.json of --out from its runs: no training, no sampling",
    )
    parser.add_argument("--no-progress", action="store_true", help="no live progress display")
    enable_overrides(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from polycom.compare import CompareConfig, run_compare

    if args.report_only:
        return _report_only(args)
    overrides = list(args.overrides)
    out = args.out or f"runs/compare-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = CompareConfig(
        out=out,
        activations=None if args.activations is None else [a for a in args.activations.split(",") if a.strip()],
        seeds=args.seeds,
        recipe=args.recipe,
        baseline=args.baseline,
        preset=args.preset,
        steps=args.steps,
        data=args.data,
        tokenizer=args.tokenizer,
        device=args.device,
        overrides=overrides,
        overwrite=args.overwrite,
        resume=args.resume,
        sample_prompt=None if args.prompt is None else args.prompt.replace("\\n", "\n"),
    )
    if os.environ.get("RANK", "0") == "0":  # say where the results go before the first run starts
        print(f"polycom compare: output folder {out}", file=sys.stderr, flush=True)
    try:
        results = run_compare(cfg, show_progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"interrupted; continue with: polycom compare --resume --out {out}", file=sys.stderr)
        return 130
    if results:  # empty on the ranks > 0 of a torchrun launch
        _print_summary(results, Path(out))
    return 0


def _report_only(args: argparse.Namespace) -> int:
    """--report-only: the report of an existing comparison rebuilt from its run folders."""
    from polycom.compare.runner import rebuild_report
    from polycom.errors import UserError

    if args.out is None:
        raise UserError("--report-only needs --out DIR, the comparison's folder")
    results = rebuild_report(args.out)
    _print_summary(results, Path(args.out))
    return 0


def _print_summary(results: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    seeds = results.get("seeds", 1)
    table = Table(title=f"polycom compare ({results['wall_s']:.0f} s)")
    # Short headers and no wrapping: the table fits 80 columns (a pipe gets 80) even with "mean ± std".
    columns = ["activation", "params", "val start", "val end", "drop", "Δ vs base"]
    if seeds >= 2:
        columns.append("p")
    for col in columns:
        table.add_column(col, justify="right" if col != "activation" else "left", no_wrap=True)
    for act in results["activations"]:
        e = results["results"][act]
        vs = e.get("vs_baseline")
        diff = "" if not vs or act == vs["baseline"] else f"{vs['val_loss_diff']:+.3f}"
        row = [
            act,
            f"{e['num_parameters']:,}",
            f"{e['initial_val_loss']['mean']:.3f}",
            _mean_std(e["final_val_loss"], seeds),
            f"{e['val_loss_drop_pct']['mean']:.1f}%",
            diff,
        ]
        if seeds >= 2:
            p = None if not vs or act == vs["baseline"] else vs.get("p_value")
            row.append("" if p is None else f"{p:.3g}")
        table.add_row(*row)
    console = Console()
    console.print(table)
    if seeds >= 2:
        console.print(f"val loss end: mean ± std over {seeds} seeds; p: Welch t-test vs the baseline")
    for label, name in (("report", "report.md"), ("plot", "loss.png"), ("results", "results.json")):
        print(f"{label}: {out / name}")  # plain print: a terminal-width wrap must not split a path


def _mean_std(stat: dict, seeds: int) -> str:
    """``mean ± std`` of a results.json statistic (the mean alone for one seed)."""
    if stat.get("mean") is None:
        return "n/a"
    if seeds < 2 or stat.get("std") is None:
        return f"{stat['mean']:.3f}"
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"
