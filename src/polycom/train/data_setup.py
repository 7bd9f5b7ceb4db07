"""The prepared data of a training run, from its [data] config (one process or all ranks of a torchrun)."""

from __future__ import annotations

import torch

from polycom.data.prepare import PrepareConfig
from polycom.data.resolve import open_prepared_folder, prepared_folder, resolve_prepared_data
from polycom.data.shards import TokenShards
from polycom.train.config import DataConfig


def resolve_data(data: DataConfig, *, show_progress: bool = True, is_main: bool = True) -> TokenShards:
    """`data.path` (must be prepared), or `data.source` prepared once into the cache folder.

    Under torchrun only the main rank prepares; the others wait at a barrier, then open the same folder.
    """
    if data.path:
        return open_prepared_folder(data.path, option="data.path")
    prepare = PrepareConfig(
        source=data.source,
        tokenizer=data.tokenizer,
        bpe_vocab_size=data.bpe_vocab_size,
        val_fraction=data.val_fraction,
        text_errors=data.text_errors,
    )
    if is_main:
        resolve_prepared_data(prepare, cache_dir=data.cache_dir, show_progress=show_progress)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return TokenShards(prepared_folder(prepare, cache_dir=data.cache_dir))
