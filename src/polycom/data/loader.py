"""Deterministic batches of training windows from a memory-mapped token file.

The batch for (step, micro_step) is a pure function of (seed, step, micro_step): window starts are drawn
by a generator seeded from those three numbers. So the data order is the same for every model trained with
the same seed (what `polycom compare` needs), and a resumed run only has to remember its step.

Data parallel: the global micro-batch has ``batch_size * dp_size`` rows; rank ``dp_rank`` takes rows
``[dp_rank * batch_size, (dp_rank + 1) * batch_size)``, so ranks see disjoint slices of one global batch.
"""

from __future__ import annotations

import numpy as np
import torch

from polycom.data.shards import TokenFile
from polycom.errors import UserError


class WindowSampler:
    """(B, T) input/target windows: inputs tokens[s : s+T], targets tokens[s+1 : s+T+1]."""

    def __init__(
        self, tokens: TokenFile, seq_len: int, batch_size: int, seed: int, *, dp_rank: int = 0, dp_size: int = 1
    ) -> None:
        if len(tokens) < seq_len + 2:
            raise UserError(
                f"{tokens.path} holds {len(tokens)} tokens, too few for one window of seq_len {seq_len}; "
                "use more data or a smaller --model.max_seq_len"
            )
        self.file = tokens
        self.tokens = tokens.tokens
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.dp_rank = dp_rank
        self.dp_size = dp_size

    def starts(self, step: int, micro_step: int = 0) -> np.ndarray:
        """Window start offsets of this rank's rows: (batch_size,) int64."""
        rng = np.random.default_rng([self.seed, step, micro_step])
        high = len(self.tokens) - self.seq_len - 1
        all_starts = rng.integers(0, high + 1, size=self.batch_size * self.dp_size)
        lo = self.dp_rank * self.batch_size
        return all_starts[lo : lo + self.batch_size]

    def batch(self, step: int, micro_step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each (batch_size, seq_len) int64 on CPU."""
        starts = self.starts(step, micro_step)
        idx = starts[:, None] + np.arange(self.seq_len + 1)[None, :]
        rows = torch.from_numpy(np.asarray(self.tokens[idx], dtype=np.int64))
        # A file edited after it was written can hold ids its header does not admit: a clear error here,
        # not an IndexError (CPU) or a device-side assert (GPU) in the embedding. B*T ints: negligible.
        largest = int(rows.max())
        if largest >= self.file.vocab_size:
            raise UserError(self.file.out_of_range_message(largest))
        return rows[:, :-1], rows[:, 1:]


def eval_batches(
    tokens: TokenFile,
    seq_len: int,
    batch_size: int,
    n_batches: int,
    seed: int = 1234,
    *,
    dp_rank: int = 0,
    dp_size: int = 1,
):
    """A fixed list of (inputs, targets) validation batches: the same for every call with the same args.

    With data parallelism each rank gets its disjoint slice of the same global windows (as in training),
    so the mean over ranks is the loss of the single-process validation set with batch_size * dp_size.
    """
    sampler = WindowSampler(tokens, seq_len, batch_size, seed, dp_rank=dp_rank, dp_size=dp_size)
    return [sampler.batch(i) for i in range(n_batches)]
