"""User-facing error type.

`UserError` marks a problem with what the user asked for (a missing file, a bad config key, a
corrupt checkpoint). The CLI prints its message without a traceback and exits non-zero; library
code raises it (or a subclass of ValueError/TypeError for API misuse) with a message that names the
problem and, where possible, the fix.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, reported without a traceback by the CLI."""


def did_you_mean(name: str, known, n: int = 3) -> str:
    """``"; did you mean: a, b"`` naming the entries of `known` closest to `name` (difflib), or ``""``."""
    import difflib

    close = difflib.get_close_matches(str(name).strip().lower(), [str(k) for k in known], n=n, cutoff=0.6)
    return f"; did you mean: {', '.join(close)}" if close else ""
