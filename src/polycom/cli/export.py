"""`polycom export`: Export a run to a Hugging Face folder (not yet available; arrives with issue 5, Hugging Face integration)."""

from __future__ import annotations

from polycom.cli import not_yet_available


def register(subparsers) -> None:
    parser = subparsers.add_parser("export", help="Export a run to a Hugging Face folder (not yet available)")
    parser.set_defaults(handler=not_yet_available("export", "issue 5, Hugging Face integration"))
