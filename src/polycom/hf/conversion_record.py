"""How a conversion is written into a model's config (``config.polycom_conversion``).

`record_conversion` is called by `polycom.hf.convert` after every conversion. It stores the
activation, mode, order, eps, per-expert flag, the original value of the activation field and the
history of conversions (replayed by `polycom.hf.persistence.load_converted`), and decides how the
saved folder reloads:

* when the config field that names the MLP activation can express the result, it is set, and the
  plain ``AutoModelForCausalLM.from_pretrained`` rebuilds the model after ``import polycom.hf``. The
  field is found, not assumed: each string field whose value is a transformers activation name
  (``hidden_act``, ``activation_function``, ...) is tried on a meta-device copy of the model and used
  when it turns exactly the converted MLPs into PolyCom and reproduces every parameter shape
  (``replace`` with the default order and shared expert coefficients). A `PolyComForCausalLM` gets
  its native ``activation`` / ``activation_order`` / ``intermediate_size`` fields set instead;
* otherwise (``ungated`` on a gated model, a non-default order, per-expert coefficients) the field is
  set to the guard name ``polycom_converted``: building the model with the Auto API raises an error
  saying to call `load_converted`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from polycom.hf.activations import GUARD_ACTIVATION
from polycom.hf.report import GATED_KINDS, ConversionReport
from polycom.modules.polycom import is_polycom_module

CONVERSION_KEY = "polycom_conversion"
DEFAULT_ORDER = 3
DEFAULT_EPS = 1e-6


def _activation_field_candidates(config) -> list[str]:
    from transformers import activations

    names = set(dict.keys(activations.ACT2CLS))
    out = []
    for key, value in config.to_dict().items():
        if isinstance(value, str) and value in names:
            out.append(key)
    return out


def _meta_model(model: nn.Module, config) -> nn.Module | None:
    """`type(model)(config)` built on the meta device (no memory, no init cost); None if it fails."""
    try:
        with torch.device("meta"):
            return getattr(type(model), "_polycom_base", type(model))(config)
    except Exception:  # a config the class cannot build (e.g. the guard activation) -> not a match
        return None


def _shape_map(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def record_conversion(model: nn.Module, report: ConversionReport, eps: float) -> None:
    """Write ``config.polycom_conversion`` and set the activation field (see the module docstring)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return  # a bare nn.Module: nothing to record
    previous = getattr(config, CONVERSION_KEY, None)
    original = dict(previous["original_activation"]) if previous else {}
    target = _shape_map(model)
    expressible = report.order == DEFAULT_ORDER and eps == DEFAULT_EPS and not previous and not report.per_expert
    if report.mode == "ungated" and any(c.kind in GATED_KINDS for c in report.changes):
        expressible = False
    if getattr(config, "model_type", None) == "polycom" and not previous and _record_polycom_config(model, report):
        return
    for key in _activation_field_candidates(config):
        trial = copy.deepcopy(config)
        setattr(trial, key, report.activation)
        rebuilt = _meta_model(model, trial)
        if rebuilt is None:
            continue
        # does this field drive exactly the activations of the MLPs we changed?
        drives = all(_is_polycom_at(rebuilt, c.name, c.activation_attr) for c in report.changes)
        if not drives:
            continue
        report.config_activation_field = key
        original.setdefault(key, getattr(config, key))
        if expressible and _shape_map(rebuilt) == target:
            setattr(config, key, report.activation)
            report.auto_loadable = True
        else:
            setattr(config, key, GUARD_ACTIVATION)
        break
    setattr(
        config,
        CONVERSION_KEY,
        {
            "activation": report.activation,
            "mode": report.mode,
            "order": report.order,
            "eps": eps,
            "per_expert": report.per_expert,
            "original_activation": original,
            "history": ([*previous["history"]] if previous else [])
            + [
                {
                    "activation": report.activation,
                    "mode": report.mode,
                    "order": report.order,
                    "eps": eps if report.activation == "polynorm" else None,
                    "per_expert": report.per_expert,
                }
            ],
        },
    )


def _record_polycom_config(model: nn.Module, report: ConversionReport) -> bool:
    """A PolyComForCausalLM says its activation, order and MLP width in its own config: set them natively.

    True when the updated config rebuilds exactly the converted model (then the Auto API reloads it).
    """
    config = model.config
    if config.num_experts > 0 or len({(c.kind, c.hidden_after) for c in report.changes}) != 1:
        return False
    change = report.changes[0]
    gated = change.kind == "gated" and report.mode == "replace"
    trial = copy.deepcopy(config)
    trial.activation = report.activation + ("_glu" if gated else "")
    trial.activation_order = report.order
    trial.intermediate_size = change.hidden_after
    rebuilt = _meta_model(model, trial)
    if rebuilt is None or _shape_map(rebuilt) != _shape_map(model):
        return False
    config.activation, config.activation_order = trial.activation, trial.activation_order
    config.intermediate_size = trial.intermediate_size
    report.config_activation_field = "activation"
    report.auto_loadable = True
    return True


def _is_polycom_at(model: nn.Module, name: str, attr: str) -> bool:
    try:
        return is_polycom_module(getattr(model.get_submodule(name), attr, None))
    except AttributeError:
        return False
