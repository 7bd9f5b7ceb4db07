"""The compute-dtype rule shared by every implementation of the PolyCom ops.

The reference ops, the Triton kernels (accumulators and saved inverse RMS) and the tensor-parallel
DTensor path all upcast once to this dtype, compute and reduce there, and cast the result back to
the input dtype once.
"""

from __future__ import annotations

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 stays fp64; every other floating dtype (fp32, bf16, fp16) computes in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
