"""The training recipe of a comparison, the named recipes, and the `TrainConfig` of each run.

A recipe is a `polycom train` config file (``recipes/cpu.toml``, ``recipes/cuda.toml``) holding
everything the runs share except the activation: the model preset and sequence length, the optimizer
and the loop. It is loaded by `polycom.train.config.load_config`, so a recipe reads like any
``configs/*.toml`` and `--preset` replaces its preset exactly as ``polycom train --preset`` does.
Each run is the recipe with its activation, seed, data and device set through `dataclasses.replace`,
then the user's ``--section.key=value`` overrides applied through the same override grammar as
``polycom train``.

A named recipe (``polycom compare --recipe order-ablation``; ``recipes/<name>.toml`` or a path) is a
comparison as a config file: a ``[compare]`` table (``activations`` = the arms, ``seeds``, ``baseline``,
``base`` = the training recipe it starts from, ``cpu.toml`` by default) and any ``polycom train`` keys
(``preset``, ``[model]``, ``[train]``, ...) that change that training recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from polycom.compare.arms import Arm, parse_arm
from polycom.compare.config import CompareConfig
from polycom.errors import UserError
from polycom.train.config import TrainConfig, apply_dict, load_config

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib

RECIPE_FOLDER = Path(__file__).parent / "recipes"


def recipe_path(device: torch.device) -> Path:
    """``recipes/cuda.toml`` on a CUDA device, else ``recipes/cpu.toml``."""
    return RECIPE_FOLDER / ("cuda.toml" if device.type == "cuda" else "cpu.toml")


def load_recipe(device: torch.device, preset: str | None = None) -> TrainConfig:
    """The recipe for `device`; `preset` (``--preset``) replaces the recipe's model preset."""
    return load_config(recipe_path(device), preset=preset)


@dataclass(frozen=True)
class NamedRecipe:
    """A comparison as a config file: its arms, seeds, baseline and training recipe."""

    name: str
    path: Path
    activations: list[str]
    seeds: int
    baseline: str | None
    train: TrainConfig


def named_recipes() -> list[str]:
    """Names of the shipped comparison recipes (``recipes/*.toml`` with a ``[compare]`` table)."""
    return sorted(p.stem for p in RECIPE_FOLDER.glob("*.toml") if "[compare]" in p.read_text())


def load_named_recipe(name: str, preset: str | None = None) -> NamedRecipe:
    """``recipes/<name>.toml`` (or the file `name`); `preset` (``--preset``) replaces the recipe's preset."""
    path = Path(name) if name.endswith(".toml") else RECIPE_FOLDER / f"{name}.toml"
    if not path.is_file():
        raise UserError(f"unknown comparison recipe {name!r}; shipped recipes: {', '.join(named_recipes())}")
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"recipe {path} is not valid TOML: {exc}") from None
    table = data.pop("compare", None)
    if not isinstance(table, dict):
        raise UserError(f"recipe {path} has no [compare] table (activations, seeds, baseline, base)")
    unknown = sorted(set(table) - {"activations", "seeds", "baseline", "base"})
    if unknown:
        raise UserError(f"recipe {path}: unknown key(s) compare.{', compare.'.join(unknown)}")
    activations, seeds = table.get("activations"), table.get("seeds", 1)
    if not isinstance(activations, list) or not activations:
        raise UserError(f"recipe {path}: compare.activations must be a non-empty list of arms")
    if not isinstance(seeds, int) or seeds < 1:
        raise UserError(f"recipe {path}: compare.seeds must be an integer >= 1, got {seeds!r}")
    train = load_config(RECIPE_FOLDER / table.get("base", "cpu.toml"), preset=preset or data.pop("preset", None))
    data.pop("preset", None)
    apply_dict(train, data, where=str(path))
    train.validate()
    baseline = table.get("baseline")
    return NamedRecipe(path.stem, path, [str(a) for a in activations], seeds, baseline, train)


def build_run_config(
    cfg: CompareConfig, recipe: TrainConfig, activation: str | Arm, seed: int, data_path: Path, vocab: int
) -> TrainConfig:
    """The TrainConfig of one run: `recipe` with this run's settings, then ``cfg.overrides``.

    activation: an arm (``polynorm``, ``polynorm:order=2``; see `polycom.compare.arms`).
    ``--steps`` replaces the recipe's steps; the log interval is capped at the steps, the evaluation interval
    at a fifth of them and the warmup at a tenth (each at least 1), so a short run still draws a validation
    curve (about 5 points), evaluates at its end and decays its rate. The recipes' own step counts are
    multiples of 5 x their evaluation interval or more, so a comparison without --steps keeps the recipe's.
    """
    arm = activation if isinstance(activation, Arm) else parse_arm(activation)
    steps = cfg.steps if cfg.steps is not None else recipe.train.steps
    run_cfg = replace(
        recipe,
        model=replace(recipe.model, vocab_size=vocab, **arm.model_fields()),
        data=replace(recipe.data, path=str(data_path)),
        optim=replace(recipe.optim, warmup_steps=min(recipe.optim.warmup_steps, max(1, steps // 10))),
        train=replace(
            recipe.train,
            steps=steps,
            seed=seed,
            eval_interval=min(recipe.train.eval_interval, max(1, steps // 5)),
            log_interval=min(recipe.train.log_interval, steps),
            device=cfg.device,
        ),
        parallel=replace(recipe.parallel),
    )
    run_cfg = load_config(base=run_cfg, overrides=list(cfg.overrides))  # validates
    if run_cfg.model.activation != arm.activation:
        raise UserError("--model.activation cannot be overridden in a comparison; use --activations")
    if any(getattr(run_cfg.model, k) != v for k, v in arm.model_fields().items()):
        raise UserError(f"an override changes the options of arm {arm.label!r}; give them in the arm instead")
    return run_cfg


def resolve_comparison(cfg: CompareConfig, device: torch.device) -> tuple[CompareConfig, TrainConfig, list[Arm]]:
    """Fill what `cfg` leaves open from its named recipe (or the defaults); returns (cfg, recipe, arms).

    The returned cfg names its activations (arm labels), seeds and baseline explicitly.
    """
    from polycom.compare.arms import parse_arms
    from polycom.compare.config import baseline_activation, default_activations

    named = load_named_recipe(cfg.recipe, cfg.preset) if cfg.recipe else None
    recipe = named.train if named else load_recipe(device, cfg.preset)
    texts = cfg.activations if cfg.activations is not None else (named.activations if named else default_activations())
    arms = parse_arms(list(texts))
    seeds = cfg.seeds if cfg.seeds is not None else (named.seeds if named else 1)
    if seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {seeds}")
    labels = [a.label for a in arms]
    baseline = None
    if cfg.baseline is not None:  # --baseline must name an arm
        baseline = parse_arm(cfg.baseline).label
        if baseline not in labels:
            raise UserError(f"baseline {baseline!r} is not one of the arms: {', '.join(labels)}")
    elif named and named.baseline and parse_arm(named.baseline).label in labels:  # --activations may drop it
        baseline = parse_arm(named.baseline).label
    resolved = replace(cfg, activations=labels, seeds=seeds, baseline=baseline or baseline_activation(labels))
    return resolved, recipe, arms
