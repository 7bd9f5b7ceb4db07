"""torchtitan configs for PolyCom: ``torchrun -m torchtitan.train --module polycom.integrations.torchtitan --config NAME``.

| NAME | model | what for |
|---|---|---|
| ``polycom_debug_{swiglu,polynorm,polyrelu}`` | polycom's ``tiny`` preset, vocab 2048 | a dense smoke run (torchtitan's test tokenizer and ``c4_test`` data, from a torchtitan checkout) |
| ``polycom_debug_moe_{swiglu,polynorm,polyrelu}`` | polycom's ``moe-tiny`` preset, vocab 2048 | the same with 8 experts, top-2 |
| ``polycom_paper_1b`` / ``_swiglu`` | ``configs/paper-1b.toml`` | the paper's dense 1B run: 24 layers, d 2048, 250B tokens |
| ``polycom_paper_moe_1b_7b`` / ``_swiglu`` | ``configs/paper-moe-1b-7b.toml`` | the paper's MoE: 64 experts top-8, 200B tokens |

Each config is a polycom run config turned into torchtitan's ``Trainer.Config``
(`polycom.integrations.torchtitan.recipes`): derived from polycom's own configs, not copied. Only config
functions live here: torchtitan offers every public callable of this module as a ``--config``.
"""

from __future__ import annotations

from torchtitan.trainer import Trainer

from polycom.integrations.torchtitan.recipes import registry_trainer_config as _registry_trainer_config


def polycom_debug_swiglu() -> Trainer.Config:
    return _registry_trainer_config("polycom_debug_swiglu")


def polycom_debug_polynorm() -> Trainer.Config:
    return _registry_trainer_config("polycom_debug_polynorm")


def polycom_debug_polyrelu() -> Trainer.Config:
    return _registry_trainer_config("polycom_debug_polyrelu")


def polycom_debug_moe_swiglu() -> Trainer.Config:
    return _registry_trainer_config("polycom_debug_moe_swiglu")


def polycom_debug_moe_polynorm() -> Trainer.Config:
    return _registry_trainer_config("polycom_debug_moe_polynorm")


def polycom_debug_moe_polyrelu() -> Trainer.Config:
    return _registry_trainer_config("polycom_debug_moe_polyrelu")


def polycom_paper_1b() -> Trainer.Config:
    """The paper's dense 1B with PolyNorm (configs/paper-1b.toml)."""
    return _registry_trainer_config("polycom_paper_1b")


def polycom_paper_1b_swiglu() -> Trainer.Config:
    """Its SwiGLU baseline (same config, activation swiglu)."""
    return _registry_trainer_config("polycom_paper_1b_swiglu")


def polycom_paper_moe_1b_7b() -> Trainer.Config:
    """The paper's MoE 1B-active / 7B with PolyNorm experts (configs/paper-moe-1b-7b.toml)."""
    return _registry_trainer_config("polycom_paper_moe_1b_7b")


def polycom_paper_moe_1b_7b_swiglu() -> Trainer.Config:
    """Its SwiGLU baseline."""
    return _registry_trainer_config("polycom_paper_moe_1b_7b_swiglu")
