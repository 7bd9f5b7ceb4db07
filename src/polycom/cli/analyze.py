"""`polycom analyze`: Theory and model analyses (not yet available; arrives with issue 6, analysis tools)."""

from __future__ import annotations

from polycom.cli import not_yet_available


def register(subparsers) -> None:
    parser = subparsers.add_parser("analyze", help="Theory and model analyses (not yet available)")
    parser.set_defaults(handler=not_yet_available("analyze", "issue 6, analysis tools"))
