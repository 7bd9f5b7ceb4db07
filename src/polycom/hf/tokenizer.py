"""Harness tokenizers -> transformers tokenizers that ``AutoTokenizer.from_pretrained`` loads offline.

* ``ByteTokenizer`` (token id = UTF-8 byte value, 256 ids, no special tokens) becomes a `tokenizers`
  byte-level BPE with the 256 single-byte symbols as its vocabulary (id b for byte b) and no merges:
  the ``ByteLevel`` pre-tokenizer maps each byte to one printable symbol, so encoding gives exactly
  the UTF-8 bytes. No special token is added (it would make the vocabulary 257 > the model's 256).
* ``HFTokenizer`` (a `tokenizers.Tokenizer`, e.g. the BPE trained by ``polycom data prepare``) is
  wrapped as a ``PreTrainedTokenizerFast`` around the same tokenizer.json, eos = its eos token.
* ``TransformersTokenizer`` is already a transformers tokenizer and is saved as is.

`to_hf_tokenizer` checks on a probe text that the result encodes exactly like the harness tokenizer.
"""

from __future__ import annotations

from polycom.errors import UserError

PROBE_TEXT = "PolyNorm: Σ a_i N(x^i) + b — naïve café, 12345 tokens!\n\tend."


def _byte_level_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    byte_to_symbol = _bytes_to_unicode()
    vocab = {byte_to_symbol[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def _bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 byte -> printable symbol table used by the `tokenizers` ByteLevel pre-tokenizer."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def to_hf_tokenizer(tok):
    """A transformers tokenizer equivalent to the harness tokenizer `tok` (see module docstring)."""
    from transformers import PreTrainedTokenizerFast

    kind = type(tok).__name__
    if kind == "ByteTokenizer":
        hf = PreTrainedTokenizerFast(tokenizer_object=_byte_level_tokenizer(), clean_up_tokenization_spaces=False)
    elif kind == "HFTokenizer":
        inner = tok._tok
        eos = inner.id_to_token(tok.eos_id) if tok.eos_id is not None else None
        hf = PreTrainedTokenizerFast(tokenizer_object=inner, eos_token=eos, clean_up_tokenization_spaces=False)
    elif kind == "TransformersTokenizer":
        hf = tok._tok
    elif hasattr(tok, "save_pretrained") and hasattr(tok, "encode"):
        hf = tok  # already a transformers tokenizer
    else:
        raise UserError(f"cannot convert a tokenizer of type {kind} to a transformers tokenizer")
    check_same_encoding(tok, hf)
    return hf


def check_same_encoding(harness_tok, hf_tok, text: str = PROBE_TEXT) -> None:
    """Raise UserError when the two tokenizers encode `text` differently (or do not round-trip it)."""
    expected = list(harness_tok.encode(text))
    got = list(hf_tok.encode(text, add_special_tokens=False))
    if expected != got:
        raise UserError(
            f"the transformers tokenizer encodes differently from the harness tokenizer ({type(harness_tok).__name__}): "
            f"{got[:12]} vs {expected[:12]}"
        )
