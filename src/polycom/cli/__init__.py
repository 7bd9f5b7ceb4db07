"""The `polycom` command line.

Each subcommand lives in its own module under `polycom.cli` and exposes
``register(subparsers)``, which adds its parser and sets ``handler`` (a function taking the parsed
namespace and returning an exit code). User errors (`polycom.errors.UserError`, bad values, missing
files) are printed as one clear line with a non-zero exit; set ``POLYCOM_DEBUG=1`` for tracebacks. Under
torchrun every failing rank prints one line naming itself (``polycom train: rank 1: UserError: ...``), for
any error: a rank that lost its peers says so rather than printing the backend's traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from polycom.errors import UserError

# Order = order in `polycom --help`. Each name is a module polycom.cli.<name> with register().
COMMAND_MODULES = ("compare", "train", "data", "generate", "bench", "export", "convert", "eval", "analyze", "info")

USER_ERRORS = (UserError, ValueError, TypeError, FileNotFoundError, FileExistsError, NotADirectoryError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polycom",
        description="Polynomial Composition Activations (PolyReLU, PolyNorm): train, compare, evaluate, analyse.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"polycom.cli.{name}").register(sub)
    return parser


def _version() -> str:
    from polycom import __version__

    return f"polycom {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        if os.environ.get("POLYCOM_DEBUG"):
            raise
        _report(args.command, exc, user_error=True)
        return 2
    except Exception as exc:  # under torchrun: one line per failing rank, not N interleaved tracebacks
        from polycom.distributed.runtime import launched_rank

        if os.environ.get("POLYCOM_DEBUG") or launched_rank() is None:
            raise
        _report(args.command, exc, user_error=False)
        return 1


def _report(command: str, exc: BaseException, *, user_error: bool) -> None:
    """``polycom CMD: error: MESSAGE``; under torchrun ``polycom CMD: rank R: TYPE: MESSAGE`` (also for torchrun)."""
    from polycom.distributed.runtime import launched_rank, rank_failure_line, record_rank_failure

    rank = launched_rank()
    if rank is None:
        print(f"polycom {command}: error: {exc}", file=sys.stderr)
        return
    line = rank_failure_line(exc, rank, user_error=user_error)
    record_rank_failure(line)
    print(f"polycom {command}: {line}", file=sys.stderr, flush=True)
