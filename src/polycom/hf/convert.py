"""Put PolyCom activations into an existing transformers model: ``convert(model, activation, mode)``.

MLPs are found by structure, not by model name. A module is an MLP when its direct children are

* gated (Llama family): three linear layers, two ``d -> h`` (gate, up) and one ``h -> d`` (down),
  plus one activation module: ``down(act(gate(x)) * up(x))``;
* plain (GPT family): two linear layers ``d -> h`` and ``h -> d`` around one activation module,
  whatever their names (``fc1/fc2``, ``c_fc/c_proj``, ``dense_h_to_4h/dense_4h_to_h``, ...).

"Linear layers" are ``nn.Linear`` and transformers' GPT-2 ``Conv1D`` (weight stored (in, out));
other children may only be dropouts or identities.

Modes:

* ``replace``: swap the activation module of every MLP in place, keeping all weights. A gated MLP
  then computes ``down(Poly(gate(x)) * up(x))`` (the gated PolyCom form), a plain one
  ``fc2(Poly(fc1(x)))``. Each MLP gets its own coefficients (per-layer, as in the paper).
* ``ungated``: rewrite every gated MLP into a plain PolyCom MLP ``down(Poly(up(x)))`` at the
  parameter-matched width h' = 3h/2 (3 d h gated weights = 2 d h' plain weights), with fresh
  weights (normal, std = config.initializer_range) for pretraining from scratch. Plain MLPs only get
  their activation swapped, as in ``replace``.

How a converted model is rebuilt by ``from_pretrained``: the conversion is recorded as
``config.polycom_conversion``. When the config field that names the MLP activation (``hidden_act``,
``activation_function``, ...) can express the result (``replace`` with the default order), that
field is set to the registered name (``polynorm`` / ``polyrelu``) and plain
``AutoModelForCausalLM.from_pretrained`` rebuilds it after ``import polycom.hf``. Otherwise the field
is set to the guard name ``polycom_converted`` (building it with the Auto API raises an error that
says what to do) and `load_converted` rebuilds the model: original architecture from the config,
the recorded conversion re-applied, then the saved weights loaded strictly.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from polycom.errors import UserError
from polycom.hf.activations import GUARD_ACTIVATION, POLYCOM_HF_ACTIVATIONS, register_transformers_activations
from polycom.modules.mlp import MLP
from polycom.modules.polycom import PolyNorm, PolyNormGated, PolyReLU, PolyReLUGated

CONVERT_MODES = ("replace", "ungated")
CONVERSION_KEY = "polycom_conversion"
DEFAULT_ORDER = 3
DEFAULT_EPS = 1e-6


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


# ---------------------------------------------------------------------------------------------
# structure detection


def _linear_shape(module: nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) of an nn.Linear or a GPT-2 style Conv1D (weight (in, out)); else None."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf") and isinstance(weight, torch.Tensor):
        return int(weight.shape[0]), int(module.nf)
    return None


def _activation_classes() -> tuple[type, ...]:
    from transformers import activations

    classes: set[type] = {PolyNorm, PolyReLU, PolyNormGated, PolyReLUGated}
    for entry in dict.values(activations.ACT2CLS):
        cls = entry[0] if isinstance(entry, tuple) else entry
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            classes.add(cls)
    for name in nn.modules.activation.__all__:
        cls = getattr(nn.modules.activation, name)
        if name not in ("MultiheadAttention", "Softmax", "Softmin", "LogSoftmax", "Softmax2d"):
            classes.add(cls)
    return tuple(classes)


_PASSIVE = (nn.Dropout, nn.Identity)


@dataclass
class _FoundMLP:
    name: str
    module: nn.Module
    kind: str  # "gated" | "plain"
    act_attr: str
    d_model: int
    hidden: int
    linears: dict[str, tuple[int, int]]


def _match_mlp(name: str, module: nn.Module, act_classes: tuple[type, ...]) -> _FoundMLP | None:
    linears: dict[str, tuple[int, int]] = {}
    acts: list[str] = []
    for child_name, child in module.named_children():
        shape = _linear_shape(child)
        if shape is not None:
            linears[child_name] = shape
        elif isinstance(child, act_classes) or (
            "act" in child_name.lower() and not any(True for _ in child.children()) and not isinstance(child, _PASSIVE)
        ):
            acts.append(child_name)
        elif not isinstance(child, _PASSIVE):
            return None  # something else inside (a norm, attention, a sub-block): not a bare MLP
    if len(acts) != 1:
        return None
    shapes = list(linears.values())
    if len(shapes) == 2:
        (a_in, a_out), (b_in, b_out) = shapes
        if a_in == b_out and a_out == b_in and a_in != a_out:
            # the input projection is the one registered first (fc1 before fc2, c_fc before c_proj)
            return _FoundMLP(name, module, "plain", acts[0], a_in, a_out, linears)
        return None
    if len(shapes) == 3:
        ups = [s for s in shapes if shapes.count(s) == 2]
        downs = [s for s in shapes if shapes.count(s) == 1]
        if len(ups) == 2 and len(downs) == 1:
            d, h = ups[0]
            if downs[0] == (h, d) and d != h:
                return _FoundMLP(name, module, "gated", acts[0], d, h, linears)
    return None


def find_mlps(model: nn.Module) -> list[_FoundMLP]:
    """All MLP blocks of `model` recognised by structure (see module docstring), outermost first."""
    act_classes = _activation_classes()
    found: list[_FoundMLP] = []
    claimed: list[str] = []
    for name, module in model.named_modules():
        if any(name == c or name.startswith(c + ".") for c in claimed):
            continue
        match = _match_mlp(name, module, act_classes)
        if match is not None:
            found.append(match)
            claimed.append(name)
    return found


# ---------------------------------------------------------------------------------------------
# conversion


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


def _ungated_mlp(found: _FoundMLP, act: nn.Module, std: float) -> MLP:
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
    _record_in_config(model, report, eps_value)
    return report


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    if not name:
        raise UserError("the model itself is a bare MLP; wrap it in a model before converting")
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


# ---------------------------------------------------------------------------------------------
# recording in the config, reloading


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


def _record_in_config(model: nn.Module, report: ConversionReport, eps: float) -> None:
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


def matched_plain_width(gated_hidden: int) -> int:
    """Plain width with the weights of a gated MLP of width `gated_hidden`: 3 d h = 2 d h' -> h' = 3h/2."""
    return (3 * gated_hidden) // 2


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
    import os
    import shutil
    import tempfile

    out = Path(out_dir).expanduser()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
