"""Apply tensor parallelism, activation checkpointing and data parallelism (DDP or FSDP2) to a model.

Order (each step sees the previous one's parameters):
1. Tensor parallel over the "tp" mesh dimension (DTensor `parallelize_module`): in every attention
   module q/k/v_proj are column-wise (each rank holds n_heads / tp heads) and o_proj row-wise; in
   every dense MLP gate_proj/up_proj are column-wise and down_proj row-wise. The column-wise MLP
   outputs stay DTensors sharded on the hidden dim, so the activation receives a Shard(-1) DTensor:
   PolyNorm then all-reduces its per-row sums (`polycom.ops.tensor_parallel`) and
   the elementwise activations (PolyReLU, SiLU, GELU, ...) need no communication. The activation's
   coefficients become replicated DTensors on the TP mesh, so their gradients are reduced correctly.
   Embedding, norms, lm_head and MoE layers stay replicated over the TP group.
2. Activation checkpointing: each block's forward is recomputed in backward (state-dict names
   unchanged).
3. Data parallel over the "dp" mesh dimension: FSDP2 (`fully_shard` on every block, then on the
   root; bf16 parameters with fp32 gradient reduction on GPU) or DDP (`replicate`, module type and
   state-dict names unchanged). TP with more than one data-parallel rank needs FSDP2.

Models built on the meta device are materialised on `ctx.device` after sharding and initialised
shard by shard (`materialize_and_init`).
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from polycom.distributed.config import ParallelConfig
from polycom.distributed.runtime import DistContext
from polycom.errors import UserError

__all__ = [
    "parallelize",
    "check_tp_compatible",
    "apply_tensor_parallel",
    "apply_activation_checkpointing",
    "apply_fsdp",
    "apply_ddp",
    "materialize_and_init",
    "transformer_blocks",
]

_ATTN_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")


def _is_attention(module: nn.Module) -> bool:
    return all(isinstance(getattr(module, name, None), nn.Linear) for name in _ATTN_PROJ)


def _is_dense_mlp(module: nn.Module) -> bool:
    return isinstance(getattr(module, "up_proj", None), nn.Linear) and isinstance(
        getattr(module, "down_proj", None), nn.Linear
    )


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks (`model.layers`), the units of FSDP sharding and activation checkpointing."""
    layers = getattr(model, "layers", None)
    if isinstance(layers, (nn.ModuleList, nn.Sequential)):
        return list(layers)
    return []


def check_tp_compatible(model: nn.Module, tp: int) -> None:
    """Raise UserError naming the first layer whose heads or hidden size `tp` does not divide."""
    if tp == 1:
        return
    found = False
    for name, module in model.named_modules():
        if _is_attention(module):
            found = True
            for attr in ("n_heads", "n_kv_heads"):
                count = getattr(module, attr, None)
                if count is not None and count % tp != 0:
                    raise UserError(
                        f"{name}: {attr}={count} is not divisible by parallel.tp={tp}; "
                        f"choose a tp that divides both n_heads and n_kv_heads"
                    )
            if getattr(module, "q_norm", None) is not None:
                raise UserError(f"{name}: qk_norm normalises over all heads and is not supported with parallel.tp > 1")
        elif _is_dense_mlp(module):
            found = True
            hidden = module.up_proj.out_features
            if hidden % tp != 0:
                raise UserError(
                    f"{name}: MLP hidden size {hidden} is not divisible by parallel.tp={tp}; "
                    "set hidden_size / multiple_of so that tp divides it"
                )
    if not found:
        raise UserError("parallel.tp > 1 but the model has no attention or MLP projections to shard")


def _grad_to_param_placements(param: torch.Tensor) -> None:
    """Post-accumulate-grad hook: make a DTensor gradient use its parameter's placements.

    A replicated coefficient multiplying a Shard(-1) activation gets a Partial (per-rank partial
    sum) gradient from DTensor's autograd; left as is, the optimizer would apply each rank's partial
    sum to its replica and the replicas would drift apart. Redistributing sums the partials once.
    (FSDP2 does the same for the parameters it manages.)
    """
    grad = param.grad
    if grad is not None and tuple(grad.placements) != tuple(param.placements):
        param.grad = grad.redistribute(param.device_mesh, param.placements)


def _replicate_params_on(module: nn.Module, mesh) -> None:
    """Turn the direct parameters of `module` into replicated DTensors on `mesh` (in place)."""
    from torch.distributed.tensor import Replicate, distribute_tensor

    for pname, param in list(module.named_parameters(recurse=False)):
        dt = nn.Parameter(distribute_tensor(param.data, mesh, [Replicate()]), requires_grad=param.requires_grad)
        module.register_parameter(pname, dt)
        dt.register_post_accumulate_grad_hook(_grad_to_param_placements)


def apply_tensor_parallel(model: nn.Module, tp_mesh) -> nn.Module:
    """Shard attention heads and MLP hidden units over `tp_mesh` (see module docstring, step 1)."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    tp = tp_mesh.size()
    check_tp_compatible(model, tp)
    for _, module in list(model.named_modules()):
        if _is_attention(module):
            plan = {
                "q_proj": ColwiseParallel(),
                "k_proj": ColwiseParallel(),
                "v_proj": ColwiseParallel(),
                "o_proj": RowwiseParallel(),
            }
            parallelize_module(module, tp_mesh, plan)
            # The attention reshapes its local q/k/v with its head counts: make them per-rank counts.
            for attr in ("n_heads", "n_kv_heads"):
                if isinstance(getattr(module, attr, None), int):
                    setattr(module, attr, getattr(module, attr) // tp)
        elif _is_dense_mlp(module):
            # Column-wise outputs stay DTensors (Shard(-1)) so the activation sees the global width.
            plan = {"up_proj": ColwiseParallel(use_local_output=False), "down_proj": RowwiseParallel()}
            if isinstance(getattr(module, "gate_proj", None), nn.Linear):
                plan["gate_proj"] = ColwiseParallel(use_local_output=False)
            parallelize_module(module, tp_mesh, plan)
            act = getattr(module, "act", None)
            if isinstance(act, nn.Module):
                _replicate_params_on(act, tp_mesh)
    return model


def apply_activation_checkpointing(model: nn.Module) -> nn.Module:
    """Recompute every block in backward (non-reentrant); parameter names stay the same."""
    blocks = transformer_blocks(model)
    if not blocks:
        raise UserError("activation checkpointing needs a model with a `layers` list of blocks")
    for block in blocks:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
    return model


def _dtype(name: str, device: torch.device) -> torch.dtype | None:
    """FSDP2 parameter dtype: "auto" = bf16 on GPU (fp32 master weights, fp32 reduction), fp32 on CPU."""
    name = name.lower()
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    table = {"float32": None, "fp32": None, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if name not in table:
        raise UserError(f"parallel.param_dtype must be auto, float32 or bfloat16, got {name!r}")
    return table[name]


def apply_fsdp(model: nn.Module, dp_mesh, *, param_dtype: torch.dtype | None = None) -> nn.Module:
    """FSDP2: `fully_shard` each block, then the root (embedding, final norm, lm_head)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    blocks = transformer_blocks(model)
    for i, block in enumerate(blocks):
        # The last block's parameters are needed again at once by backward: keep them gathered.
        fully_shard(block, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=i < len(blocks) - 1)
    fully_shard(model, mesh=dp_mesh, mp_policy=mp)
    return model


def apply_ddp(model: nn.Module, dp_mesh, device: torch.device) -> nn.Module:
    """Data parallel with gradient all-reduce; keeps the module type and state-dict names."""
    from torch.distributed._composable.replicate import replicate

    kwargs = {"device_ids": [device.index]} if device.type == "cuda" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # replicate() warns that it is a prototype API
        replicate(model, device_mesh=dp_mesh, **kwargs)
    return model


def _has_meta(model: nn.Module) -> bool:
    return any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))


def _split_key(param: torch.Tensor) -> tuple | None:
    """None for a plain or fully replicated parameter; else ((mesh dim name, coordinate), ...) of this
    rank along the mesh dimensions over which the parameter is split."""
    from torch.distributed.tensor import DTensor, Replicate

    if not isinstance(param, DTensor):
        return None
    mesh = param.device_mesh
    coord = mesh.get_coordinate()
    names = mesh.mesh_dim_names or tuple(f"dim{i}" for i in range(mesh.ndim))
    key = tuple((names[i], coord[i]) for i, p in enumerate(param.placements) if not isinstance(p, Replicate))
    return key or None


def _shared_seed() -> int:
    """This rank's `torch.initial_seed()`, or rank 0's when a process group is running."""
    import torch.distributed as dist

    seed = torch.tensor([torch.initial_seed() % (2**62)], dtype=torch.int64)
    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "nccl":
            seed = seed.cuda()
        dist.broadcast(seed, src=0)
    return int(seed.item())


@torch.no_grad()
def materialize_and_init(model: nn.Module, device: torch.device, seed: int | None = None) -> nn.Module:
    """Allocate a meta-device model on `device` (each rank only its shards) and initialise it.

    Uses the model's own `init_weights()` when it has one, else every submodule's
    `reset_parameters()`. A plain init would give every shard of a sharded parameter the same
    draws (the CPU generator knows nothing of shards), so the init runs once per "split class":
    parameters split over the same mesh dimensions are drawn from a generator seeded with
    (seed, this rank's coordinates along those dimensions), replicated parameters from `seed`
    alone. Shards are thus independent draws and replicas agree. `seed` defaults to rank 0's
    `torch.initial_seed()`. The values differ from a single-process init with the same seed (same
    distribution); build on a real device instead when bit-equal initial weights matter.
    """
    import zlib

    model.to_empty(device=device)
    init = getattr(model, "init_weights", None)

    def run_init() -> None:
        if callable(init):
            init()
        else:
            for module in model.modules():
                reset = getattr(module, "reset_parameters", None)
                if callable(reset):
                    reset()

    seed = _shared_seed() if seed is None else int(seed)
    params = dict(model.named_parameters())
    classes: dict[tuple | None, list[str]] = {}
    for name, param in params.items():
        classes.setdefault(_split_key(param), []).append(name)
    rng_state = torch.get_rng_state()
    saved: dict[str, torch.Tensor] = {}
    keys = list(classes)
    for index, key in enumerate(keys):
        torch.manual_seed(seed if key is None else (seed + zlib.crc32(repr(key).encode())) % (2**62))
        with warnings.catch_warnings():
            # DTensor warns that its offset-based RNG tracker is unavailable on CPU meshes: that is
            # why the init runs per split class here.
            warnings.simplefilter("ignore", UserWarning)
            run_init()
        if index < len(keys) - 1:  # the last class keeps its values in place
            for name in classes[key]:
                saved[name] = params[name].detach().clone()
    for name, value in saved.items():
        params[name].copy_(value)
    torch.set_rng_state(rng_state)
    return model


def parallelize(model: nn.Module, cfg: ParallelConfig, ctx: DistContext) -> nn.Module:
    """Apply cfg's TP / activation checkpointing / FSDP2 or DDP for this process (see module docstring).

    Identity for a single process without activation checkpointing. With several processes and
    neither ddp nor fsdp set, data parallelism defaults to DDP (a replica without gradient reduction
    would silently train a different model on every rank).
    """
    if ctx.world_size == 1:
        if cfg.tp > 1:
            raise UserError(f"parallel.tp={cfg.tp} needs {cfg.tp} processes; launch with torchrun")
        if cfg.activation_checkpointing:
            apply_activation_checkpointing(model)
        if _has_meta(model):
            materialize_and_init(model, ctx.device)
        return model

    if ctx.mesh is None:
        raise UserError("distributed context without a device mesh: create it with init_distributed")
    if cfg.tp > 1 and ctx.dp_size > 1 and not cfg.fsdp:
        raise UserError(
            f"parallel.tp={cfg.tp} with {ctx.dp_size} data-parallel groups needs parallel.fsdp=true "
            "(DDP cannot wrap tensor-parallel DTensor parameters)"
        )
    if cfg.tp > 1:
        check_tp_compatible(model, cfg.tp)  # same check on every rank: same error everywhere, no hang
    meta = _has_meta(model)
    if not meta:
        model.to(ctx.device)
    if cfg.tp > 1:
        apply_tensor_parallel(model, ctx.tp_mesh)
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(model)
    if cfg.fsdp:
        apply_fsdp(model, ctx.dp_mesh, param_dtype=_dtype(getattr(cfg, "param_dtype", "auto"), ctx.device))
    elif ctx.dp_size > 1:
        if meta:
            materialize_and_init(model, ctx.device)
            meta = False
        apply_ddp(model, ctx.dp_mesh, ctx.device)
    if meta:
        materialize_and_init(model, ctx.device)
    return model
