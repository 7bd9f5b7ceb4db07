"""`CompareConfig`: what `polycom compare` is asked to run (the CLI flags map one to one)."""

from __future__ import annotations

from dataclasses import dataclass, field

from polycom.modules.activations import DEFAULT_ACTIVATIONS

# The report's reference activation when it is compared; else the first activation listed.
BASELINE = "swiglu"


@dataclass
class CompareConfig:
    """What `polycom compare` runs.

    activations: registry names; `swiglu` is the report's baseline when listed, else the first activation.
    seeds: runs per activation (seed 0..seeds-1); >= 2 gives std and Welch t-tests.
    preset: model preset; None -> the recipe's (`tiny` on CPU, `small` on GPU). steps: None -> the recipe's.
    data: "embedded", a raw source (file/folder/hf:NAME) or a prepared data folder. tokenizer: for raw sources.
    overrides: extra ``--section.key=value`` applied to every run (e.g. ``--model.d_model=256``).
    """

    out: str
    activations: list[str] = field(default_factory=lambda: list(DEFAULT_ACTIVATIONS))
    seeds: int = 1
    preset: str | None = None
    steps: int | None = None
    data: str = "embedded"
    tokenizer: str = "byte"
    device: str = "auto"
    overrides: list[str] = field(default_factory=list)
    sample_prompt: str = "ROMEO.\n"
    sample_tokens: int = 200
    overwrite: bool = False
    resume: bool = False


def baseline_activation(activations: list[str]) -> str:
    """`BASELINE` when it is among `activations`, else the first of them."""
    return BASELINE if BASELINE in activations else activations[0]
