"""`polycom eval`: Evaluate a model with lm-evaluation-harness (not yet available; arrives with issue 5, evaluation)."""

from __future__ import annotations

from polycom.cli import not_yet_available


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="Evaluate a model with lm-evaluation-harness (not yet available)")
    parser.set_defaults(handler=not_yet_available("eval", "issue 5, evaluation"))
