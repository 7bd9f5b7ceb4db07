"""User-facing error type.

`UserError` marks a problem with what the user asked for (a missing file, a bad config key, a
corrupt checkpoint). The CLI prints its message without a traceback and exits non-zero; library
code raises it (or a subclass of ValueError/TypeError for API misuse) with a message that names the
problem and, where possible, the fix.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, reported without a traceback by the CLI."""
