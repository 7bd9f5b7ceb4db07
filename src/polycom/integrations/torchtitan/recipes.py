"""The registry's recipes: each torchtitan config is a polycom run config (`train_config`) turned into torchtitan's
``Trainer.Config`` by `trainer_config`. `polycom.integrations.torchtitan.config_registry` holds the config
functions alone (torchtitan offers every public callable of that module as a ``--config``); see its docstring.

One source of truth: the architecture, optimiser (AdamW lr, betas, eps, weight decay with polycom's
no-decay rule), warmup + cosine schedule to ``min_lr_ratio``, gradient clipping, steps, sequences per step
and sequence length come from polycom's own run config; nothing here repeats a number of those files. The
PolyCom arms reach the model through the same override factories a user lists in ``--override.imports``
(`polycom.integrations.torchtitan.models.activation_overrides`).

Sequences per step: polycom's configs state a micro-batch per rank (``train.batch_size``) and
``train.grad_accum`` for `PAPER_DP_RANKS` = 8 data-parallel ranks (their launch line); torchtitan takes the
micro-batch (``training.local_batch_size``) and the global batch (``training.global_batch_size``) and
derives the accumulation from the ranks it runs on, so the tokens per step stay the paper's on any
number of GPUs. Data and tokenizer are the user's: ``--dataloader.dataset`` / ``--hf_assets_path``.
"""

from __future__ import annotations

from functools import partial

from torchtitan.components.checkpoint import CheckpointManager
from torchtitan.components.loss import ChunkedLossWrapper, CrossEntropyLoss
from torchtitan.components.metrics import MetricsProcessor
from torchtitan.components.optimizer import LRSchedulersContainer
from torchtitan.config import ParallelismConfig, TrainingConfig
from torchtitan.config.override import OverrideConfig
from torchtitan.distributed.activation_checkpoint import SelectiveAC
from torchtitan.hf_datasets.text_datasets import HuggingFaceTextDataLoader
from torchtitan.trainer import Trainer

from polycom.integrations.torchtitan.models import activation_overrides, model_spec
from polycom.integrations.torchtitan.optimizer import adamw_config
from polycom.models import get_preset
from polycom.train.config import OptimConfig, TrainConfig, bundled_config, load_config

PAPER_DP_RANKS = 8  # the data-parallel ranks polycom's paper configs are written for (torchrun --nproc_per_node 8)
DEBUG_VOCAB = 2048  # torchtitan's test tokenizer (tests/assets/tokenizer of a torchtitan checkout)
DEBUG_SEQ_LEN = 256
DEBUG_ARMS = ("swiglu", "polynorm", "polyrelu")

__all__ = ["PAPER_DP_RANKS", "config_names", "registry_trainer_config", "train_config", "trainer_config"]


def trainer_config(
    tc: TrainConfig,
    flavor: str,
    *,
    dp_ranks: int,
    dataset: str = "c4",
    hf_assets_path: str = "./assets/hf/tokenizer",
) -> Trainer.Config:
    """A torchtitan ``Trainer.Config`` that trains polycom run config `tc` (module docstring).

    dp_ranks: the data-parallel ranks `tc`'s ``batch_size`` x ``grad_accum`` was written for."""
    mc, optim, loop = tc.model, tc.optim, tc.train
    spec = model_spec(mc, flavor)
    seq_len = loop.seq_len or mc.max_seq_len
    return Trainer.Config(
        model_spec=spec,
        loss=ChunkedLossWrapper.Config(loss_fn=CrossEntropyLoss.Config(global_vocab_size=mc.vocab_size)),
        hf_assets_path=hf_assets_path,
        optimizer=adamw_config(optim, has_coefficients=mc.activation_name != "swiglu"),
        lr_scheduler=LRSchedulersContainer.Config(
            warmup_steps=optim.warmup_steps,
            total_steps=optim.schedule_steps or None,
            decay_type="cosine",
            min_lr_factor=optim.min_lr_ratio,
        ),
        training=TrainingConfig(
            local_batch_size=loop.batch_size,
            global_batch_size=loop.batch_size * loop.grad_accum * dp_ranks,
            seq_len=seq_len,
            steps=loop.steps,
            max_norm=optim.grad_clip,
            mixed_precision_param="bfloat16" if loop.precision in ("bf16", "auto") else "float32",
            # MoE: torchtitan's expert-parallel all-to-all reads its split sizes on the host, which CUDA graph
            # capture (its default for the step) refuses; its own MoE configs turn capture off the same way.
            disable_cuda_graphs=mc.moe is not None,
        ),
        dataloader=HuggingFaceTextDataLoader.Config(dataset=dataset),
        metrics=MetricsProcessor.Config(log_freq=loop.log_interval),
        checkpoint=CheckpointManager.Config(interval=loop.checkpoint_interval or loop.steps),
        activation_checkpoint=SelectiveAC.Config(),
        # Configs written for several data-parallel ranks shard with FSDP2, which in torch 2.13 accepts only
        # DTensor parameters once the dense mesh has more than one rank (FSDP or TP): torchtitan's default
        # spmd_types backend hands it plain ones and stops, for torchtitan's own models too; partial_dtensor
        # runs (docs/torchtitan.md, Limits).
        parallelism=ParallelismConfig(spmd_backend="partial_dtensor" if dp_ranks > 1 else "spmd_types"),
        override=OverrideConfig(imports=activation_overrides(mc)),
    )


def _debug_train_config(preset: str, activation: str) -> TrainConfig:
    tc = TrainConfig(model=get_preset(preset, vocab_size=DEBUG_VOCAB, max_seq_len=DEBUG_SEQ_LEN, activation=activation))
    tc.optim = OptimConfig(lr=8e-4, warmup_steps=2)
    tc.train.steps, tc.train.batch_size, tc.train.grad_accum = 10, 8, 1
    tc.train.checkpoint_interval, tc.train.log_interval = 10, 1
    return tc


def _paper_train_config(name: str, activation: str | None) -> TrainConfig:
    return load_config(bundled_config(name), overrides=[] if activation is None else [f"model.activation={activation}"])


# NAME -> (the polycom run config it trains, data-parallel ranks that config was written for, debug data?)
_SOURCES = {
    **{f"polycom_debug_{act}": (partial(_debug_train_config, "tiny", act), 1, True) for act in DEBUG_ARMS},
    **{f"polycom_debug_moe_{act}": (partial(_debug_train_config, "moe-tiny", act), 1, True) for act in DEBUG_ARMS},
    "polycom_paper_1b": (partial(_paper_train_config, "paper-1b", None), PAPER_DP_RANKS, False),
    "polycom_paper_1b_swiglu": (partial(_paper_train_config, "paper-1b", "swiglu"), PAPER_DP_RANKS, False),
    "polycom_paper_moe_1b_7b": (partial(_paper_train_config, "paper-moe-1b-7b", None), PAPER_DP_RANKS, False),
    "polycom_paper_moe_1b_7b_swiglu": (
        partial(_paper_train_config, "paper-moe-1b-7b", "swiglu"),
        PAPER_DP_RANKS,
        False,
    ),
}


def train_config(name: str) -> TrainConfig:
    """The polycom run config behind registry config `name` (what `polycom.integrations.torchtitan.export` rebuilds)."""
    return _SOURCES[name][0]()


def registry_trainer_config(name: str) -> Trainer.Config:
    """The torchtitan config of registry name `name` (what ``--config NAME`` loads)."""
    build, dp_ranks, debug = _SOURCES[name]
    tc = build()
    flavor = name.removeprefix("polycom_")
    if debug:  # torchtitan's own test assets (tests/assets in a torchtitan checkout)
        return trainer_config(
            tc, flavor, dp_ranks=dp_ranks, dataset="c4_test", hf_assets_path="./tests/assets/tokenizer"
        )
    return trainer_config(tc, flavor, dp_ranks=dp_ranks)


def config_names() -> list[str]:
    """Every config this registry offers (the ``--config`` values)."""
    return list(_SOURCES)
