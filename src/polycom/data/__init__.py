"""Training data: text sources, tokenizers, memory-mapped token shards and deterministic batches.

from polycom.data import load_tokenizer, TokenShards, prepare_data, PrepareConfig
shards = prepare_data(PrepareConfig(source="embedded", tokenizer="byte"), "data/shakespeare-byte")
tok = shards.tokenizer(); tok.decode(tok.encode("To be")) == "To be"
"""

from polycom.data.loader import WindowSampler, eval_batches
from polycom.data.prepare import PrepareConfig, prepare_data, split_train_val
from polycom.data.shards import TokenFile, TokenShards, read_header, write_token_file
from polycom.data.sources import embedded_corpus_text, iter_documents
from polycom.data.tokenizers import ByteTokenizer, HFTokenizer, load_tokenizer, train_bpe

__all__ = [
    "ByteTokenizer",
    "HFTokenizer",
    "PrepareConfig",
    "TokenFile",
    "TokenShards",
    "WindowSampler",
    "embedded_corpus_text",
    "eval_batches",
    "iter_documents",
    "load_tokenizer",
    "prepare_data",
    "read_header",
    "split_train_val",
    "train_bpe",
    "write_token_file",
]
