"""Bytes autograd keeps for backward, counted with `torch.autograd.graph.saved_tensors_hooks`.

Every tensor saved while `fn` runs is recorded by its storage; each storage counts once with its
full size (a view keeps its whole storage alive). Storages of `exclude` (the parameters, which exist
whether or not a backward follows) are left out. Deterministic for a given graph.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch


@dataclass
class SavedTensors:
    """What one forward saved: total bytes of distinct storages, and (shape, dtype) of each saved tensor."""

    bytes: int = 0
    tensors: list[tuple[tuple[int, ...], torch.dtype]] = field(default_factory=list)

    @property
    def mib(self) -> float:
        return self.bytes / 2**20


def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    storage = t.untyped_storage()
    return (str(t.device), storage.data_ptr())


def count_saved(fn: Callable[[], object], exclude: Iterable[torch.Tensor] = ()) -> tuple[object, SavedTensors]:
    """Run fn() recording what autograd saves; returns (fn's result, SavedTensors)."""
    skip = {_storage_key(t) for t in exclude}
    seen: set[tuple[str, int]] = set()
    saved = SavedTensors()

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in skip:
            saved.tensors.append((tuple(t.shape), t.dtype))
            if key not in seen:
                seen.add(key)
                saved.bytes += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, saved
