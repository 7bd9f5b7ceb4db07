"""Saving and reloading models changed by `polycom.hf.convert`.

Every conversion is recorded in the config as ``polycom_conversion``: activation, mode, order, eps,
the original value of the activation field, and the history of conversions. Then:

* when the config field that names the MLP activation can express the result, it is set, and the
  plain ``AutoModelForCausalLM.from_pretrained`` rebuilds the model after ``import polycom.hf``. The
  field is found, not assumed: each string field whose value is a transformers activation name
  (``hidden_act``, ``activation_function``, ...) is tried on a meta-device copy of the model and used
  when it turns exactly the converted MLPs into PolyCom and reproduces every parameter shape
  (``replace`` with the default order). A `PolyComForCausalLM` gets its native ``activation`` /
  ``activation_order`` / ``intermediate_size`` fields set instead (both modes);
* otherwise (``ungated`` on a gated model, a non-default order) the field is set to the guard name
  ``polycom_converted``: building the model with the Auto API raises an error saying to call
  `load_converted`, which rebuilds the original architecture with the recorded conversions replayed
  in its constructor and loads the weights through transformers' own loader (checkpoint key
  renamings, tied weights; missing or unexpected weights are an error).
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from polycom.errors import UserError
from polycom.hf.activations import GUARD_ACTIVATION, register_transformers_activations
from polycom.modules.polycom import PolyNorm, PolyReLU
from polycom.utils.atomic import replace_folder

if TYPE_CHECKING:
    from polycom.hf.convert import ConversionReport

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
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return  # a bare nn.Module: nothing to record
    previous = getattr(config, CONVERSION_KEY, None)
    original = dict(previous["original_activation"]) if previous else {}
    target = _shape_map(model)
    expressible = report.order == DEFAULT_ORDER and eps == DEFAULT_EPS and not previous
    if report.mode == "ungated" and any(c.kind == "gated" for c in report.changes):
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
            "original_activation": original,
            "history": ([*previous["history"]] if previous else [])
            + [
                {
                    "activation": report.activation,
                    "mode": report.mode,
                    "order": report.order,
                    "eps": eps if report.activation == "polynorm" else None,
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
        return isinstance(getattr(model.get_submodule(name), attr, None), (PolyNorm, PolyReLU))
    except AttributeError:
        return False


def load_converted(path: str | Path, *, dtype: torch.dtype | str | None = None) -> nn.Module:
    """Load a model folder saved after `convert` (any mode), re-applying the recorded conversion.

    The original architecture class (from ``config.json``, activation fields restored from
    ``config.polycom_conversion``) is subclassed so that its ``__init__`` replays the recorded
    conversions; that subclass's ``from_pretrained`` then loads the weights through transformers' own
    loader (key renamings, tied weights, dtype), which reports any missing or unexpected weight.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from polycom.hf.convert import convert

    register_transformers_activations()
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} is not a model folder (no config.json)")
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    record = getattr(config, CONVERSION_KEY, None)
    if not record:
        raise UserError(
            f"{folder} holds no polycom conversion record; load it with AutoModelForCausalLM.from_pretrained"
        )
    for key, value in record["original_activation"].items():
        setattr(config, key, value)
    delattr(config, CONVERSION_KEY)
    base_cls = AutoModelForCausalLM._model_mapping[type(config)]
    # Same name and module as the base class: transformers looks up its checkpoint key renamings
    # (e.g. GPT-NeoX embed_out <-> lm_head) by class name, and skips them for "custom code" classes.
    replayed = type(
        base_cls.__name__,
        (base_cls,),
        {"_polycom_base": base_cls, "_polycom_replay": record["history"], "__module__": base_cls.__module__},
    )

    def __init__(self, config, *args, **kwargs):  # noqa: N807
        base_cls.__init__(self, config, *args, **kwargs)
        for step in type(self)._polycom_replay:
            convert(self, step["activation"], step["mode"], order=step["order"], eps=step["eps"])

    replayed.__init__ = __init__
    kwargs = {"dtype": dtype} if dtype is not None else {}
    model, info = replayed.from_pretrained(
        str(folder), config=config, local_files_only=True, output_loading_info=True, **kwargs
    )
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if problems:
        raise UserError(f"weights in {folder} do not match the converted architecture: {problems}")
    model.eval()
    return model


# ---------------------------------------------------------------------------------------------
# folders (CLI helpers)


def load_model_folder(path: str | Path):
    """(model, tokenizer | None) from a local Hugging Face causal-LM folder; clear errors for non-model folders."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserError(f"model folder {folder} not found")
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} is not a Hugging Face model folder (no config.json)")
    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise UserError(f"{folder}/config.json is not a transformers config: {exc}") from None
    if getattr(config, CONVERSION_KEY, None):
        model = load_converted(folder)
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)
        except OSError as exc:
            raise UserError(f"could not load model weights from {folder}: {exc}") from None
    tokenizer = None
    if (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return model, tokenizer


def save_converted(model: nn.Module, tokenizer, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """save_pretrained (safetensors) model and tokenizer into `out_dir`, atomically (temp folder + rename)."""
    out = Path(out_dir).expanduser()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        replace_folder(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
