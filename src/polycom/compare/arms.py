"""The arms of a comparison: an activation from the registry with optional constructor options.

An arm is written ``name[:option=value[:option=value ...]]``, e.g. ``polynorm``, ``polynorm:order=2``,
``polycom:base=silu:composition=2``; values are read as TOML values (``2`` int, ``1e-5`` float, ``true``
bool), anything else as a plain string. The written form, lower-cased, is the arm's label in the report;
its run folders are ``<label with ':' -> '-'>-s<seed>``. ``order`` sets ``model.activation_order`` (exactly
as ``--model.activation_order`` would), every other option goes to ``model.activation_options``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from polycom.errors import UserError, did_you_mean


@dataclass(frozen=True)
class Arm:
    """One arm: `label` as shown in the report, the registry `activation` and its `options`."""

    label: str
    activation: str
    options: dict[str, Any] = field(default_factory=dict)

    def model_fields(self) -> dict[str, Any]:
        """The ``[model]`` keys this arm sets: activation, and activation_order / activation_options if given."""
        fields: dict[str, Any] = {"activation": self.activation}
        rest = {k: v for k, v in self.options.items() if k != "order"}
        if "order" in self.options:
            fields["activation_order"] = self.options["order"]
        if rest:
            fields["activation_options"] = rest
        return fields


def parse_arm(text: str) -> Arm:
    """``"polynorm:order=2"`` -> Arm("polynorm:order=2", "polynorm", {"order": 2}); UserError on bad input."""
    from polycom.modules.activations import activation_names, activation_spec
    from polycom.train.config import parse_value

    parts = [p.strip() for p in str(text).strip().split(":")]
    name = parts[0].lower()
    if name not in activation_names():
        hint = did_you_mean(name, activation_names())
        raise UserError(
            f"unknown activation {parts[0]!r} in arm {text!r}{hint}; available: {', '.join(activation_names())}"
        )
    options: dict[str, Any] = {}
    for part in parts[1:]:
        key, eq, raw = part.partition("=")
        key = key.strip()
        if not eq or not key or not raw.strip():
            raise UserError(f"arm {text!r}: option {part!r} must look like key=value (e.g. polynorm:order=2)")
        if key in options:
            raise UserError(f"arm {text!r}: option {key!r} is given twice")
        options[key] = parse_value(raw.strip())
    try:
        activation_spec(name).check_options(options)
    except TypeError as exc:
        raise UserError(f"arm {text!r}: {exc}") from None
    if "order" in options and (not isinstance(options["order"], int) or options["order"] < 1):
        raise UserError(f"arm {text!r}: order must be an integer >= 1, got {options['order']!r}")
    label = ":".join([name] + [f"{k}={_show(v)}" for k, v in options.items()])
    return Arm(label, name, options)


def parse_arms(texts: list[str]) -> list[Arm]:
    """Arms in the given order; UserError for an empty list or an arm listed twice."""
    arms = [parse_arm(t) for t in texts if str(t).strip()]
    if not arms:
        raise UserError("no activations to compare")
    labels = [a.label for a in arms]
    for label in labels:
        if labels.count(label) > 1:
            raise UserError(f"activation {label!r} is listed twice")
    return arms


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
