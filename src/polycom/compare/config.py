"""`CompareConfig`: what `polycom compare` is asked to run (the CLI flags map one to one)."""

from __future__ import annotations

from dataclasses import dataclass, field

from polycom.modules.activations import DEFAULT_ACTIVATIONS

# The report's reference activation when it is compared; else the first activation listed.
BASELINE = "swiglu"


@dataclass
class CompareConfig:
    """What `polycom compare` runs.

    activations: arms, ``name[:option=value...]`` (`polycom.compare.arms`); None -> the recipe's, else
        `DEFAULT_ACTIVATIONS`. `swiglu` is the report's baseline when listed, else the first arm.
    seeds: runs per arm (seed 0..seeds-1); >= 2 gives std and paired tests; None -> the recipe's, else 1.
    recipe: a named comparison recipe (``recipes/<name>.toml`` or a path); None -> the device's recipe.
    baseline: the arm the others are compared with; None -> the recipe's, else the rule above.
    preset: model preset; None -> the recipe's (`tiny` on CPU, `small` on GPU). steps: None -> the recipe's.
    data: "embedded", a raw source (file/folder/hf:NAME) or a prepared data folder. tokenizer: for raw sources.
    overrides: extra ``--section.key=value`` applied to every run (e.g. ``--model.d_model=256``).
    sample_prompt: the text the report's samples continue (``--prompt``); None -> the first line of a
        validation document (`polycom.compare.runner.validation_prompt`).
    """

    out: str
    activations: list[str] | None = None
    seeds: int | None = None
    recipe: str | None = None
    baseline: str | None = None
    preset: str | None = None
    steps: int | None = None
    data: str = "embedded"
    tokenizer: str = "byte"
    device: str = "auto"
    overrides: list[str] = field(default_factory=list)
    sample_prompt: str | None = None
    sample_tokens: int = 200
    overwrite: bool = False
    resume: bool = False


def baseline_activation(activations: list[str]) -> str:
    """`BASELINE` when it is among `activations`, else the first of them."""
    return BASELINE if BASELINE in activations else activations[0]


def default_activations() -> list[str]:
    return list(DEFAULT_ACTIVATIONS)
