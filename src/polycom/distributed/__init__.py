"""Scale-out on PyTorch's own distributed stack: torchrun + DDP / FSDP2 / tensor parallel (DTensor).

    ctx = init_distributed(parallel_cfg)        # reads the torchrun environment
    model = parallelize(model, parallel_cfg, ctx)
    ...
    shutdown(ctx)

See docs/distributed.md for launch recipes and how to choose a layout.
"""

from polycom.distributed.config import ParallelConfig
from polycom.distributed.parallelize import materialize_and_init, parallelize
from polycom.distributed.runtime import DistContext, init_distributed, shutdown

__all__ = ["DistContext", "ParallelConfig", "init_distributed", "materialize_and_init", "parallelize", "shutdown"]
