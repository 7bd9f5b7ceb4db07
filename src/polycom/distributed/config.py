"""The ``[parallel]`` config section: how one training run is spread over processes/GPUs.

Launch with ``torchrun --nproc_per_node N -m polycom train ... --parallel.fsdp=true --parallel.tp=2``.
With one process and the defaults, training is plain single-device PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ParallelConfig:
    """Data/tensor parallel layout of a run.

    ddp: replicate the model and all-reduce gradients (ignored when fsdp is true).
    fsdp: shard parameters with FSDP2 (`fully_shard` per block, then the root).
    tp: tensor-parallel degree (DTensor `parallelize_module`); world_size must be divisible by tp,
        and the data-parallel degree is world_size // tp.
    activation_checkpointing: recompute each transformer block in backward.
    timeout_s: timeout of collectives, so a broken rendezvous or a missing rank fails instead of hanging.
    param_dtype: FSDP2 parameter dtype in forward/backward: "auto" (bf16 on GPU with fp32 master weights
        and fp32 gradient reduction; fp32 on CPU), "float32" or "bfloat16".
    """

    ddp: bool = False
    fsdp: bool = False
    tp: int = 1
    activation_checkpointing: bool = False
    timeout_s: int = 300
    param_dtype: str = "auto"
