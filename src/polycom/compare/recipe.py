"""The training recipe of a comparison and the `TrainConfig` of each of its runs.

A recipe is a `polycom train` config file (``recipes/cpu.toml``, ``recipes/cuda.toml``) holding
everything the runs share except the activation: the model preset and sequence length, the optimizer
and the loop. It is loaded by `polycom.train.config.load_config`, so a recipe reads like any
``configs/*.toml`` and `--preset` replaces its preset exactly as ``polycom train --preset`` does.
Each run is the recipe with its activation, seed, data and device set through `dataclasses.replace`,
then the user's ``--section.key=value`` overrides applied through the same override grammar as
``polycom train``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from polycom.compare.config import CompareConfig
from polycom.errors import UserError
from polycom.train.config import TrainConfig, load_config

RECIPE_FOLDER = Path(__file__).parent / "recipes"


def recipe_path(device: torch.device) -> Path:
    """``recipes/cuda.toml`` on a CUDA device, else ``recipes/cpu.toml``."""
    return RECIPE_FOLDER / ("cuda.toml" if device.type == "cuda" else "cpu.toml")


def load_recipe(device: torch.device, preset: str | None = None) -> TrainConfig:
    """The recipe for `device`; `preset` (``--preset``) replaces the recipe's model preset."""
    return load_config(recipe_path(device), preset=preset)


def build_run_config(
    cfg: CompareConfig, recipe: TrainConfig, activation: str, seed: int, data_path: Path, vocab: int
) -> TrainConfig:
    """The TrainConfig of one run: `recipe` with this run's settings, then ``cfg.overrides``.

    ``--steps`` replaces the recipe's steps; the evaluation and log intervals are capped at the steps and
    the warmup at a tenth of them, so a short run still evaluates at its end and decays its rate.
    """
    steps = cfg.steps if cfg.steps is not None else recipe.train.steps
    run_cfg = replace(
        recipe,
        model=replace(recipe.model, activation=activation, vocab_size=vocab),
        data=replace(recipe.data, path=str(data_path)),
        optim=replace(recipe.optim, warmup_steps=min(recipe.optim.warmup_steps, max(1, steps // 10))),
        train=replace(
            recipe.train,
            steps=steps,
            seed=seed,
            eval_interval=min(recipe.train.eval_interval, steps),
            log_interval=min(recipe.train.log_interval, steps),
            device=cfg.device,
        ),
        parallel=replace(recipe.parallel),
    )
    run_cfg = load_config(base=run_cfg, overrides=list(cfg.overrides))  # validates
    if run_cfg.model.activation != activation:
        raise UserError("--model.activation cannot be overridden in a comparison; use --activations")
    return run_cfg
