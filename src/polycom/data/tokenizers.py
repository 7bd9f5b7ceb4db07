"""Tokenizers: byte-level, a BPE trained on the corpus, or any local Hugging Face tokenizer.

Every tokenizer has ``encode(text) -> list[int]``, ``encode_batch(texts)``, ``decode(ids) -> str``,
``vocab_size``, ``eos_id`` (``None`` when it has none), ``name`` and ``save(folder)``. A saved folder
holds ``polycom_tokenizer.json`` (``{"kind": ...}``) next to the tokenizer's own files, so
``load_tokenizer(folder)`` restores exactly what was saved; a folder without it is read as a Hugging Face
tokenizer folder (``tokenizer.json`` through `tokenizers`, otherwise `transformers.AutoTokenizer`, offline).

decode(encode(text)) == text holds for the byte tokenizer and the byte-level BPE for any text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from polycom.errors import UserError
from polycom.utils.atomic import write_json
from polycom.utils.hf_folders import hf_load_kwargs, refusing_unsafe_content

META_FILE = "polycom_tokenizer.json"
EOS_TOKEN = "<|endoftext|>"


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocab 256, no training, no special tokens (eos_id None)."""

    name = "byte"
    vocab_size = 256
    eos_id = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_array(self, text: str) -> np.ndarray:
        """Fast path for shard preparation: (n,) uint8 token array."""
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        # errors="replace": a sampled byte sequence need not be valid UTF-8.
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / META_FILE, {"kind": "byte", "vocab_size": 256})


class HFTokenizer:
    """A `tokenizers.Tokenizer` (tokenizer.json): the BPE trained by `train_bpe` or a local HF tokenizer."""

    def __init__(self, tokenizer, name: str = "hf") -> None:
        self._tok = tokenizer
        self.name = name
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        eos = None
        for candidate in (EOS_TOKEN, "</s>", "<eos>", "<|im_end|>"):
            eos = tokenizer.token_to_id(candidate)
            if eos is not None:
                break
        self.eos_id = eos

    @classmethod
    def from_file(cls, path: str | Path, name: str = "hf") -> HFTokenizer:
        from tokenizers import Tokenizer

        try:
            return cls(Tokenizer.from_file(str(path)), name=name)
        except Exception as exc:  # tokenizers raises a bare Exception on malformed files
            raise UserError(f"could not read tokenizer file {path}: {exc}") from None

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(folder / "tokenizer.json"))
        write_json(folder / META_FILE, {"kind": "hf", "name": self.name, "vocab_size": self.vocab_size})


class TransformersTokenizer:
    """A `transformers` tokenizer loaded from a local folder without tokenizer.json (e.g. sentencepiece).

    The folder's own tokenizer code (``auto_map``) runs only with `trust_remote_code`.
    """

    def __init__(self, folder: str | Path, *, trust_remote_code: bool = False) -> None:
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise UserError(f"{folder} needs transformers to load: pip install 'polycom[hf]'") from None
        try:
            with refusing_unsafe_content(folder):
                self._tok = AutoTokenizer.from_pretrained(str(folder), **hf_load_kwargs(trust_remote_code))
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"could not load a tokenizer from {folder}: {exc}") from None
        self.name = f"hf:{Path(folder).name}"
        self.vocab_size = len(self._tok)
        self.eos_id = self._tok.eos_token_id

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids])

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._tok.save_pretrained(str(folder))
        write_json(folder / META_FILE, {"kind": "transformers", "name": self.name, "vocab_size": self.vocab_size})


Tokenizer = ByteTokenizer | HFTokenizer | TransformersTokenizer


def load_tokenizer(path_or_name: str | Path) -> Tokenizer:
    """``"byte"``, a folder saved by `Tokenizer.save`/`polycom data prepare`, or a local HF tokenizer folder."""
    if str(path_or_name) == "byte":
        return ByteTokenizer()
    folder = Path(path_or_name).expanduser()
    if folder.is_file() and folder.suffix == ".json":
        return HFTokenizer.from_file(folder, name=folder.stem)
    if not folder.is_dir():
        raise UserError(
            f"tokenizer {str(path_or_name)!r} not found: use 'byte', 'bpe' (when preparing data) or a local tokenizer folder"
        )
    meta_path = folder / META_FILE
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        kind = meta.get("kind")
        if kind == "byte":
            return ByteTokenizer()
        if kind == "hf":
            return HFTokenizer.from_file(folder / "tokenizer.json", name=meta.get("name", "hf"))
        if kind == "transformers":
            return TransformersTokenizer(folder)
        raise UserError(f"{meta_path}: unknown tokenizer kind {kind!r}")
    if (folder / "tokenizer.json").is_file():
        return HFTokenizer.from_file(folder / "tokenizer.json", name=f"hf:{folder.name}")
    return TransformersTokenizer(folder)


def train_bpe(texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2) -> HFTokenizer:
    """Train a byte-level BPE (GPT-2 style pre-tokenisation, no normaliser) with one `<|endoftext|>` token.

    Byte-level: every string is representable, and decode(encode(text)) == text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 257 + 1:
        raise UserError(f"BPE vocab_size must be at least 258 (256 bytes + eos + merges), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_lines(texts), trainer=trainer)
    return HFTokenizer(tok, name=f"bpe{vocab_size}")


def _lines(texts: Iterable[str], chunk_chars: int = 1 << 16) -> Iterable[str]:
    # The trainer is much faster on many short strings than on one multi-megabyte string.
    for text in texts:
        for start in range(0, len(text), chunk_chars):
            yield text[start : start + chunk_chars]
