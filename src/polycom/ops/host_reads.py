"""When the ops may read tensor data on the host (a data-dependent Python branch or a list of counts).

Two situations forbid it. Under ``torch.compile`` tracing the value is symbolic. While a CUDA stream is being
captured into a CUDA graph (torchtitan captures each training step by default), a host read is a device
sync, which capture refuses, and any branch taken on the value would be frozen into the graph for every
replay. In both cases the closed form takes its general path (it always scales the rows); code that cannot
do without the values (per-expert token counts) checks `cuda_graph_capturing` and says what to change.
"""

from __future__ import annotations

import torch

__all__ = ["cuda_graph_capturing", "host_reads_allowed"]


def cuda_graph_capturing(t: torch.Tensor) -> bool:
    """True while `t`'s CUDA stream is being captured into a CUDA graph (never under torch.compile tracing,
    where a host read becomes a graph break instead)."""
    if torch.compiler.is_compiling():
        return False
    return t.is_cuda and torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def host_reads_allowed(t: torch.Tensor) -> bool:
    """False under torch.compile tracing and while `t`'s CUDA stream is being captured into a graph."""
    return not torch.compiler.is_compiling() and not cuda_graph_capturing(t)
