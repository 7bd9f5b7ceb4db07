"""`polycom train`: Train one language model (not yet available; arrives with issue 4, the training harness)."""

from __future__ import annotations

from polycom.cli import not_yet_available


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="Train one language model (not yet available)")
    parser.set_defaults(handler=not_yet_available("train", "issue 4, the training harness"))
