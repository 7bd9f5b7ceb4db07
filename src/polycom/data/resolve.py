"""Where the prepared tokens of a run or comparison come from: a prepared folder, or a source prepared once.

    shards = resolve_prepared_data(PrepareConfig(source="embedded"))                    # cached preparation
    shards = resolve_prepared_data(PrepareConfig(source="my_texts/"), folder=out / "data")  # a chosen folder
    shards = open_prepared_folder("data/mine", option="data.path")                       # must be prepared

A source that is itself a prepared folder (it holds meta.json) is used as is. Otherwise the source is
prepared into `folder`, by default ``<cache>/<source>-<tokenizer>-val<fraction>`` where cache is
`cache_dir`, else $POLYCOM_DATA_CACHE, else ~/.cache/polycom/data. A folder that already holds a finished
preparation (meta.json, written last) is reused; a half-prepared one (an interrupted run) is replaced.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from polycom.data.prepare import PrepareConfig, prepare_data
from polycom.data.shards import TokenShards
from polycom.errors import UserError


def resolve_prepared_data(
    prepare: PrepareConfig, *, folder: str | Path | None = None, cache_dir: str = "", show_progress: bool = True
) -> TokenShards:
    """The prepared shards of `prepare.source` (see the module docstring); prepares them when needed."""
    target = prepared_folder(prepare, folder=folder, cache_dir=cache_dir)
    if (target / "meta.json").is_file():
        return TokenShards(target)
    if target.exists():
        shutil.rmtree(target)  # a half-prepared folder from an interrupted preparation
    return prepare_data(prepare, target, show_progress=show_progress)


def prepared_folder(prepare: PrepareConfig, *, folder: str | Path | None = None, cache_dir: str = "") -> Path:
    """The folder `resolve_prepared_data` reads: the source itself when prepared, else `folder` or the cache's."""
    source = Path(prepare.source).expanduser()
    if (source / "meta.json").is_file():
        return source
    if folder is not None:
        return Path(folder)
    cache = Path(cache_dir or os.environ.get("POLYCOM_DATA_CACHE") or Path.home() / ".cache" / "polycom" / "data")
    tag = prepare.tokenizer if prepare.tokenizer != "bpe" else f"bpe{prepare.bpe_vocab_size}"
    if prepare.text_errors != "strict":  # replaced bytes are other data: never reused for a strict run
        tag += f"-{prepare.text_errors}"
    return cache / f"{_slug(prepare.source)}-{_slug(tag)}-val{prepare.val_fraction:g}"


def open_prepared_folder(path: str | Path, *, option: str = "data.path") -> TokenShards:
    """A folder that must already be prepared; UserError naming `option` when it is missing or not prepared."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"{option} {path} not found")
    if not (path / "meta.json").is_file():
        raise UserError(
            f"{option} {path} is not a prepared data folder (no meta.json); prepare it with "
            f"`polycom data prepare --source {path} --out DIR`, or pass it as data.source"
        )
    return TokenShards(path)


def _slug(text: str) -> str:
    path = Path(text).expanduser()
    if path.exists():  # local source: name + hash of absolute path, size and mtime, so edits re-prepare
        st = path.stat()
        h = hashlib.sha1(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:10]
        return f"{path.name}-{h}"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:80]
