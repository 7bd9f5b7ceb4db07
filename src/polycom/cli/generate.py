"""`polycom generate`: Sample text from a trained run (not yet available; arrives with issue 4, the training harness)."""

from __future__ import annotations

from polycom.cli import not_yet_available


def register(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="Sample text from a trained run (not yet available)")
    parser.set_defaults(handler=not_yet_available("generate", "issue 4, the training harness"))
