"""`polycom convert`: Swap a model's MLP activation for PolyCom (not yet available; arrives with issue 5, Hugging Face integration)."""

from __future__ import annotations

from polycom.cli import not_yet_available


def register(subparsers) -> None:
    parser = subparsers.add_parser("convert", help="Swap a model's MLP activation for PolyCom (not yet available)")
    parser.set_defaults(handler=not_yet_available("convert", "issue 5, Hugging Face integration"))
