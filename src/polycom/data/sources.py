"""Text sources: where the documents that become token shards come from.

A source spec is a string:

- ``"embedded"`` (alias ``"shakespeare"``): the public-domain Shakespeare corpus shipped inside the package
  (``polycom/data/corpus/shakespeare.txt.xz``, see its NOTICE.md). Nothing is downloaded.
- a local path: a ``.txt`` file (one document), a ``.jsonl`` file (one document per line, field ``text``),
  a ``.parquet`` file (column ``text``), or a folder holding any of these (searched recursively, sorted).
  Text files must be UTF-8: invalid bytes are an error naming the file and line, unless
  ``text_errors="replace"`` (``polycom data prepare --errors replace``) asks for U+FFFD instead.
- ``"hf:NAME"`` or ``"hf:NAME:CONFIG"``: a Hugging Face dataset streamed with ``datasets``
  (``NAME`` may also be a local dataset folder, which is how the offline test exercises this path).

`iter_documents(spec)` yields the documents as strings, in a deterministic order.
"""

from __future__ import annotations

import json
import lzma
from collections.abc import Iterator
from pathlib import Path

from polycom.errors import UserError

EMBEDDED_NAMES = ("embedded", "shakespeare")
TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")
TEXT_ERRORS = ("strict", "replace")
CORPUS_FILE = Path(__file__).parent / "corpus" / "shakespeare.txt.xz"


def embedded_corpus_text() -> str:
    """The embedded Shakespeare corpus as one string (~5.1 MB, ASCII)."""
    if not CORPUS_FILE.is_file():
        raise UserError(f"the embedded corpus {CORPUS_FILE} is missing from this installation of polycom")
    return lzma.decompress(CORPUS_FILE.read_bytes()).decode("utf-8")


def describe_source(spec: str) -> str:
    """A short human-readable name of a source spec, for headers and reports."""
    if spec in EMBEDDED_NAMES:
        return "embedded Shakespeare corpus (Project Gutenberg, public domain)"
    return spec


def iter_documents(
    spec: str, *, text_field: str = "text", hf_split: str = "train", text_errors: str = "strict"
) -> Iterator[str]:
    """Yield the documents of `spec` (see the module docstring). Empty documents are skipped.

    text_errors: bytes of a .txt/.jsonl file that are not valid UTF-8: "strict" (default) refuses the file
    naming the file and line; "replace" substitutes U+FFFD.
    """
    if text_errors not in TEXT_ERRORS:
        raise UserError(f"text errors must be one of {', '.join(TEXT_ERRORS)}, got {text_errors!r}")
    if spec in EMBEDDED_NAMES:
        yield embedded_corpus_text()
        return
    if spec.startswith("hf:"):
        yield from _iter_hf(spec[3:], text_field=text_field, split=hf_split)
        return
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(
            f"data source {spec!r} not found: give 'embedded', a .txt/.jsonl/.parquet file or folder, or hf:NAME"
        )
    files = _data_files(path)
    for file in files:
        yield from _iter_file(file, text_field=text_field, text_errors=text_errors)


def _data_files(path: Path) -> list[Path]:
    if path.is_file():
        if path.suffix not in TEXT_SUFFIXES:
            raise UserError(f"data file {path} has an unsupported type; use one of {', '.join(TEXT_SUFFIXES)}")
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
    if not files:
        raise UserError(f"data folder {path} holds no {'/'.join(TEXT_SUFFIXES)} files")
    return files


def _iter_file(file: Path, *, text_field: str, text_errors: str = "strict") -> Iterator[str]:
    if file.suffix == ".txt":
        # Universal newlines as in text mode (\r\n and \r -> \n), as read_text did before.
        text = _decode(file.read_bytes(), file, text_errors).replace("\r\n", "\n").replace("\r", "\n")
        if text:
            yield text
    elif file.suffix == ".jsonl":
        yield from _iter_jsonl(file, text_field=text_field, text_errors=text_errors)
    else:  # .parquet
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError("reading .parquet needs pyarrow: pip install 'polycom[data]'") from None
        table = pq.read_table(file)
        if text_field not in table.column_names:
            raise UserError(f"{file}: no column {text_field!r} (columns: {', '.join(table.column_names)})")
        for text in table.column(text_field).to_pylist():
            if text:
                yield text


def _iter_jsonl(file: Path, *, text_field: str, text_errors: str) -> Iterator[str]:
    with file.open("rb") as fh:  # bytes: a decoding error is reported with its line number
        for lineno, raw in enumerate(fh, 1):
            line = _decode(raw, file, text_errors, lineno=lineno)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{file}:{lineno}: not valid JSON ({exc.msg})") from None
            text = record.get(text_field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise UserError(f"{file}:{lineno}: record has no string field {text_field!r}")
            if text:
                yield text


def _decode(raw: bytes, file: Path, text_errors: str, *, lineno: int = 0) -> str:
    """UTF-8 text of `raw` (bytes of `file`, or of its line `lineno`); UserError naming file and line if invalid.

    text_errors="replace" turns invalid bytes into U+FFFD instead (opt-in: silent replacement changes the data).
    """
    try:
        return raw.decode("utf-8", errors=text_errors)
    except UnicodeDecodeError as exc:
        line = lineno or raw.count(b"\n", 0, exc.start) + 1
        raise UserError(
            f"{file}:{line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte offset {exc.start}"
            f"{' of the line' if lineno else ''}); convert the file to UTF-8, or pass --errors replace to "
            '`polycom data prepare` (data.text_errors = "replace" in a run config) to replace invalid bytes '
            "by U+FFFD"
        ) from None


def _iter_hf(name: str, *, text_field: str, split: str) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise UserError("hf: sources need the datasets package: pip install 'polycom[data]'") from None
    config = None
    # "hf:NAME:CONFIG" -- but a local path (which may contain ':' only on Windows drives) is taken whole.
    if ":" in name and not Path(name).exists():
        name, config = name.split(":", 1)
    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as exc:  # datasets raises many types (network, missing config, ...)
        raise UserError(f"could not open Hugging Face dataset {name!r}: {exc}") from None
    for record in ds:
        text = record.get(text_field)
        if not isinstance(text, str):
            raise UserError(f"dataset {name!r} has no string field {text_field!r} (fields: {', '.join(record)})")
        if text:
            yield text
