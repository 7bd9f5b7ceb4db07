"""Worker functions for the torchtitan parallel tests (run on spawned gloo processes by dist_harness).

Each worker builds the module twice from one config: whole (the TP=1 / EP=1 reference, same process)
and through torchtitan's own sharding path (`ParallelDims`, the module's `ShardingConfig`,
`Module.parallelize`), runs forward + backward on the same data, and returns both sides' outputs and
gradients with every shard gathered back to the full tensor.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist


def run_cases(rank: int, world: int, cases: list[tuple[str, tuple]]) -> list[dict]:
    """Run several (worker name, args) cases in one process pair: starting processes costs more than a case."""
    return [globals()[name](rank, world, *args) for name, args in cases]


def _setup(world: int, **dims) -> object:
    import torchtitan.distributed.parallel_dims as parallel_dims_module
    from torchtitan.distributed import ParallelDims
    from torchtitan.distributed.utils import set_spmd_backend

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    parallel_dims_module.device_type = "cpu"  # torchtitan assumes an accelerator when it finds none
    sizes = dict(dp_replicate=1, dp_shard=1, cp=1, tp=1, pp=1, ep=1) | dims
    backend = os.environ.get("TT_BACKEND", "spmd_types")
    set_spmd_backend(backend)  # torchtitan's process-wide setting, as its trainer sets it
    pd = ParallelDims(**sizes, world_size=world, spmd_backend=backend)
    pd.build_mesh()
    return pd


def _context(pd):
    from torchtitan.distributed.utils import get_spmd_context

    return get_spmd_context(parallel_dims=pd)() if pd.spmd_backend == "spmd_types" else contextlib.nullcontext()


def _full(t: torch.Tensor, dim: int | None, group=None) -> torch.Tensor:
    """The whole tensor from this rank's piece: a DTensor's full_tensor, or an all-gather along `dim`."""
    if hasattr(t, "full_tensor"):
        return t.full_tensor()
    if dim is None:
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, t.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


def _local_shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.to_local().shape) if hasattr(t, "to_local") else tuple(t.shape)


def ffn_tp_worker(
    rank: int, world: int, activation: str, sequence_parallel: bool, compile_backend: str | None = None
) -> dict:
    """PolyComFeedForward with the hidden dim sharded over TP=world vs the whole module; with `compile_backend`,
    the sharded module is compiled with it (torch.compile over the collectives of the exact TP PolyNorm)."""
    import spmd_types as spmd
    from torchtitan.models.common.decoder_sharding import (
        dense_activation_placement,
        dense_sequence_parallel_placement,
        set_dense_ffn_sharding,
    )
    from torchtitan_cases import build_real, stock_ffn_config

    from polycom.integrations.torchtitan import polycom_feed_forward_config

    pd = _setup(world, tp=world)
    cfg = polycom_feed_forward_config(stock_ffn_config(), activation=activation)
    x_layout = dense_sequence_parallel_placement() if sequence_parallel else dense_activation_placement(tp=spmd.I)
    set_dense_ffn_sharding(cfg, attn_x_layout=x_layout, enable_sp=sequence_parallel)
    whole = build_real(cfg, seed=3)
    sharded = build_real(cfg, seed=3)
    sharded.parallelize(pd)
    if compile_backend is not None:
        torch._dynamo.utils.counters.clear()
        sharded.compile(backend=compile_backend)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 6, whole.w1.in_features, generator=gen, dtype=torch.float64)
    g = torch.randn(x.shape, generator=gen, dtype=torch.float64)

    xw = x.clone().requires_grad_()
    (whole(xw) * g).sum().backward()
    y_whole = whole(x).detach()

    seq = slice(rank * 3, rank * 3 + 3) if sequence_parallel else slice(None)  # SP: this rank's sequence shard
    xs = x[:, seq].clone().requires_grad_()
    with _context(pd):
        y = sharded(xs)
        y_local = y.to_local() if hasattr(y, "to_local") else y  # this rank's part of the output
        (y_local * g[:, seq]).sum().backward()
    out = _full(y, 1 if sequence_parallel else None)
    dx = _full(xs.grad, 1 if sequence_parallel else None)
    shard_dims = {"w1.weight": 0, "w3.weight": 0, "w2.weight": 1}
    grads = {n: _full(p.grad, shard_dims.get(n)) for n, p in sharded.named_parameters()}
    return {
        "y": (out, y_whole),
        "dx": (dx, xw.grad),
        "grads": {n: (grads[n], p.grad) for n, p in whole.named_parameters()},
        "local_width": _local_shape(sharded.w1.weight)[0],
        "compiled_graphs": torch._dynamo.utils.counters["stats"]["unique_graphs"],
        "graph_breaks": sum(torch._dynamo.utils.counters["graph_break"].values()),
    }


def experts_tp_worker(rank: int, world: int, activation: str, shared: bool) -> dict:
    """PolyComGroupedExperts with every expert's hidden dim sharded over TP=world (ep = 1) vs whole."""
    import spmd_types as spmd
    from torchtitan.models.common.moe_sharding import expert_param_placement_dense
    from torchtitan.protocols.sharding import ShardingConfig
    from torchtitan_cases import build_real, routed_tokens, stock_experts_config

    from polycom.integrations.torchtitan import polycom_grouped_experts_config

    pd = _setup(world, tp=world)
    cfg = polycom_grouped_experts_config(stock_experts_config(), activation=activation, shared_coefficients=shared)
    # torchtitan's layout for TP-sharded experts (set_moe_sharding_config with ep disabled)
    layout = {"w1_EFD": spmd.S(1), "w2_EDF": spmd.S(2), "w3_EFD": spmd.S(1)}
    cfg.sharding_config = ShardingConfig(
        state_shardings={n: expert_param_placement_dense(tp_placement=p) for n, p in layout.items()}
    )
    whole = build_real(cfg, seed=5)
    sharded = build_real(cfg, seed=5)
    sharded.parallelize(pd)
    x, counts = routed_tokens([3, 0, 4, 2], padding=2, seed=9)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    xw = x.clone().requires_grad_()
    y_whole = whole(xw, counts)
    (y_whole * g).sum().backward()
    xs = x.clone().requires_grad_()
    with _context(pd):
        y = sharded(xs, counts)
        # Each rank holds a partial sum over its hidden slice; torchtitan's local_map region declares the
        # output Partial and reduces it. Do the same here.
        dist.all_reduce(y_sum := y.detach().clone())
        (y * g).sum().backward()
    dist.all_reduce(dx := xs.grad.clone())
    dims = {"w1_EFD": 1, "w3_EFD": 1, "w2_EDF": 2}
    grads = {n: _full(p.grad, dims.get(n)) for n, p in sharded.named_parameters()}
    return {
        "y": (y_sum, y_whole.detach()),
        "dx": (dx, xw.grad),
        "grads": {n: (grads[n], p.grad) for n, p in whole.named_parameters()},
    }


def experts_ep_worker(rank: int, world: int, activation: str, shared: bool) -> dict:
    """PolyComGroupedExperts with the experts sharded over EP=world: each rank runs its own experts on the
    tokens routed to them; the whole module runs every expert on every rank's tokens."""
    from torchtitan.models.common.moe_sharding import expert_param_placement_sparse
    from torchtitan.protocols.sharding import ShardingConfig
    from torchtitan_cases import NUM_EXPERTS, build_real, routed_tokens, stock_experts_config

    from polycom.integrations.torchtitan import polycom_grouped_experts_config

    pd = _setup(world, dp_shard=world, ep=world)
    cfg = polycom_grouped_experts_config(stock_experts_config(), activation=activation, shared_coefficients=shared)
    cfg.sharding_config = ShardingConfig(
        state_shardings={n: expert_param_placement_sparse() for n in ("w1_EFD", "w2_EDF", "w3_EFD")}
    )
    whole = build_real(cfg, seed=5)
    sharded = build_real(cfg, seed=5)
    sharded.parallelize(pd)
    counts_all = [3, 1, 2, 2]  # both ranks' experts get 4 rows
    x, counts = routed_tokens(counts_all, seed=9)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    xw = x.clone().requires_grad_()
    y_whole = whole(xw, counts)
    (y_whole * g).sum().backward()

    local = NUM_EXPERTS // world
    first = rank * local
    start = sum(counts_all[:first])
    rows = slice(start, start + sum(counts_all[first : first + local]))
    xs = x[rows].clone().requires_grad_()
    with _context(pd):
        y = sharded(xs, counts[first : first + local])
        (y * g[rows]).sum().backward()
    expert_params = {"w1_EFD", "w2_EDF", "w3_EFD"} | (set() if shared else {"act.weight", "act.bias"})
    grads = {n: _full(p.grad, 0 if n in expert_params else None) for n, p in sharded.named_parameters()}
    return {
        "y": (_full(y.detach(), 0), y_whole.detach()),
        "dx": (_full(xs.grad, 0), xw.grad),
        "grads": {n: (grads[n], p.grad) for n, p in whole.named_parameters()},
        "local_experts": _local_shape(sharded.w1_EFD)[0],
    }


def moe_ep_worker(rank: int, world: int, activation: str, shared: bool) -> dict:
    """torchtitan's whole MoE layer (router, all-to-all token dispatch, PolyCom experts, combine) of the debug MoE
    config with EP=world vs the same layer unsharded on every rank's tokens; each rank routes its own batch row."""
    from torchtitan.config.override import apply_overrides

    from polycom.integrations.torchtitan.recipes import registry_trainer_config

    pd = _setup(world, dp_shard=world, ep=world)
    trainer = registry_trainer_config(f"polycom_debug_moe_{activation}")
    trainer.parallelism.expert_parallel_degree = world
    trainer.parallelism.data_parallel_shard_degree = world
    trainer.parallelism.spmd_backend = pd.spmd_backend
    trainer.override.imports = [(name, kw | {"shared_coefficients": shared}) for name, kw in trainer.override.imports]
    trainer.model_spec.model.update_from_config(config=trainer)
    apply_overrides(trainer.override, trainer)
    moe_cfg = trainer.model_spec.model.layers[0].moe
    # gloo's all_to_all takes equal splits only: torchtitan's balanced round-robin routing (router scores still
    # weight the experts and get gradients) with 8 tokens x top-2 per rank gives every expert 2 rows per rank.
    moe_cfg.router._debug_force_load_balance = True

    whole = _real_moe(moe_cfg)
    sharded = _real_moe(moe_cfg)
    sharded.parallelize(pd)
    experts = sharded.routed_experts.inner_experts
    local = whole.routed_experts.inner_experts.num_experts // world
    per_expert = {"w1_EFD", "w2_EDF", "w3_EFD"} | (set() if shared else {"act.weight", "act.bias"})
    with torch.no_grad():  # this rank's slice of every expert-sharded tensor, the rest whole
        for name, p in experts.named_parameters():
            full = dict(whole.routed_experts.inner_experts.named_parameters())[name]
            local_p = p.to_local() if hasattr(p, "to_local") else p
            local_p.copy_(full[rank * local : (rank + 1) * local] if name in per_expert else full)

    gen = torch.Generator().manual_seed(21)
    x = torch.randn(world, 8, whole.router.gate.in_features, generator=gen, dtype=torch.float64)
    g = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    xw = x.clone().requires_grad_()
    y_whole = whole(xw)
    (y_whole * g).sum().backward()
    xs = x[rank : rank + 1].clone().requires_grad_()
    with _context(pd):
        y = sharded(xs)
        (y * g[rank : rank + 1]).sum().backward()
    grads = {}
    for name, p in sharded.named_parameters():
        if name.startswith("routed_experts.inner_experts.") and name.split("inner_experts.")[1] in per_expert:
            grads[name] = _full(p.grad, 0)
        elif name.startswith("routed_experts.inner_experts.act."):
            grads[name] = _full(p.grad, None)  # shared coefficients: already the sum over the expert-parallel ranks
        else:
            dist.all_reduce(total := _full(p.grad, None).clone())  # data-parallel parameters: FSDP sums these
            grads[name] = total
    return {
        "y": (_full(y.detach(), 0), y_whole.detach()),
        "dx": (_full(xs.grad, 0), xw.grad),
        "grads": {n: (grads[n], p.grad) for n, p in whole.named_parameters()},
        "local_experts": _local_shape(experts.w1_EFD)[0],
    }


def _real_moe(cfg):
    """The MoE layer of `cfg` in fp64 with seeded random weights (same on every rank) and zero expert bias."""
    with torch.device("meta"):
        moe = cfg.build()
    moe.to_empty(device="cpu")
    with torch.no_grad():
        moe.init_states(buffer_device=torch.device("cpu"))
    moe = moe.double()
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, p in moe.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * (0.5 if ".act." in name else 0.2))
    return moe.train()
