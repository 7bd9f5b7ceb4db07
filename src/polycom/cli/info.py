"""`polycom info`: versions, backend and the activation table (parameter counts per activation)."""

from __future__ import annotations

import argparse

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table


def register(subparsers) -> None:
    parser = subparsers.add_parser("info", help="Show versions, backend and the activation registry")
    parser.add_argument("--d-model", type=int, default=2048, help="model width for the parameter table")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from polycom import __version__
    from polycom.modules import activation_spec, mlp_param_table
    from polycom.ops.backend import requested_backend, triton_available

    console = Console()
    console.print(
        f"polycom {__version__}, torch {torch.__version__}, backend={requested_backend()}, "
        f"triton={'yes' if triton_available() else 'no'}, cuda={torch.cuda.is_available()}"
    )
    table = Table(title=f"MLP per activation at d_model={args.d_model} (parameter-matched widths)")
    for col in ("activation", "gated", "hidden", "params", "vs swiglu", "formula"):
        table.add_column(col)
    for name, row in mlp_param_table(args.d_model).items():
        spec = activation_spec(name)
        table.add_row(
            name,
            "yes" if spec.gated else "no",
            str(row["hidden_size"]),
            f"{row['params']:,}",
            f"{row['ratio_to_swiglu']:.4f}",
            escape(spec.description),
        )
    console.print(table)
    return 0
