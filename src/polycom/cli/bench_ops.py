"""`polycom bench ops`: the op-level kernel benchmark (engine: `polycom.bench.ops`).

polycom bench ops --quick                      # GPU: reduced set, ~2 min on an H100
polycom bench ops --device cpu --quick         # harness smoke test on tiny shapes (Triton interpreter)
polycom bench ops --summarize benchmarks/results/ops.jsonl
polycom bench ops --static --quick             # no GPU: compile the kernels for sm_90, print registers/spills
"""

from __future__ import annotations

import argparse
from pathlib import Path

from polycom.bench import ops as bench_ops
from polycom.bench.op_cases import ALL_OPS, POLY_OPS
from polycom.bench.op_providers import PROVIDERS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    shapes = " ".join(bench_ops.FULL_SHAPES)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="reduced set: bf16, polynorm / polyrelu / polynorm_gated, providers polycom / eager / compile, shapes "
        f"{' '.join(bench_ops.QUICK_SHAPES)} on CUDA; on CPU tiny shapes and no compile (finishes in seconds)",
    )
    parser.add_argument(
        "--shapes", nargs="+", metavar="MxN", help=f"tokens x hidden (default {shapes}; CPU: tiny shapes)"
    )
    parser.add_argument("--dtypes", nargs="+", metavar="DTYPE", help="bf16 fp16 fp32 (default all)")
    parser.add_argument("--ops", nargs="+", metavar="OP", help=f"{' '.join(ALL_OPS)} (default all)")
    parser.add_argument("--providers", nargs="+", metavar="P", help=f"{' '.join(PROVIDERS)} (default all)")
    parser.add_argument("--modes", nargs="+", metavar="MODE", help="fwd bwd fwdbwd (default all)")
    parser.add_argument("--order", type=int, default=3, help="polynomial order r (default 3)")
    parser.add_argument("--out", default=str(bench_ops.DEFAULT_OUT), help="folder for ops.jsonl / ops.csv")
    parser.add_argument("--no-write", action="store_true", help="print the table only, append no rows")
    parser.add_argument(
        "--tiling",
        metavar="K=V,...",
        action="append",
        help="override kernel launch limits (fields of polycom.ops.triton.config.TilingLimits: variant, num_warps_fwd, "
        "num_warps_bwd, num_stages, max_single_tile_*, split_tile_*, ...); repeat to sweep (one run per --tiling)",
    )
    parser.add_argument(
        "--device",
        default="cuda",
        choices=("cuda", "cpu"),
        help="cuda (default). cpu only smoke-tests the harness on tiny shapes (Triton interpreter); no speed meaning",
    )
    parser.add_argument("--summarize", metavar="JSONL", help="print a Markdown summary of a results file and exit")
    parser.add_argument(
        "--static",
        action="store_true",
        help="no GPU needed: compile the kernels chosen for --shapes/--dtypes/--ops for sm_90 and print registers and "
        "spills (cubin resource usage); appends no rows",
    )
    parser.add_argument("--sms", type=int, default=132, help="SM count assumed by --static (H100 SXM: 132)")
    parser.add_argument(
        "--commit", help="git commit to record in the rows when the checkout has no .git (default: git rev-parse HEAD)"
    )


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "ops",
        help="Benchmark the PolyNorm/PolyReLU kernels against eager, checkpointed and compiled references (CUDA)",
        description=(
            "Correctness check, then median/p20/p80 times, effective GB/s, fraction of the copy bandwidth "
            "measured in the same run and peak memory for fwd, bwd and fwd+bwd; rows are appended under "
            "benchmarks/results/. Needs a CUDA GPU (--device cpu: harness smoke test only)."
        ),
    )
    add_arguments(parser)
    parser.set_defaults(handler=handle)


def config_from_args(
    args: argparse.Namespace, *, static: bool = False, tiling: str | None = None
) -> bench_ops.BenchConfig:
    # --static compiles for sm_90: GPU shapes even on a machine without one.
    return bench_ops.make_config(
        quick=args.quick,
        device="cuda" if static else args.device,
        shapes=args.shapes,
        dtypes=args.dtypes,
        ops=args.ops,
        providers=args.providers,
        modes=args.modes,
        order=args.order,
        out_dir=Path(args.out),
        tiling=bench_ops.parse_tiling(tiling),
        write=not args.no_write,
        commit=args.commit,
    )


def handle(args: argparse.Namespace) -> int:
    if args.summarize:
        from polycom.bench.ops_report import summarize

        print(summarize(Path(args.summarize)))
        return 0
    if args.static:
        from polycom.bench.ops_static import markdown_table, static_resources

        rows = []
        for tiling in args.tiling or [None]:  # one compile sweep per --tiling
            cfg = config_from_args(args, static=True, tiling=tiling)
            bench_ops.apply_tiling(cfg.tiling)
            ops = [op for op in cfg.ops if op in POLY_OPS]
            rows += static_resources(cfg.shapes, cfg.dtypes, ops, cfg.order, args.sms)
        print(markdown_table(rows))
        return 1 if any("error" in r for r in rows) else 0
    rows = []
    for tiling in args.tiling or [None]:  # one measured run per --tiling (rows record it)
        rows += bench_ops.run(config_from_args(args, tiling=tiling))
    return 1 if any(r["check"] != "ok" and r["provider"] == "polycom" for r in rows) else 0
