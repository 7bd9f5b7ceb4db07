"""`polycom bench ops|model`: performance benchmarks (rows appended under benchmarks/results/).

The engines live in `polycom.bench`; `polycom.cli.bench_ops` and `polycom.cli.bench_model` hold their
command lines, each exposing ``register(subparsers)``.
"""

from __future__ import annotations

from polycom.cli import bench_model, bench_ops


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="Benchmark ops (kernels) or model training steps")
    sub = parser.add_subparsers(dest="bench_command", metavar="WHAT")
    bench_ops.register(sub)
    bench_model.register(sub)
    parser.set_defaults(handler=lambda args: parser.print_help() or 2)
