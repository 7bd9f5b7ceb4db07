"""Put PolyCom activations into an existing transformers model: ``convert(model, activation, mode)``.

MLPs are found by structure (`polycom.hf.mlp_finder`). Modes:

* ``replace``: swap the activation module of every MLP in place, keeping all weights. A gated MLP
  then computes ``down(Poly(gate(x)) * up(x))`` (the gated PolyCom form), a plain one
  ``fc2(Poly(fc1(x)))``. Each MLP gets its own coefficients (per layer, as in the paper).
* ``ungated``: rewrite every gated MLP into a plain PolyCom MLP ``down(Poly(up(x)))`` at the
  parameter-matched width h' = 3h/2 (3 d h gated weights = 2 d h' plain weights), with fresh
  weights (normal, std = config.initializer_range) for pretraining from scratch. Plain MLPs only get
  their activation swapped, as in ``replace``.

The conversion is recorded in the model's config so that it can be saved and reloaded; see
`polycom.hf.persistence` (plain ``from_pretrained`` where the config can express it, else
`load_converted`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from polycom.errors import UserError
from polycom.hf.activations import POLYCOM_HF_ACTIVATIONS, register_transformers_activations
from polycom.hf.mlp_finder import FoundMLP, find_mlps
from polycom.hf.persistence import (
    CONVERSION_KEY,
    DEFAULT_EPS,
    DEFAULT_ORDER,
    load_converted,
    load_model_folder,
    record_conversion,
    save_converted,
)
from polycom.modules.mlp import MLP
from polycom.modules.polycom import PolyNorm, PolyNormGated, PolyReLU, PolyReLUGated

CONVERT_MODES = ("replace", "ungated")

__all__ = [
    "CONVERSION_KEY",
    "CONVERT_MODES",
    "ConversionReport",
    "MLPChange",
    "convert",
    "find_mlps",
    "load_converted",
    "load_model_folder",
    "matched_plain_width",
    "save_converted",
]


@dataclass
class MLPChange:
    """One MLP that `convert` changed."""

    name: str  # module path, e.g. "model.layers.0.mlp"
    kind: str  # "gated" or "plain" (the structure found)
    action: str  # "activation replaced" or "rewritten as plain PolyCom MLP"
    old_activation: str  # class name of the activation it had
    activation_attr: str  # attribute that held it (e.g. "act_fn", "act")
    d_model: int
    hidden_before: int
    hidden_after: int
    params_before: int
    params_after: int


@dataclass
class ConversionReport:
    """What `convert` did: per-MLP changes and whole-model parameter counts."""

    activation: str
    mode: str
    order: int
    changes: list[MLPChange] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    config_activation_field: str | None = None  # config field naming the MLP activation, if found
    auto_loadable: bool = False  # True: AutoModelForCausalLM.from_pretrained rebuilds it (after import polycom.hf)

    @property
    def num_changed(self) -> int:
        return len(self.changes)

    def to_dict(self) -> dict:
        return {**asdict(self), "num_changed": self.num_changed}

    def to_markdown(self) -> str:
        lines = [
            f"PolyCom conversion: activation={self.activation} (order {self.order}), mode={self.mode}",
            "",
            "| module | structure | was | action | hidden before -> after | params before -> after |",
            "|---|---|---|---|---|---|",
        ]
        for c in self.changes:
            lines.append(
                f"| {c.name} | {c.kind} | {c.old_activation} | {c.action} | {c.hidden_before} -> {c.hidden_after} "
                f"| {c.params_before:,} -> {c.params_after:,} |"
            )
        delta = self.params_after - self.params_before
        lines += [
            "",
            f"{self.num_changed} MLPs changed; model parameters {self.params_before:,} -> {self.params_after:,} "
            f"({delta:+,})",
            "reload with "
            + (
                "AutoModelForCausalLM.from_pretrained (after `import polycom.hf`)"
                if self.auto_loadable
                else "polycom.hf.load_converted(path)"
            ),
        ]
        return "\n".join(lines)


def _build_activation(activation: str, order: int, eps: float, gated_call: bool = False) -> nn.Module:
    """The PolyCom module; `gated_call`: the MLP calls act(gate, up) (polycom's own gated MLPs) -> gated variant."""
    if activation == "polynorm":
        return PolyNormGated(order=order, eps=eps) if gated_call else PolyNorm(order=order, eps=eps)
    return PolyReLUGated(order=order) if gated_call else PolyReLU(order=order)


def _check_args(activation: str, mode: str, order: int, eps: float | None) -> tuple[str, str]:
    if not isinstance(activation, str) or activation.strip().lower() not in POLYCOM_HF_ACTIVATIONS:
        raise ValueError(
            f"unknown PolyCom activation {activation!r}; choose one of: {', '.join(POLYCOM_HF_ACTIVATIONS)}"
        )
    if mode not in CONVERT_MODES:
        raise ValueError(f"unknown conversion mode {mode!r}; choose one of: {', '.join(CONVERT_MODES)}")
    if not isinstance(order, int) or order < 1:
        raise ValueError(f"order must be a positive integer, got {order!r}")
    if eps is not None and activation.strip().lower() != "polynorm":
        raise ValueError("eps only applies to activation='polynorm'")
    return activation.strip().lower(), mode


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _init_std(model: nn.Module) -> float:
    config = getattr(model, "config", None)
    return float(getattr(config, "initializer_range", None) or 0.02)


def _ungated_mlp(found: FoundMLP, act: nn.Module, std: float) -> MLP:
    """A plain PolyCom MLP replacing a gated one: width 3h/2, fresh normal(0, std) weights."""
    old_params = [p for n, p in found.module.named_parameters() if not n.startswith(found.act_attr + ".")]
    ref = old_params[0]
    has_bias = any(getattr(getattr(found.module, n), "bias", None) is not None for n in found.linears)
    hidden = matched_plain_width(found.hidden)
    new = MLP(found.d_model, act, hidden, bias=has_bias, device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        for lin in (new.up_proj, new.down_proj):
            lin.weight.normal_(0.0, std)
            if lin.bias is not None:
                lin.bias.zero_()
    return new


def convert(
    model: nn.Module,
    activation: str = "polynorm",
    mode: str = "replace",
    *,
    order: int = DEFAULT_ORDER,
    eps: float | None = None,
) -> ConversionReport:
    """Convert every MLP of `model` in place to PolyCom (`activation` "polynorm" or "polyrelu").

    Returns a `ConversionReport`. Raises ValueError for an unknown activation or mode and
    `UserError` when the model has no recognisable MLP. See the module docstring for the modes and
    for how the converted model is saved and reloaded.
    """
    activation, mode = _check_args(activation, mode, order, eps)
    eps_value = DEFAULT_EPS if eps is None else float(eps)
    register_transformers_activations()
    mlps = find_mlps(model)
    if not mlps:
        raise UserError(
            f"no recognisable MLP in {type(model).__name__}: expected modules holding gate/up/down linear layers "
            "and an activation (Llama family) or two linear layers d->h, h->d around an activation (GPT family)"
        )
    report = ConversionReport(activation=activation, mode=mode, order=order, params_before=_num_params(model))
    std = _init_std(model)
    for found in mlps:
        mlp = found.module
        old_act = getattr(mlp, found.act_attr)
        params_before = _num_params(mlp)
        rewrite = mode == "ungated" and found.kind == "gated"
        # polycom's own gated MLPs call act(gate, up): a swapped-in activation must take both
        gated_call = not rewrite and bool(getattr(old_act, "gated", False))
        new_act = _build_activation(activation, order, eps_value, gated_call=gated_call)
        ref = next(iter(mlp.parameters()), None)
        if ref is not None:
            new_act = new_act.to(device=ref.device)  # coefficients stay fp32 (the ops compute in fp32)
        if rewrite:
            new_mlp = _ungated_mlp(found, new_act, std)
            _set_submodule(model, found.name, new_mlp)
            action, hidden_after, params_after = (
                "rewritten as plain PolyCom MLP",
                new_mlp.hidden_size,
                _num_params(new_mlp),
            )
        else:
            setattr(mlp, found.act_attr, new_act)
            action, hidden_after, params_after = "activation replaced", found.hidden, _num_params(mlp)
        report.changes.append(
            MLPChange(
                name=found.name,
                kind=found.kind,
                action=action,
                old_activation=type(old_act).__name__,
                activation_attr=found.act_attr,
                d_model=found.d_model,
                hidden_before=found.hidden,
                hidden_after=hidden_after,
                params_before=params_before,
                params_after=params_after,
            )
        )
    report.params_after = _num_params(model)
    record_conversion(model, report, eps_value)
    return report


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    if not name:
        raise UserError("the model itself is a bare MLP; wrap it in a model before converting")
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def matched_plain_width(gated_hidden: int) -> int:
    """Plain width with the weights of a gated MLP of width `gated_hidden`: 3 d h = 2 d h' -> h' = 3h/2."""
    return (3 * gated_hidden) // 2
