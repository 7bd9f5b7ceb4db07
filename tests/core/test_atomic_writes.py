"""Atomic writes: a write that fails part-way leaves the old file as it was and no temp file beside it."""

from __future__ import annotations

import os

import pytest

from polycom.utils import atomic


def test_failed_write_text_keeps_old_content_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "report.md"
    atomic.write_text(path, "old")

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        atomic.write_text(path, "new")
    assert path.read_text(encoding="utf-8") == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def test_written_text_replaces_the_old_content(tmp_path):
    path = tmp_path / "sub" / "report.md"
    atomic.write_text(path, "old")
    atomic.write_text(path, "new é")
    assert path.read_text(encoding="utf-8") == "new é"
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.md"]


class _Figure:
    """Stands in for a matplotlib figure: savefig writes some bytes, then fails when asked to."""

    def __init__(self, fail: bool) -> None:
        self.fail = fail

    def savefig(self, fname, **kwargs):
        with open(fname, "wb") as fh:
            fh.write(b"half a png")
        if self.fail:
            raise RuntimeError("renderer crashed")


def test_failed_save_figure_keeps_old_file_and_closes_the_figure(tmp_path, monkeypatch):
    plt = pytest.importorskip("matplotlib.pyplot")
    closed = []
    monkeypatch.setattr(plt, "close", closed.append)
    path = tmp_path / "loss.png"
    path.write_bytes(b"old png")
    fig = _Figure(fail=True)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        atomic.save_figure(fig, path)
    assert path.read_bytes() == b"old png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss.png"]
    assert closed == [fig]

    ok = _Figure(fail=False)
    atomic.save_figure(ok, path)
    assert path.read_bytes() == b"half a png"
    assert closed == [fig, ok]
