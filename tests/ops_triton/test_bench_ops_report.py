"""`polycom bench ops` console table: the full table on a wide terminal, a compact one (at most 80 columns,
nothing cut short) on a narrow terminal or in a pipe; every field stays in the rows written to ops.jsonl."""

from __future__ import annotations

import sys

from polycom.bench.ops_report import print_table, table_lines


def _row(op: str, provider: str, mode: str, check: str = "ok") -> dict:
    """A row as `polycom.bench.ops` records it, with the widest realistic values."""
    return dict(
        tokens=8192, hidden=8192, dtype="bf16", op=op, provider=provider, mode=mode, check=check,
        median_ms=1234.567, p20_ms=1201.25, p80_ms=1299.5, GBps=3350.2, frac_copy=0.9912, peak_MiB=12345.4,
    )  # fmt: skip


ROWS = [
    *(
        _row(op, p, m)
        for op in ("polynorm_gated", "polyrelu_gated")
        for p in ("polycom", "compile")
        for m in ("fwd", "fwdbwd")
    ),
    _row("polynorm", "liger", "fwd", check="FAILED"),
    _row("relu2", "eager", "bwd", check="ERROR"),
]


def _terminal(monkeypatch, columns: int) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    monkeypatch.setenv("COLUMNS", str(columns))


def _columns(line: str) -> list[str]:
    return line.split()


def test_pipe_gets_the_compact_table_within_80_columns(capsys):
    print_table(ROWS)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in out
    assert _columns(lines[0]) == ["shape", "dtype", "op", "provider", "mode", "ms", "GB/s", "%copy", "MiB"]
    assert _columns(lines[1]) == [
        "8192x8192",
        "bf16",
        "polynorm_gated",
        "polycom",
        "fwd",
        "1234.567",
        "3350",
        "99.1",
        "12345",
    ]
    assert _columns(lines[-3]) == ["8192x8192", "bf16", "polynorm", "liger", "fwd", "check", "FAILED"]
    assert _columns(lines[-2]) == ["8192x8192", "bf16", "relu2", "eager", "bwd", "check", "ERROR"]
    assert "p20 / p80 are in ops.jsonl / ops.csv" in lines[-1]
    # the compact columns line up: every measured value ends where its header does
    assert lines[1].index("1234.567") + len("1234.567") == lines[0].index("ms") + len("ms")


def test_narrow_terminal_gets_the_compact_table_and_a_wide_one_the_full(capsys, monkeypatch):
    _terminal(monkeypatch, 80)
    print_table(ROWS)
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80 and "p20" not in out.splitlines()[0]

    full = table_lines(ROWS)
    needed = max(len(line) for line in full)
    assert 80 < needed <= 110
    _terminal(monkeypatch, needed - 1)  # one column short of the full table: compact
    print_table(ROWS)
    assert "p20" not in capsys.readouterr().out.splitlines()[0]
    _terminal(monkeypatch, needed)
    print_table(ROWS)
    lines = capsys.readouterr().out.splitlines()
    assert lines == full  # all of it, no compact note
    assert _columns(lines[0]) == [
        "shape",
        "dtype",
        "op",
        "provider",
        "mode",
        "median",
        "ms",
        "p20",
        "p80",
        "GB/s",
        "%",
        "copy",
        "peak",
        "MiB",
    ]
    assert _columns(lines[1])[5:] == ["1234.567", "1201.250", "1299.500", "3350", "99.1", "12345"]
