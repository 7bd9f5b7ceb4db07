"""Where console output goes: a terminal of some width, or a pipe / file.

Commands with wide tables (`polycom convert`, `polycom bench ops`) print the full table only where it
fits: stdout is a terminal at least as wide as the table's longest line. Otherwise (a narrower terminal,
a pipe, a file) they print a compact form whose lines fit `COMPACT_WIDTH` columns; the full table stays
in the command's report file.
"""

from __future__ import annotations

import shutil
import sys
import textwrap

COMPACT_WIDTH = 80  # a pipe's reader (less, a log, an e-mail) is assumed to show 80 columns


def terminal_columns() -> int | None:
    """Columns of the terminal stdout writes to (``COLUMNS`` overrides); None when stdout is not a terminal."""
    try:
        if not sys.stdout.isatty():
            return None
    except (AttributeError, ValueError):  # replaced or closed stdout
        return None
    return shutil.get_terminal_size().columns


def fits_terminal(lines: list[str]) -> bool:
    """True when stdout is a terminal at least as wide as the longest of `lines`."""
    columns = terminal_columns()
    return columns is not None and max((len(line) for line in lines), default=0) <= columns


def compact_width() -> int:
    """Line width for compact output: `COMPACT_WIDTH`, or the terminal's width when that is narrower."""
    columns = terminal_columns()
    return COMPACT_WIDTH if columns is None else max(20, min(COMPACT_WIDTH, columns))


def wrap(line: str, width: int, indent: str = "    ") -> list[str]:
    """`line` broken at spaces into lines of at most `width` columns (continuations indented by `indent`).

    Words are never split (a name or path longer than `width` stays whole on its own line)."""
    return textwrap.wrap(line, width, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False) or [""]
