"""No lost runs: durable atomic writes, non-finite steps, SIGTERM, crashed first checkpoints, clear OSErrors."""

from __future__ import annotations

import os
import stat

import pytest

from polycom.utils import atomic


@pytest.fixture
def fsynced(monkeypatch):
    """The (device, inode) of every file and folder passed to os.fsync."""
    seen: list[tuple[int, int, bool]] = []
    real = os.fsync

    def record(fd):
        st = os.fstat(fd)
        seen.append((st.st_dev, st.st_ino, stat.S_ISDIR(st.st_mode)))
        return real(fd)

    monkeypatch.setattr(os, "fsync", record)
    return seen


def _key(path, is_dir=False):
    st = os.stat(path)
    return (st.st_dev, st.st_ino, is_dir)


def test_atomic_writes_fsync_the_file_and_its_folder(tmp_path, fsynced):
    path = atomic.write_text(tmp_path / "sub" / "report.md", "hello")
    assert _key(path) in fsynced  # os.replace keeps the inode: the synced temp file is the final file
    assert _key(path.parent, True) in fsynced
    fsynced.clear()
    atomic.append_lines(tmp_path / "m.jsonl", ['{"a": 1}'])
    assert _key(tmp_path / "m.jsonl") in fsynced and _key(tmp_path, True) in fsynced


def test_replace_folder_fsyncs_contents_and_parent(tmp_path, fsynced):
    tmp = atomic.temp_folder_beside(tmp_path / "out")
    (tmp / "a.txt").write_text("a")
    out = atomic.replace_folder(tmp, tmp_path / "out")
    assert _key(out / "a.txt") in fsynced and _key(out, True) in fsynced and _key(tmp_path, True) in fsynced


def test_checkpoint_file_and_checksum_are_durable(tmp_path, fsynced):
    from polycom.train.checkpoint.single_file import checksum_path, write_checkpoint_file

    path = write_checkpoint_file(tmp_path / "ckpt" / "step_00000001.pt", 1, {"x": 1})
    assert _key(path) in fsynced and _key(checksum_path(path)) in fsynced
    assert _key(path.parent, True) in fsynced
