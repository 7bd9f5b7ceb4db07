"""Memory-mapped token files and the prepared-data folder that holds them.

Token file layout (little endian), written by `write_token_file`:

    offset  size  field
    0       8     magic  b"PCTOKENS"
    8       4     format version (uint32) = 1
    12      4     dtype code (uint32): 1 = uint8, 2 = uint16, 4 = uint32 (the item size in bytes)
    16      8     token count (uint64)
    24      8     vocab size (uint64): every token id is < vocab size
    32      8     largest token id + 1 (uint64); 0 = not recorded (files written before this field)
    40      24    reserved (zeros)
    64      ...   count tokens of the given dtype

A prepared-data folder (`polycom data prepare`) holds ``train.bin``, ``val.bin``, ``meta.json`` and the
tokenizer in ``tokenizer/``. `TokenShards(folder)` opens it; `TokenFile(path)` opens one file and checks
its header, so a file of another format, another version or a truncated file fails with a clear error.
Token ids are range-checked on open (the stored largest id, or for older files without it the largest id
computed once), and every batch a `WindowSampler` reads is checked again (a file edited after it was
written): an id >= the vocab size is a UserError naming the file, never an IndexError in the embedding.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from polycom.errors import UserError

MAGIC = b"PCTOKENS"
VERSION = 1
HEADER_SIZE = 64
_HEADER = struct.Struct("<8sIIQQQ24x")
_DTYPES = {1: np.uint8, 2: np.uint16, 4: np.uint32}
SPLITS = ("train", "val")


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype that holds every id < vocab_size."""
    if vocab_size <= 1 << 8:
        return np.dtype(np.uint8)
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


def write_token_file(path: str | Path, tokens: np.ndarray, vocab_size: int) -> None:
    """Write `tokens` (1-D ints, all < vocab_size) with the versioned header, atomically."""
    path = Path(path)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tokens.shape}")
    if tokens.size and int(tokens.max()) >= vocab_size:
        raise ValueError(f"token id {int(tokens.max())} is >= vocab_size {vocab_size}")
    if tokens.size and int(tokens.min()) < 0:
        raise ValueError(f"token id {int(tokens.min())} is negative")
    dtype = dtype_for_vocab(vocab_size)
    max_id_plus_one = int(tokens.max()) + 1 if tokens.size else 0
    header = _HEADER.pack(MAGIC, VERSION, dtype.itemsize, tokens.size, vocab_size, max_id_plus_one)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.write(header)
        fh.write(tokens.astype(dtype, copy=False).tobytes())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True)
class TokenFileHeader:
    version: int
    dtype: np.dtype
    count: int
    vocab_size: int
    max_id: int | None  # largest token id as stored when written; None in files written before the field


def read_header(path: str | Path) -> TokenFileHeader:
    """Read and validate the header of a token file (UserError naming the problem otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"token file {path} not found")
    with path.open("rb") as fh:
        raw = fh.read(HEADER_SIZE)
    if len(raw) < HEADER_SIZE:
        raise UserError(f"token file {path} is too short to hold a header ({len(raw)} bytes)")
    magic, version, code, count, vocab, max_id_plus_one = _HEADER.unpack(raw)
    if magic != MAGIC:
        raise UserError(f"{path} is not a polycom token file (wrong header magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise UserError(f"token file {path} has format version {version}; this polycom reads version {VERSION}")
    if code not in _DTYPES:
        raise UserError(f"token file {path} has an unknown dtype code {code}")
    dtype = np.dtype(_DTYPES[code])
    expected = HEADER_SIZE + count * dtype.itemsize
    actual = path.stat().st_size
    if actual != expected:
        raise UserError(
            f"token file {path} is truncated or corrupt: header says {count} tokens ({expected} bytes), file has {actual} bytes"
        )
    max_id = max_id_plus_one - 1 if max_id_plus_one else None
    return TokenFileHeader(version=version, dtype=dtype, count=count, vocab_size=vocab, max_id=max_id)


class TokenFile:
    """One memory-mapped token file: ``tokens`` is a read-only (count,) numpy array."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.header = read_header(self.path)
        if self.header.count == 0:
            raise UserError(f"token file {self.path} holds no tokens")
        self.tokens = np.memmap(self.path, dtype=self.header.dtype, mode="r", offset=HEADER_SIZE)
        # Older files do not store their largest id: one pass over the file, once per open.
        self.max_id = self.header.max_id if self.header.max_id is not None else int(self.tokens.max())
        if self.max_id >= self.vocab_size:
            raise UserError(self.out_of_range_message(self.max_id))

    def out_of_range_message(self, token_id: int) -> str:
        return (
            f"token file {self.path} holds token id {token_id}, but its vocab size is {self.vocab_size} "
            "(ids must be < vocab size): the file is corrupt or was not written by `polycom data prepare`; "
            "prepare the data again"
        )

    @property
    def vocab_size(self) -> int:
        return self.header.vocab_size

    def __len__(self) -> int:
        return self.header.count


def read_meta(path: Path) -> dict:
    """The prepared folder's meta.json as a dict; UserError naming the file (and line) when unreadable."""
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not valid UTF-8 (byte offset {exc.start}); prepare the data again") from None
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg}); prepare the data again"
        ) from None
    if not isinstance(meta, dict):
        raise UserError(f"{path} does not hold a JSON object; prepare the data again")
    return meta


class TokenShards:
    """A prepared-data folder: ``train`` and ``val`` token files, ``meta`` dict, and its tokenizer."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        if not meta_path.is_file():
            raise UserError(
                f"{self.folder} is not a prepared data folder (no meta.json); create one with `polycom data prepare`"
            )
        self.meta = read_meta(meta_path)
        self.train = TokenFile(self.folder / "train.bin")
        self.val = TokenFile(self.folder / "val.bin")
        if self.train.vocab_size != self.val.vocab_size:
            raise UserError(f"{self.folder}: train and val token files disagree on the vocab size")

    @property
    def vocab_size(self) -> int:
        return self.train.vocab_size

    def tokenizer(self):
        from polycom.data.tokenizers import load_tokenizer

        return load_tokenizer(self.folder / "tokenizer")

    def check_vocab(self, model_vocab_size: int) -> None:
        """Refuse data whose ids the model cannot embed."""
        if self.vocab_size > model_vocab_size:
            raise UserError(
                f"the token files in {self.folder} use a vocab of {self.vocab_size}, larger than the model's "
                f"vocab_size {model_vocab_size}; set --model.vocab_size={self.vocab_size} (or larger)"
            )

    def split(self, name: str) -> TokenFile:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; use one of {SPLITS}")
        return getattr(self, name)
