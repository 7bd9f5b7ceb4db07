"""`polycom bench ops`: the op-level kernel benchmark (runs `benchmarks/bench_ops.py` of the source checkout).

The benchmark lives in the repository's ``benchmarks/`` folder (it is a development tool, next to the
results it appends to); this module loads it by path and exposes its arguments under ``polycom bench``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from polycom.errors import UserError

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "bench_ops.py"
_MODULE_NAME = "polycom_benchmarks_bench_ops"


def load_script() -> ModuleType | None:
    """The benchmarks/bench_ops.py module, or None outside a source checkout."""
    if _MODULE_NAME in sys.modules:
        return sys.modules[_MODULE_NAME]
    if not SCRIPT.is_file():
        return None
    spec = importlib.util.spec_from_file_location(_MODULE_NAME, SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[_MODULE_NAME] = module
    spec.loader.exec_module(module)
    return module


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "ops",
        help="Benchmark the PolyNorm/PolyReLU kernels against eager, checkpointed and compiled references (CUDA)",
        description=(
            "Correctness check, then median/p20/p80 times, effective GB/s, fraction of the copy bandwidth "
            "measured in the same run and peak memory for fwd, bwd and fwd+bwd; rows are appended under "
            "benchmarks/results/. Needs a CUDA GPU."
        ),
    )
    script = load_script()
    if script is not None:
        script.add_arguments(parser)
    parser.set_defaults(handler=_handler)


def _handler(args: argparse.Namespace) -> int:
    script = load_script()
    if script is None:
        raise UserError(f"the benchmark script {SCRIPT} was not found; `polycom bench ops` runs from a source checkout")
    return script.handle(args)
