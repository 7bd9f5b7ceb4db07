"""`polycom data prepare`: tokenise a source into a prepared-data folder (train/val token files).

Split: the token stream (documents joined by the tokenizer's eos token when it has one) is cut into
blocks of `block` tokens and every k-th block (k = round(1 / val_fraction)) goes to validation, so the
validation set samples the whole corpus rather than its last document. The split is deterministic.
"""

from __future__ import annotations

import itertools
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from polycom.data.shards import TokenShards, write_token_file
from polycom.data.sources import describe_source, iter_documents
from polycom.data.tokenizers import ByteTokenizer, HFTokenizer, load_tokenizer, train_bpe
from polycom.errors import UserError
from polycom.utils.atomic import write_json


@dataclass
class PrepareConfig:
    """What `prepare_data` does.

    source: "embedded", a local .txt/.jsonl/.parquet file or folder, or "hf:NAME[:CONFIG]".
    tokenizer: "byte", "bpe" (trained here on the source, saved beside the shards) or a local tokenizer folder.
    bpe_vocab_size: vocab of the trained BPE (including the eos token).
    val_fraction: share of tokens held out for validation.
    text_field / hf_split: field of .jsonl/.parquet/HF records; split of an HF dataset.
    max_documents: stop after this many documents (0 = all), for quick runs on large sources.
    text_errors: invalid UTF-8 in .txt/.jsonl files: "strict" refuses the file (naming file and line),
        "replace" substitutes U+FFFD (opt-in: ``polycom data prepare --errors replace``).
    """

    source: str = "embedded"
    tokenizer: str = "byte"
    bpe_vocab_size: int = 4096
    val_fraction: float = 0.05
    text_field: str = "text"
    hf_split: str = "train"
    max_documents: int = 0
    text_errors: str = "strict"


def prepare_data(cfg: PrepareConfig, out_dir: str | Path, *, overwrite: bool = False, show_progress: bool = True):
    """Tokenise `cfg.source` into `out_dir` (train.bin, val.bin, meta.json, tokenizer/); returns TokenShards."""
    out_dir = Path(out_dir)
    if not 0.0 < cfg.val_fraction < 0.5:
        raise UserError(f"val_fraction must be in (0, 0.5), got {cfg.val_fraction}")
    if (out_dir / "meta.json").exists() and not overwrite:
        raise UserError(f"{out_dir} already holds prepared data; pass --overwrite to replace it")
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "meta.json").exists():
        raise UserError(f"{out_dir} exists and is not empty; choose a new folder for the prepared data")

    documents = iter_documents(
        cfg.source, text_field=cfg.text_field, hf_split=cfg.hf_split, text_errors=cfg.text_errors
    )
    # The first document opens the source: a missing or unreadable source fails before any bar is drawn.
    first = next(documents, None)
    progress = _progress(show_progress)
    with progress:
        read_task = progress.add_task("reading documents", total=None)
        docs = []
        for doc in itertools.chain([] if first is None else [first], documents):
            docs.append(doc)
            progress.advance(read_task)
            if cfg.max_documents and len(docs) >= cfg.max_documents:
                break
        progress.update(read_task, total=len(docs), completed=len(docs))
        if not docs or not any(d.strip() for d in docs):
            raise UserError(f"data source {cfg.source!r} holds no text")

        if cfg.tokenizer == "bpe":
            train_task = progress.add_task(f"training BPE ({cfg.bpe_vocab_size} tokens)", total=None)
            tok = train_bpe(docs, cfg.bpe_vocab_size)
            progress.update(train_task, total=1, completed=1)
        else:
            tok = load_tokenizer(cfg.tokenizer)

        total_chars = sum(len(d) for d in docs)
        enc_task = progress.add_task("tokenising", total=total_chars)
        pieces = []
        eos = None if tok.eos_id is None else np.array([tok.eos_id], dtype=np.int64)
        for doc in docs:
            pieces.append(_encode_document(tok, doc))
            if eos is not None:
                pieces.append(eos)
            progress.advance(enc_task, len(doc))
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    train_tokens, val_tokens, block = split_train_val(tokens, cfg.val_fraction)

    out_dir.mkdir(parents=True, exist_ok=True)
    tok_dir = out_dir / "tokenizer"
    if tok_dir.exists():
        shutil.rmtree(tok_dir)
    tok.save(tok_dir)
    write_token_file(out_dir / "train.bin", train_tokens, tok.vocab_size)
    write_token_file(out_dir / "val.bin", val_tokens, tok.vocab_size)
    meta = {
        "format": "polycom-token-shards",
        "source": cfg.source,
        "source_description": describe_source(cfg.source),
        "tokenizer": tok.name,
        "vocab_size": tok.vocab_size,
        "eos_id": tok.eos_id,
        "documents": len(docs),
        "characters": total_chars,
        "train_tokens": int(train_tokens.size),
        "val_tokens": int(val_tokens.size),
        "split_block": block,
        "prepare_config": asdict(cfg),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(out_dir / "meta.json", meta)  # written last: its presence marks a complete folder
    return TokenShards(out_dir)


def split_train_val(tokens: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Every k-th block of the stream to validation (k = round(1/val_fraction)); returns (train, val, block)."""
    n = tokens.size
    every = max(2, round(1.0 / val_fraction))
    block = int(min(16384, max(64, n // (4 * every))))
    n_blocks = -(-n // block)
    if n_blocks < 2:
        raise UserError(f"the data is too small to split into train and validation ({n} tokens)")
    is_val = np.zeros(n_blocks, dtype=bool)
    is_val[every - 1 :: every] = True
    if not is_val.any():
        is_val[-1] = True
    block_of_token = np.arange(n) // block
    mask = is_val[block_of_token]
    return tokens[~mask], tokens[mask], block


def _encode_document(tok, doc: str) -> np.ndarray:
    if isinstance(tok, ByteTokenizer):
        return tok.encode_array(doc).astype(np.int64)
    if isinstance(tok, HFTokenizer):
        # Batches of lines (keeping their newlines) encode far faster than one huge string.
        lines = doc.splitlines(keepends=True)
        ids: list[int] = []
        for start in range(0, len(lines), 4096):
            for piece in tok.encode_batch(lines[start : start + 4096]):
                ids.extend(piece)
        return np.asarray(ids, dtype=np.int64)
    return np.asarray(tok.encode(doc), dtype=np.int64)


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not enabled,
        transient=True,
    )
