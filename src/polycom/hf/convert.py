"""Put PolyCom activations into an existing transformers model: ``convert(model, activation, mode)``.

MLPs are found by structure (`polycom.hf.mlp_finder`): gated (Llama family), plain (GPT family),
fused gate_up (Phi-3) and stacked MoE experts (transformers 5 OLMoE, Mixtral, Qwen2-MoE, Qwen3-MoE).
Modes:

* ``replace``: swap the activation module of every MLP in place, keeping all weights. A gated MLP
  (separate or fused gate/up, or gated experts) then computes ``down(Poly(gate(x)) * up(x))`` (the
  gated PolyCom form), a plain one ``fc2(Poly(fc1(x)))``. Each MLP gets its own coefficients (per
  layer, as in the paper); a block of stacked experts gets one coefficient set shared by its experts
  (the paper's MoE design: the official OLMoE code installs one activation per block), or one per
  expert with ``per_expert=True`` (then the block becomes a `polycom.hf.experts.StackedExperts`
  holding the same weight tensors).
* ``ungated``: rewrite every gated MLP into a plain PolyCom MLP ``down(Poly(up(x)))`` at the
  parameter-matched width h' = 3h/2 (3 d h gated weights = 2 d h' plain weights), with fresh
  weights (normal, std = config.initializer_range) for pretraining from scratch. Stacked gated
  experts become plain stacked experts ``up_proj`` (E, h', d), ``down_proj`` (E, d, h') (same
  parameter count, still one stacked tensor pair, so transformers' fast expert paths still apply).
  Plain MLPs only get their activation swapped, as in ``replace``.

The router, shared-expert gates, attention and norms are never touched. The conversion is recorded in
the model's config (`polycom.hf.conversion_record`) so that it can be saved and reloaded; see
`polycom.hf.persistence` (plain ``from_pretrained`` where the config can express it, else
`load_converted`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from polycom.errors import UserError
from polycom.hf.activations import POLYCOM_HF_ACTIVATIONS, register_transformers_activations
from polycom.hf.conversion_record import CONVERSION_KEY, DEFAULT_EPS, DEFAULT_ORDER, record_conversion
from polycom.hf.experts import StackedExperts
from polycom.hf.mlp_finder import FoundMLP, find_mlps
from polycom.hf.report import ConversionReport, MLPChange
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
    "matched_plain_width",
]


@dataclass(frozen=True)
class _ActivationSpec:
    """What to build for every MLP: activation name, order, eps, one coefficient set per expert or not."""

    activation: str
    order: int
    eps: float
    per_expert: bool


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


def _new_activation(found: FoundMLP, spec: _ActivationSpec, gated_call: bool = False) -> nn.Module:
    """The PolyCom module(s) for one block: one module, or an nn.ModuleList with one per expert."""
    ref = next(iter(found.module.parameters()), None)
    device = ref.device if ref is not None else None  # coefficients stay fp32 (the ops compute in fp32)
    if found.is_experts and spec.per_expert:
        return nn.ModuleList(
            _build_activation(spec.activation, spec.order, spec.eps).to(device=device) for _ in range(found.num_experts)
        )
    return _build_activation(spec.activation, spec.order, spec.eps, gated_call=gated_call).to(device=device)


def _convert_dense(model: nn.Module, found: FoundMLP, spec: _ActivationSpec, mode: str) -> tuple[str, int, int]:
    """Swap the activation or (ungated, gated MLP) rewrite the MLP; returns (action, hidden after, params after)."""
    mlp = found.module
    if mode == "ungated" and found.is_gated:
        new_mlp = _ungated_mlp(found, _new_activation(found, spec), _init_std(model))
        _set_submodule(model, found.name, new_mlp)
        return "rewritten as plain PolyCom MLP", new_mlp.hidden_size, _num_params(new_mlp)
    # polycom's own gated MLPs call act(gate, up): a swapped-in activation must take both
    gated_call = bool(getattr(getattr(mlp, found.act_attr), "gated", False))
    setattr(mlp, found.act_attr, _new_activation(found, spec, gated_call=gated_call))
    return "activation replaced", found.hidden, _num_params(mlp)


def _convert_experts(model: nn.Module, found: FoundMLP, spec: _ActivationSpec, mode: str) -> tuple[str, int, int]:
    """Stacked experts: swap the shared activation, or build a `StackedExperts` (per-expert / ungated)."""
    module = found.module
    act = _new_activation(found, spec)
    rewrite = mode == "ungated" and found.is_gated
    if not rewrite and not spec.per_expert:
        setattr(module, found.act_attr, act)  # the stock experts class keeps its fast stacked paths
        return "activation replaced", found.hidden, _num_params(module)
    config = getattr(module, "config", None) or getattr(model, "config", None)
    if rewrite:
        new = _ungated_experts(found, act, _init_std(model), config)
        action = "rewritten as plain PolyCom experts"
    else:
        _check_stock_layout(found)
        in_name, out_name = found.linears
        new = StackedExperts(
            config, getattr(module, in_name), getattr(module, out_name), act, gated=found.kind == "experts"
        )
        action = "activation replaced (per-expert coefficients)"
    _set_submodule(model, found.name, new)
    return action, new.intermediate_dim, _num_params(new)


def _check_stock_layout(found: FoundMLP) -> None:
    module = found.module
    if getattr(module, "is_transposed", False) or not getattr(module, "is_concatenated", True):
        raise UserError(
            f"{found.name}: per-expert coefficients need experts stored as (E, 2h, d) with gate and up concatenated; "
            "this block uses another layout: convert with shared coefficients (per_expert=False)"
        )


def _ungated_experts(found: FoundMLP, act: nn.Module, std: float, config) -> StackedExperts:
    """Plain PolyCom experts replacing gated ones: per-expert width 3h/2, fresh normal(0, std) stacked weights."""
    ref = next(iter(found.module.parameters()))
    e, d, h = found.num_experts, found.d_model, matched_plain_width(found.hidden)
    up = nn.Parameter(torch.empty(e, h, d, device=ref.device, dtype=ref.dtype).normal_(0.0, std))
    down = nn.Parameter(torch.empty(e, d, h, device=ref.device, dtype=ref.dtype).normal_(0.0, std))
    return StackedExperts(config, up, down, act, gated=False)


def convert(
    model: nn.Module,
    activation: str = "polynorm",
    mode: str = "replace",
    *,
    order: int = DEFAULT_ORDER,
    eps: float | None = None,
    per_expert: bool = False,
) -> ConversionReport:
    """Convert every MLP of `model` in place to PolyCom (`activation` "polynorm" or "polyrelu").

    Stacked MoE experts get one coefficient set per expert block, shared by its experts (the paper's
    design), or one per expert with ``per_expert=True``. Returns a `ConversionReport`. Raises
    ValueError for an unknown activation or mode and `UserError` when the model has no recognisable
    MLP. See the module docstring for the modes and for how the converted model is saved and reloaded.
    """
    activation, mode = _check_args(activation, mode, order, eps)
    spec = _ActivationSpec(activation, order, DEFAULT_EPS if eps is None else float(eps), bool(per_expert))
    register_transformers_activations()
    mlps = find_mlps(model)
    if not mlps:
        raise UserError(
            f"no recognisable MLP in {type(model).__name__}: expected modules holding gate/up/down linear layers "
            "and an activation (Llama family), a fused gate_up and a down layer (Phi-3), two linear layers "
            "d->h, h->d around an activation (GPT family), or stacked MoE experts (E, 2h, d) / (E, d, h)"
        )
    report = ConversionReport(
        activation=activation, mode=mode, order=order, per_expert=spec.per_expert, params_before=_num_params(model)
    )
    for found in mlps:
        old_act = getattr(found.module, found.act_attr)
        params_before = _num_params(found.module)
        if found.is_experts:
            action, hidden_after, params_after = _convert_experts(model, found, spec, mode)
        else:
            action, hidden_after, params_after = _convert_dense(model, found, spec, mode)
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
                num_experts=found.num_experts,
                coefficient_sets=found.num_experts if found.is_experts and spec.per_expert else 1,
            )
        )
    report.params_after = _num_params(model)
    record_conversion(model, report, spec.eps)
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
