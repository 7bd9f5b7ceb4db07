"""`polycom bench ops|model`: performance benchmarks (rows appended under benchmarks/results/).

`bench ops` lives in `polycom.cli.bench_ops` (kernels, issue 3) and `bench model` in
`polycom.cli.bench_model` (training step, issue 4); each exposes ``register(subparsers)``.
"""

from __future__ import annotations

import importlib

from polycom.cli import not_yet_available

_SUBCOMMANDS = {"ops": ("bench_ops", "issue 3, fused kernels"), "model": ("bench_model", "issue 4, training harness")}


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="Benchmark ops (kernels) or model training steps")
    sub = parser.add_subparsers(dest="bench_command", metavar="WHAT")
    for name, (module, issue) in _SUBCOMMANDS.items():
        try:
            importlib.import_module(f"polycom.cli.{module}").register(sub)
        except ModuleNotFoundError as exc:
            if exc.name != f"polycom.cli.{module}":
                raise
            sub.add_parser(name, help="(not yet available)").set_defaults(
                handler=not_yet_available(f"bench {name}", issue)
            )
    parser.set_defaults(handler=lambda args: parser.print_help() or 2)
