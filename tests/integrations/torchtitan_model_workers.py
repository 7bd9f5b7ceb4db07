"""Worker functions for the whole-model torchtitan tests (spawned gloo processes, via dist_harness).

Each worker builds a registry config's whole decoder twice from one seed: a plain eager copy that sees the
whole batch (the reference) and a copy that goes through torchtitan's own engine path: `pipeline_llm` for
pipeline parallelism, or the model's `parallelize_fn` (FSDP2 over the ranks, torchtitan's activation
checkpointing, its per-block `torch.compile`, expert parallelism for the MoE). Both run one forward + backward of the same next-token loss
(sum over tokens / all tokens of the global batch, torchtitan's normalisation); the worker returns the loss and
every parameter's gradient from both sides, the engine side gathered back to whole tensors.

The models run in fp32 with torchtitan's SDPA attention in place of FlexAttention, which has no CPU backward;
the PolyCom layers, the norms, the embeddings and the MoE are the registry's.
"""

from __future__ import annotations

import copy
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torchtitan_workers import _full, _setup

BATCH, SEQ = 4, 16


def run_cases(rank: int, world: int, cases: list[tuple[str, tuple]]) -> list[dict]:
    """Run several (worker name, args) cases in one process pair."""
    return [globals()[name](rank, world, *args) for name, args in cases]


def _trainer(name: str, **parallelism):
    """Registry config `name` after torchtitan's config steps, with `parallelism` fields set, fp32, SDPA."""
    from torchtitan.config.override import apply_overrides
    from torchtitan.models.common.attention import ScaledDotProductAttention

    from polycom.integrations.torchtitan.recipes import registry_trainer_config

    trainer = registry_trainer_config(name)
    trainer.parallelism.spmd_backend = os.environ.get("TT_BACKEND", "spmd_types")
    for key, value in parallelism.items():
        setattr(trainer.parallelism, key, value)
    trainer.training.mixed_precision_param = "float32"
    trainer.training.local_batch_size = BATCH
    mcfg = trainer.model_spec.model
    mcfg.update_from_config(config=trainer)
    apply_overrides(trainer.override, trainer)
    for layer in mcfg.layers:  # FlexAttention has no CPU backward; SDPA is causal over each row
        layer.attention.inner_attention = ScaledDotProductAttention.Config()
    return trainer, mcfg


def _whole(mcfg) -> torch.nn.Module:
    """The decoder of `mcfg`, built on meta and initialised as torchtitan does, with seeded random coefficients
    (init is 1/r and 0 everywhere, which would hide a mixed-up coefficient); the same on every rank."""
    with torch.device("meta"):
        model = mcfg.build()
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    with torch.no_grad():
        model.init_weights(buffer_device=torch.device("cpu"))
        gen = torch.Generator().manual_seed(1)
        for name, p in model.named_parameters():
            if ".act." in name:
                p.copy_(torch.rand(p.shape, generator=gen) * 0.6 + 0.1)
    return model.train()


def _batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, vocab, (BATCH, SEQ + 1), generator=gen)
    return tokens[:, :-1], tokens[:, 1:]


def _token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross entropy over `labels`, divided by the tokens of the whole global batch."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="sum") / (BATCH * SEQ)


def _reference(model: torch.nn.Module, inputs, labels) -> tuple[float, dict[str, torch.Tensor]]:
    loss = _token_loss(model(inputs), labels)
    loss.backward()
    return loss.item(), {n: p.grad for n, p in model.named_parameters()}


def _checkpointing(trainer, kind: str):
    """torchtitan's activation checkpointing config: ``selective`` (the registry's SelectiveAC), ``full``, ``none``."""
    from torchtitan.distributed.activation_checkpoint import FullAC

    return {"selective": trainer.activation_checkpoint, "full": FullAC.Config(), "none": None}[kind]


def _clean(fqn: str) -> str:
    """A parameter name without the wrappers of activation checkpointing and torch.compile."""
    return fqn.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", "")


def model_pp_worker(
    rank: int, world: int, name: str, schedule: str, stages: list[list[str]] | None, checkpointing: str
) -> dict:
    """Pipeline parallelism over `world` ranks (torchtitan's `pipeline_llm`, its split of the layers or `stages`,
    its `schedule`, one row per microbatch; activation checkpointing as in `_checkpointing`) vs the whole model
    on the whole batch."""
    import tempfile

    from torchtitan.distributed.pipeline_parallel import pipeline_llm

    pd = _setup(world, pp=world)
    trainer, mcfg = _trainer(
        name,
        pipeline_parallel_degree=world,
        pipeline_parallel_schedule=schedule,
        pipeline_parallel_microbatch_size=1,
        pipeline_parallel_first_stage_less_layers=0,
        pipeline_parallel_last_stage_less_layers=0,
        module_fqns_per_model_part=stages,
    )
    whole = _whole(mcfg)
    inputs, labels = _batch(mcfg.vocab_size)
    want_loss, want = _reference(copy.deepcopy(whole), inputs, labels)

    with tempfile.TemporaryDirectory() as dump:
        pp_schedule, parts, first, last = pipeline_llm(
            copy.deepcopy(whole),
            parallel_dims=pd,
            training=trainer.training,
            parallelism=trainer.parallelism,
            compile_config=trainer.compile,
            ac_config=_checkpointing(trainer, checkpointing),
            dump_folder=dump,
            device=torch.device("cpu"),
            model_config=mcfg,
            parallelize_fn=trainer.model_spec.parallelize_fn,
            loss_fn=lambda pred, target, *_, **__: (_token_loss(pred, target), {}),
        )
        losses = [] if last else None
        # the whole-batch form of step (torch splits it into BATCH microbatches of one row)
        pp_schedule.step(*((inputs,) if first else ()), target=labels if last else None, losses=losses)
    loss = torch.stack(losses).sum() if last else torch.zeros(())
    dist.all_reduce(loss)  # only the last stage holds the loss
    grads = {}
    for part in parts:
        for fqn, p in part.named_parameters():
            grads[_clean(fqn)] = _full(p.grad, None)
    held: list[dict] = [{}] * world  # every stage's gradients on every rank
    dist.all_gather_object(held, grads)
    merged = {name: grad for rank_grads in held for name, grad in rank_grads.items()}
    return {
        "loss": (loss.item(), want_loss),
        "grads": {name: (merged.get(name), grad) for name, grad in want.items()},
        "held": [sorted(rank_grads) for rank_grads in held],
        "blocks": [type(block).__name__ for part in parts for block in part.layers.values()],
        "polycom_layers": _polycom_layers(parts),
    }


def _mesh_axes(t: torch.Tensor) -> tuple[str, ...]:
    """The mesh axes a (DTensor) parameter is placed on; () for a plain tensor."""
    return tuple(t.device_mesh.mesh_dim_names) if hasattr(t, "device_mesh") else ()


def _polycom_layers(parts) -> int:
    """How many PolyCom FFNs / experts the model parts hold (the registry model really is PolyCom)."""
    from polycom.integrations.torchtitan import PolyComFeedForward, PolyComGroupedExperts

    kinds = (PolyComFeedForward, PolyComGroupedExperts)
    return sum(isinstance(m, kinds) for part in parts for m in part.modules())


def model_dp_worker(rank: int, world: int, name: str, checkpointing: str, compiled: bool, ep: int = 1) -> dict:
    """The model's torchtitan `parallelize_fn` with FSDP2 over `world` ranks (each its share of the batch rows),
    activation checkpointing `checkpointing` (`_checkpointing`), torchtitan's per-block compile if `compiled`
    and expert parallelism `ep`, vs the whole eager model on the whole batch."""
    import tempfile

    from torch.distributed.fsdp import FSDPModule

    pd = _setup(world, dp_shard=world, ep=ep)
    trainer, mcfg = _trainer(name, data_parallel_shard_degree=world, expert_parallel_degree=ep)
    if ep > 1:  # gloo's all_to_all takes equal splits only: torchtitan's balanced debug routing
        for layer in mcfg.layers:
            layer.moe.router._debug_force_load_balance = True
    trainer.compile.enable = compiled
    trainer.compile.components = ["model"]
    whole = _whole(mcfg)
    inputs, labels = _batch(mcfg.vocab_size)
    want_loss, want = _reference(copy.deepcopy(whole), inputs, labels)

    with tempfile.TemporaryDirectory() as dump:
        model = trainer.model_spec.parallelize_fn(
            copy.deepcopy(whole),
            parallel_dims=pd,
            training=trainer.training,
            parallelism=trainer.parallelism,
            compile_config=trainer.compile,
            ac_config=_checkpointing(trainer, checkpointing),
            dump_folder=dump,
        )
    for module in model.modules():  # gloo has no PREMUL_SUM: reduce the same sum (divide factor 1) as a SUM
        if isinstance(module, FSDPModule):
            module.set_force_sum_reduction_for_comms(True)
    rows = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    torch._dynamo.utils.counters.clear()
    loss = _token_loss(model(inputs[rows]), labels[rows])
    loss.backward()
    total = loss.detach().clone()
    dist.all_reduce(total)
    grads = {_clean(fqn): _full(p.grad, None) for fqn, p in model.named_parameters()}
    return {
        "loss": (total.item(), want_loss),
        "grads": {name: (grads.get(name), grad) for name, grad in want.items()},
        "blocks": [type(block).__name__ for block in model.layers.values()],
        "compiled_graphs": torch._dynamo.utils.counters["stats"]["unique_graphs"],
        "expert_meshes": [_mesh_axes(m.w1_EFD) for m in model.modules() if hasattr(m, "w1_EFD")],
        "polycom_layers": _polycom_layers([model]),
    }
