"""User-facing error type.

`UserError` marks a problem with what the user asked for (a missing file, a bad config key, a
corrupt checkpoint). The CLI prints its message without a traceback and exits non-zero; library
code raises it (or a subclass of ValueError/TypeError for API misuse) with a message that names the
problem and, where possible, the fix.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager


class UserError(Exception):
    """A problem with the user's input, reported without a traceback by the CLI."""


def did_you_mean(name: str, known, n: int = 3) -> str:
    """``"; did you mean: a, b"`` naming the entries of `known` closest to `name` (difflib), or ``""``."""
    import difflib

    close = difflib.get_close_matches(str(name).strip().lower(), [str(k) for k in known], n=n, cutoff=0.6)
    return f"; did you mean: {', '.join(close)}" if close else ""


# OSErrors that are the user's to fix (full disk, quota, read-only or foreign folder), not bugs.
_USER_OS_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


@contextmanager
def writing_to(path, what: str, hint: str = "") -> Iterator[None]:
    """Turn a full disk, a quota or a read-only / not-writable folder while writing `what` into a UserError
    naming the path (the file the OS named, else `path`) and the cause; other OSErrors pass through."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _USER_OS_ERRORS:
            raise
        where = exc.filename or path
        raise UserError(
            f"could not write {what} to {where}: {exc.strerror or exc}{'; ' + hint if hint else ''}"
        ) from None
