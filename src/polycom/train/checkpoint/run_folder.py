"""The one loader of a run folder (what `polycom train` writes), for generate, compare, eval, analysis, export.

    if is_run_folder(path):
        run = load_run(path, device="cpu", step=None)   # latest checkpoint, or `step`
        run.model, run.model_config, run.tokenizer, run.config, run.checkpoint

A run folder holds ``config.json`` (the run config: a JSON object with a ``model`` section; a Hugging
Face ``config.json`` has a ``model_type`` instead), ``run.json``, ``tokenizer/`` and ``checkpoints/``
(layout.py). A folder with ``run.json`` or ``checkpoints/`` but no ``config.json`` also counts as a
run folder, so that loading it fails with the reason (no config.json) rather than "not a model".

``safe=True`` (CLI ``--safe``) reads only files that cannot run code when loaded: single-file
checkpoints (``torch.load(weights_only=True)`` after their checksum) and JSON; a sharded (DCP)
checkpoint is refused, because DCP unpickles its ``.metadata`` with no restriction (export it with
``polycom export --checkpoint`` on a machine that trusts it). Without ``safe`` a sharded checkpoint
loads: open sharded checkpoints only from a source you trust.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from polycom.errors import UserError
from polycom.train.checkpoint.layout import find_checkpoint
from polycom.train.checkpoint.single_file import load_checkpoint
from polycom.utils.paths import existing_folder

__all__ = ["LoadedRun", "is_run_folder", "load_model_weights", "load_run", "read_run_config"]


class LoadedRun(NamedTuple):
    """A run's model (eval mode, on the requested device) with its configs, tokenizer and checkpoint."""

    model: nn.Module
    model_config: Any  # polycom.models.ModelConfig
    tokenizer: Any  # polycom.data.tokenizers tokenizer: encode / decode / vocab_size / eos_id
    config: dict[str, Any]  # the run's config.json
    checkpoint: Path


def _run_config_or_none(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def is_run_folder(path: str | Path) -> bool:
    """True for a polycom run folder (see module docstring); False for a Hugging Face folder or anything else."""
    folder = Path(path)
    if not folder.is_dir():
        return False
    config_file = folder / "config.json"
    if config_file.is_file():
        data = _run_config_or_none(config_file)
        return data is not None and "model" in data and "model_type" not in data
    return (folder / "run.json").is_file() or (folder / "checkpoints").is_dir()


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's config.json as a dict; UserError when it is missing."""
    path = existing_folder(run_dir, "run folder") / "config.json"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a polycom run folder (no config.json)")
    return json.loads(path.read_text())


def load_model_weights(path: Path, model: nn.Module, *, safe: bool = False) -> None:
    """Load the model part of checkpoint `path` (a single file, or a DCP folder resharded onto this process).

    safe: refuse a DCP folder (its ``.metadata`` is a pickle DCP loads without restriction).
    """
    if path.is_dir() and safe:
        raise UserError(
            f"{path} is a sharded checkpoint: its .metadata is a pickle that torch loads with no restriction, "
            "so it is refused in safe mode; on a machine that trusts it run `polycom export --checkpoint "
            f"{path} --out model.safetensors`, or load it without --safe if you trust its source"
        )
    if path.is_dir():
        from polycom.distributed.runtime import DistContext
        from polycom.train.checkpoint.sharded import load_sharded

        load_sharded(path, model, None, DistContext())
    else:
        model.load_state_dict(load_checkpoint(path, map_location="cpu")["model"])


def load_run(
    run_dir: str | Path, device: str | torch.device = "cpu", step: int | None = None, *, safe: bool = False
) -> LoadedRun:
    """The model of a run folder from its latest checkpoint (or `step`), in eval mode on `device`.

    The tokenizer is the run's ``tokenizer/`` folder, or the byte tokenizer when the run has none.
    safe: only files that cannot run code when read (see module docstring).
    """
    from polycom.data.tokenizers import load_tokenizer
    from polycom.models import ModelConfig, build_model

    run_dir = Path(run_dir)
    path = find_checkpoint(run_dir, step)
    config = read_run_config(run_dir)
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise UserError(f"{run_dir}/config.json has no 'model' section; it is not a polycom run config")
    model_config = ModelConfig.from_dict(config["model"])
    model = build_model(model_config)
    load_model_weights(path, model, safe=safe)
    model.to(device).eval()
    tok_dir = run_dir / "tokenizer"
    tokenizer = load_tokenizer(tok_dir if tok_dir.is_dir() else "byte")
    return LoadedRun(model, model_config, tokenizer, config, path)
