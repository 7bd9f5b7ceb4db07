"""Saving and reloading models changed by `polycom.hf.convert`.

Every conversion is recorded in the config as ``polycom_conversion`` (`polycom.hf.conversion_record`).
A folder whose config can express the conversion (``hidden_act="polynorm"`` ...) reloads with the
plain ``AutoModelForCausalLM.from_pretrained`` after ``import polycom.hf``. The others (``ungated`` on
a gated model, a non-default order, per-expert coefficients) carry the guard activation name
``polycom_converted``, so the Auto API refuses them with a message naming `load_converted`, which
rebuilds the original architecture with the recorded conversions replayed in its constructor and
loads the weights through transformers' own loader (checkpoint key renamings, MoE expert
stacking, tied weights; missing or unexpected weights are an error).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn

from polycom.errors import UserError
from polycom.hf.activations import register_transformers_activations
from polycom.hf.conversion_record import CONVERSION_KEY
from polycom.hf.convert import convert
from polycom.utils.atomic import replace_folder, temp_folder_beside
from polycom.utils.hf_folders import hf_load_kwargs, refusing_unsafe_content
from polycom.utils.owned_outputs import check_overwritable, mark_output

__all__ = ["CONVERSION_KEY", "load_converted", "load_model_folder", "read_folder_config", "save_converted"]


def load_converted(
    path: str | Path, *, dtype: torch.dtype | str | None = None, trust_remote_code: bool = False
) -> nn.Module:
    """Load a model folder saved after `convert` (any mode), re-applying the recorded conversion.

    The original architecture class (from ``config.json``, activation fields restored from
    ``config.polycom_conversion``) is subclassed so that its ``__init__`` replays the recorded
    conversions; that subclass's ``from_pretrained`` then loads the weights through transformers' own
    loader (key renamings, tied weights, dtype), which reports any missing or unexpected weight.
    Code from the folder runs only with `trust_remote_code` (`polycom.utils.hf_folders`).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    register_transformers_activations()
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} is not a model folder (no config.json)")
    load_kwargs = hf_load_kwargs(trust_remote_code)
    with refusing_unsafe_content(folder):
        config = AutoConfig.from_pretrained(str(folder), **load_kwargs)
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
            convert(
                self,
                step["activation"],
                step["mode"],
                order=step["order"],
                eps=step["eps"],
                per_expert=step.get("per_expert", False),
            )

    replayed.__init__ = __init__
    kwargs = {"dtype": dtype} if dtype is not None else {}
    with refusing_unsafe_content(folder):
        model, info = replayed.from_pretrained(
            str(folder), config=config, output_loading_info=True, **load_kwargs, **kwargs
        )
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if problems:
        raise UserError(f"weights in {folder} do not match the converted architecture: {problems}")
    model.eval()
    return model


# ---------------------------------------------------------------------------------------------
# folders (CLI helpers)


def read_folder_config(folder: Path, *, trust_remote_code: bool = False):
    """The transformers config of the local model folder `folder` (config.json present); a UserError
    naming the folder when config.json is not a transformers config. Code from the folder runs only
    with `trust_remote_code`; pickle content is refused (`polycom.utils.hf_folders`)."""
    from transformers import AutoConfig

    try:
        with refusing_unsafe_content(folder):
            return AutoConfig.from_pretrained(str(folder), **hf_load_kwargs(trust_remote_code))
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{folder}/config.json is not a transformers config: {exc}") from None


def load_model_folder(path: str | Path, *, trust_remote_code: bool = False):
    """(model, tokenizer | None) from a local Hugging Face causal-LM folder; clear errors for non-model folders.

    Code from the folder runs only with `trust_remote_code`; pickle weights that need more than tensors
    are refused (`polycom.utils.hf_folders`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserError(f"model folder {folder} not found")
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} is not a Hugging Face model folder (no config.json)")
    load_kwargs = hf_load_kwargs(trust_remote_code)
    config = read_folder_config(folder, trust_remote_code=trust_remote_code)
    if getattr(config, CONVERSION_KEY, None):
        model = load_converted(folder, trust_remote_code=trust_remote_code)
    else:
        try:
            with refusing_unsafe_content(folder):
                model = AutoModelForCausalLM.from_pretrained(str(folder), **load_kwargs)
        except OSError as exc:
            raise UserError(f"could not load model weights from {folder}: {exc}") from None
    tokenizer = None
    if (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file():
        with refusing_unsafe_content(folder):
            tokenizer = AutoTokenizer.from_pretrained(str(folder), **load_kwargs)
    return model, tokenizer


def save_converted(model: nn.Module, tokenizer, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """save_pretrained (safetensors) model and tokenizer into `out_dir`, atomically (temp folder + rename).

    `overwrite` replaces only a folder an earlier export / conversion wrote (`polycom.utils.owned_outputs`).
    """
    out = Path(out_dir).expanduser()
    check_overwritable(out, overwrite=overwrite)  # an existing folder only when an earlier conversion wrote it
    tmp = temp_folder_beside(out)
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        mark_output(tmp, "polycom convert")
        replace_folder(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
