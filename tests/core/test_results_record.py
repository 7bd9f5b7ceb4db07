"""docs/results.md, the record of the paper's comparisons: it shows no throughput measured on a loaded machine.

The runs shared the 2 cores with other jobs (load 8-11 for some arms, none for others), so their tokens/s
compare nothing; the record must leave them out of its tables or label them with the load."""

from __future__ import annotations

from pathlib import Path

RECORD = Path(__file__).resolve().parents[2] / "docs" / "results.md"


def _table_headers(text: str) -> list[str]:
    lines = text.splitlines()
    return [line for line, below in zip(lines, lines[1:]) if line.startswith("|") and below.startswith("|---")]


def test_no_unlabelled_throughput_column():
    headers = _table_headers(RECORD.read_text())
    assert headers, "no table found in docs/results.md"
    for header in headers:
        cells = [c.strip().lower() for c in header.strip("|").split("|")]
        for cell in cells:
            if "tokens/s" in cell or "throughput" in cell:
                assert "load" in cell, f"unlabelled throughput column {cell!r} in: {header}"
