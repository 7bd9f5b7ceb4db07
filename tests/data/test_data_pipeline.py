"""Data pipeline: tokenizer round trips, sources, token-file headers, train/val split, batch order."""

import json
import struct

import numpy as np
import pytest

from polycom.data import (
    ByteTokenizer,
    HFTokenizer,
    PrepareConfig,
    TokenFile,
    TokenShards,
    WindowSampler,
    embedded_corpus_text,
    iter_documents,
    load_tokenizer,
    prepare_data,
    split_train_val,
    train_bpe,
    write_token_file,
)
from polycom.errors import UserError

TRICKY = "To be, or not to be:\n\tthat is  the question.\r\n  Ünïcödé — 日本語 🙂 <|endoftext|> \x00 end "


@pytest.fixture(scope="module")
def corpus_slice():
    return embedded_corpus_text()[:60_000]


def test_embedded_corpus_is_the_shakespeare_plays():
    text = embedded_corpus_text()
    assert 4_500_000 < len(text) < 6_000_000
    for marker in ("HAMLET, PRINCE OF DENMARK", "THE TEMPEST", "To be, or not to be"):
        assert marker in text


def test_byte_tokenizer_round_trip_and_ids():
    tok = ByteTokenizer()
    ids = tok.encode(TRICKY)
    assert ids == list(TRICKY.encode("utf-8"))
    assert tok.decode(ids) == TRICKY
    assert tok.vocab_size == 256 and max(ids) < 256


def test_bpe_round_trip_and_save_load(tmp_path, corpus_slice):
    tok = train_bpe([corpus_slice], vocab_size=400)
    assert tok.vocab_size == 400
    for text in (TRICKY, corpus_slice[:3000]):
        assert tok.decode(tok.encode(text)) == text
    # BPE actually merges: fewer tokens than bytes on English text.
    assert len(tok.encode(corpus_slice[:3000])) < 0.8 * len(corpus_slice[:3000].encode())
    tok.save(tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    assert again.encode(TRICKY) == tok.encode(TRICKY)
    assert again.eos_id == tok.eos_id is not None


def test_local_hf_tokenizer_folder(tmp_path, corpus_slice):
    # A plain HF tokenizer folder (tokenizer.json, no polycom metadata), as saved by other tools.
    bpe = train_bpe([corpus_slice], vocab_size=300)
    folder = tmp_path / "hf_tok"
    folder.mkdir()
    bpe._tok.save(str(folder / "tokenizer.json"))
    tok = load_tokenizer(folder)
    assert isinstance(tok, HFTokenizer)
    assert tok.decode(tok.encode(TRICKY)) == TRICKY


def test_unknown_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="tokenizer"):
        load_tokenizer(tmp_path / "nope")


@pytest.mark.parametrize("tokenizer", ["byte", "bpe"])
def test_prepare_round_trip(tmp_path, corpus_slice, tokenizer):
    src = tmp_path / "text.txt"
    src.write_text(corpus_slice)
    cfg = PrepareConfig(source=str(src), tokenizer=tokenizer, bpe_vocab_size=320, val_fraction=0.1)
    shards = prepare_data(cfg, tmp_path / "out", show_progress=False)
    tok = shards.tokenizer()
    train, val = np.asarray(shards.train.tokens), np.asarray(shards.val.tokens)
    assert train.size > 0 and val.size > 0
    assert 0.05 < val.size / (train.size + val.size) < 0.2
    # Re-joining the blocks in stream order gives back the tokenisation of the whole text.
    block = shards.meta["split_block"]
    every = round(1 / 0.1)
    stream, ti, vi = [], 0, 0
    for b in range(-(-(train.size + val.size) // block)):
        src_arr, idx = (val, vi) if b % every == every - 1 else (train, ti)
        piece = src_arr[idx : idx + block]
        stream.append(piece)
        if b % every == every - 1:
            vi += piece.size
        else:
            ti += piece.size
    ids = np.concatenate(stream).tolist()
    if tok.eos_id is not None:
        assert ids[-1] == tok.eos_id
        ids = ids[:-1]
    assert tok.decode(ids) == corpus_slice


def test_sources_jsonl_parquet_folder(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("alpha text")
    (folder / "b.jsonl").write_text(json.dumps({"text": "beta"}) + "\n\n" + json.dumps({"text": "gamma"}) + "\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["delta", "epsilon"]}), folder / "c.parquet")
    (folder / "ignored.md").write_text("not data")
    assert list(iter_documents(str(folder))) == ["alpha text", "beta", "gamma", "delta", "epsilon"]


def test_hf_dataset_source_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    ds_dir = tmp_path / "local_ds"
    ds_dir.mkdir()
    rows = [{"text": f"document number {i}"} for i in range(5)]
    (ds_dir / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert list(iter_documents(f"hf:{ds_dir}")) == [r["text"] for r in rows]


def test_bad_sources(tmp_path):
    with pytest.raises(UserError, match="not found"):
        list(iter_documents(str(tmp_path / "missing.txt")))
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(UserError, match="unsupported"):
        list(iter_documents(str(tmp_path / "x.csv")))
    (tmp_path / "bad.jsonl").write_text('{"body": "no text field"}\n')
    with pytest.raises(UserError, match="text"):
        list(iter_documents(str(tmp_path / "bad.jsonl")))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserError, match="no text"):
        prepare_data(PrepareConfig(source=str(tmp_path / "empty.txt")), tmp_path / "o", show_progress=False)


def test_token_file_header_checks(tmp_path):
    tokens = np.arange(1000) % 300
    path = tmp_path / "t.bin"
    write_token_file(path, tokens, vocab_size=300)
    f = TokenFile(path)
    assert f.vocab_size == 300 and f.tokens.dtype == np.uint16
    np.testing.assert_array_equal(np.asarray(f.tokens), tokens)

    raw = bytearray(path.read_bytes())
    bad = tmp_path / "bad_magic.bin"
    bad.write_bytes(b"NOTMAGIC" + raw[8:])
    with pytest.raises(UserError, match="magic"):
        TokenFile(bad)
    vers = tmp_path / "bad_version.bin"
    vers.write_bytes(raw[:8] + struct.pack("<I", 99) + raw[12:])
    with pytest.raises(UserError, match="version 99"):
        TokenFile(vers)
    trunc = tmp_path / "trunc.bin"
    trunc.write_bytes(raw[:-10])
    with pytest.raises(UserError, match="truncated"):
        TokenFile(trunc)
    with pytest.raises(ValueError, match="vocab_size"):
        write_token_file(tmp_path / "x.bin", np.array([5, 300]), vocab_size=300)


def test_shards_vocab_check(tmp_path, corpus_slice):
    src = tmp_path / "t.txt"
    src.write_text(corpus_slice[:5000])
    shards = prepare_data(PrepareConfig(source=str(src)), tmp_path / "d", show_progress=False)
    shards.check_vocab(256)
    with pytest.raises(UserError, match="vocab_size=256"):
        shards.check_vocab(128)
    with pytest.raises(UserError, match="meta.json"):
        TokenShards(tmp_path)


def test_split_is_a_partition():
    tokens = np.arange(10_000)
    train, val, block = split_train_val(tokens, 0.1)
    assert sorted(np.concatenate([train, val]).tolist()) == tokens.tolist()
    assert 0.05 < val.size / tokens.size < 0.15
    # validation blocks come from all over the stream, not only its end
    assert val.min() < tokens.size // 2 < val.max()


def test_window_sampler_deterministic_and_dp_disjoint(tmp_path):
    path = tmp_path / "t.bin"
    write_token_file(path, np.arange(5000) % 251, vocab_size=256)
    f = TokenFile(path)
    a = WindowSampler(f, seq_len=16, batch_size=8, seed=3)
    b = WindowSampler(f, seq_len=16, batch_size=8, seed=3)
    x1, y1 = a.batch(7, 1)
    x2, _ = b.batch(7, 1)
    assert x1.equal(x2)
    assert not x1.equal(a.batch(8, 1)[0])
    # targets are inputs shifted by one token
    assert y1[:, :-1].equal(x1[:, 1:])
    # two data-parallel ranks take disjoint halves of the same global batch
    whole = WindowSampler(f, 16, 8, seed=3, dp_size=1).starts(5)
    r0 = WindowSampler(f, 16, 4, seed=3, dp_rank=0, dp_size=2).starts(5)
    r1 = WindowSampler(f, 16, 4, seed=3, dp_rank=1, dp_size=2).starts(5)
    assert np.concatenate([r0, r1]).tolist() == whole.tolist()
    with pytest.raises(UserError, match="too few"):
        WindowSampler(f, seq_len=10_000, batch_size=1, seed=0)


def _write_old_format(path, tokens, vocab_size):
    """A token file as written before the header stored the largest id (reserved bytes all zero)."""
    header = struct.pack("<8sIIQQ32x", b"PCTOKENS", 1, 2, len(tokens), vocab_size)
    path.write_bytes(header + np.asarray(tokens, dtype=np.uint16).tobytes())


def test_token_file_header_stores_the_largest_id(tmp_path):
    tokens = np.array([3, 17, 250, 4])
    write_token_file(tmp_path / "t.bin", tokens, vocab_size=300)
    raw = (tmp_path / "t.bin").read_bytes()
    assert struct.unpack_from("<Q", raw, 32)[0] == 250 + 1  # largest id + 1 at offset 32
    assert TokenFile(tmp_path / "t.bin").max_id == 250
    _write_old_format(tmp_path / "old.bin", tokens, vocab_size=300)
    assert TokenFile(tmp_path / "old.bin").max_id == 250  # computed once for files without the field


def test_token_ids_beyond_the_vocab_are_refused_naming_the_file(tmp_path):
    # header stores the largest id: a file whose ids exceed its vocab is refused on open
    path = tmp_path / "train.bin"
    write_token_file(path, np.arange(100) % 50, vocab_size=64)
    raw = bytearray(path.read_bytes())
    struct.pack_into("<Q", raw, 32, 64 + 1)  # stored largest id 64 >= vocab 64
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"train\.bin holds token id 64, but its vocab size is 64"):
        TokenFile(path)
    # a file written before the field: the largest id is computed on open
    _write_old_format(tmp_path / "old.bin", [1, 2, 900, 3], vocab_size=256)
    with pytest.raises(UserError, match=r"old\.bin holds token id 900"):
        TokenFile(tmp_path / "old.bin")
    # bytes edited after writing (stale header): the batch that reads them is refused, not an IndexError
    edited = tmp_path / "edited.bin"
    write_token_file(edited, np.zeros(64, dtype=np.int64), vocab_size=300)  # uint16 ids, vocab 300
    f = TokenFile(edited)
    raw = bytearray(edited.read_bytes())
    raw[64:] = struct.pack("<64H", *([1000] * 64))
    edited.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"edited\.bin holds token id 1000"):
        WindowSampler(f, seq_len=8, batch_size=2, seed=0).batch(0)


def test_meta_json_errors_name_the_file_and_line(tmp_path, corpus_slice):
    src = tmp_path / "t.txt"
    src.write_text(corpus_slice[:3000])
    prepare_data(PrepareConfig(source=str(src)), tmp_path / "d", show_progress=False)
    meta = tmp_path / "d" / "meta.json"
    meta.write_text('{\n  "format": "polycom-token-shards",\n  "vocab_size": 256,,\n}\n')
    with pytest.raises(UserError, match=r"meta\.json:3:\d+: not valid JSON"):
        TokenShards(tmp_path / "d")
    meta.write_bytes(b'{"a": "\xff\xfe"}')
    with pytest.raises(UserError, match=r"meta\.json is not valid UTF-8"):
        TokenShards(tmp_path / "d")
    meta.write_text("[1, 2]")
    with pytest.raises(UserError, match="JSON object"):
        TokenShards(tmp_path / "d")


def test_non_utf8_text_is_refused_unless_replace_is_asked(tmp_path):
    txt = tmp_path / "latin1.txt"
    txt.write_bytes("line one\nline two caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1\.txt:2: not valid UTF-8 \(byte 0xe9"):
        list(iter_documents(str(txt)))
    assert list(iter_documents(str(txt), text_errors="replace")) == ["line one\nline two caf\ufffd\n"]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(UserError, match=r"docs\.jsonl:2: not valid UTF-8"):
        list(iter_documents(str(jsonl)))
    assert list(iter_documents(str(jsonl), text_errors="replace")) == ["ok", "caf\ufffd"]
    with pytest.raises(UserError, match="text errors"):
        list(iter_documents(str(txt), text_errors="ignore"))
    # the opt-in goes through prepare (and its CLI flag --errors replace)
    with pytest.raises(UserError, match="--errors replace"):
        prepare_data(PrepareConfig(source=str(txt)), tmp_path / "strict", show_progress=False)
    txt.write_bytes(("x" * 200 + "caf\xe9\n").encode("latin-1"))
    shards = prepare_data(PrepareConfig(source=str(txt), text_errors="replace"), tmp_path / "rep", show_progress=False)
    assert shards.meta["prepare_config"]["text_errors"] == "replace"


def test_txt_newlines_are_universal_as_before(tmp_path):
    (tmp_path / "crlf.txt").write_bytes(b"a\r\nb\rc\n")
    assert list(iter_documents(str(tmp_path / "crlf.txt"))) == ["a\nb\nc\n"]
