"""`polycom compare`: Train one LM per activation on the same data and compare them (not yet available; arrives with issue 4, the training harness)."""

from __future__ import annotations

from polycom.cli import not_yet_available


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare", help="Train one LM per activation on the same data and compare them (not yet available)"
    )
    parser.set_defaults(handler=not_yet_available("compare", "issue 4, the training harness"))
