"""Loading models to analyse (harness run folders, Hugging Face folders) and their validation tokens.

A folder is a harness run when `polycom.train.checkpoint.is_run_folder` says so (``config.json`` with a
``model`` section, or ``run.json`` / ``checkpoints/``; loaded with `polycom.train.checkpoint.load_run`,
which raises UserError for a folder without a checkpoint), and a Hugging Face folder when it has
``config.json`` with a ``model_type`` (loaded with
`polycom.hf.persistence.load_model_folder` after ``import polycom.hf`` registers the PolyCom classes).

Validation tokens, first match wins: ``--data DIR`` (a prepared data folder: its ``val`` split);
``--text FILE`` (encoded with the model's tokenizer); the run's own prepared data folder (``data.folder``
of its run.json, or ``data.path`` of its config.json, when it still exists: its ``val`` split); the embedded Shakespeare corpus, last 5% of the
text (may overlap a run's training data; the report says which source was used).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from polycom.errors import UserError

__all__ = ["LoadedModel", "load_analysis_model", "validation_tokens"]


@dataclass
class LoadedModel:
    label: str
    kind: str  # "run" | "hf"
    path: str
    model: nn.Module
    tokenizer: object | None
    config: dict


def load_analysis_model(
    path: str | Path,
    label: str | None = None,
    device: str = "cpu",
    *,
    safe: bool = False,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a harness run folder or a Hugging Face model folder (see module docstring).

    safe: a run folder only from files that cannot run code (`polycom.train.checkpoint.load_run`);
    trust_remote_code: let an HF folder run its own code (`polycom.utils.hf_folders`).
    """
    from polycom.train.checkpoint import is_run_folder, load_run

    folder = Path(path).expanduser()
    if not folder.exists():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder; pass a polycom run folder or a Hugging Face model folder")
    label = label or folder.name
    if is_run_folder(folder):
        model, _, tokenizer, config, _ = load_run(folder, device=device, safe=safe)
        config = dict(config)
        header_path = folder / "run.json"
        if header_path.is_file():  # the trainer records the resolved data folder there
            try:
                header_data = json.loads(header_path.read_text()).get("data")
            except json.JSONDecodeError:
                header_data = None
            if isinstance(header_data, dict):
                config["resolved_data"] = header_data
        return LoadedModel(label, "run", str(folder), model.eval(), tokenizer, config)
    cfg_path = folder / "config.json"
    if cfg_path.is_file():
        try:
            hf_config = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{cfg_path} is not valid JSON: {exc}") from None
        if "model_type" in hf_config:
            import polycom.hf  # noqa: F401  (registers the PolyCom classes with transformers' Auto*)
            from polycom.hf.persistence import load_model_folder

            model, tokenizer = load_model_folder(folder, trust_remote_code=trust_remote_code)
            return LoadedModel(label, "hf", str(folder), model.to(device).eval(), tokenizer, {"hf_config": hf_config})
    raise UserError(
        f"{folder} is neither a polycom run folder (config.json with a model section, run.json, checkpoints/) "
        "nor a Hugging Face model folder (config.json with model_type)"
    )


def _encode(tokenizer, text: str) -> list[int]:
    if tokenizer is None:
        raise UserError("the model folder has no tokenizer; pass --data with a prepared data folder instead of text")
    ids = tokenizer.encode(text)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # a transformers BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def _run_data_folder(loaded: LoadedModel) -> Path | None:
    """The run's prepared data folder: run.json data.folder, else config.json data.path (if it still exists)."""
    candidates = []
    resolved = loaded.config.get("resolved_data")
    if isinstance(resolved, dict):
        candidates.append(resolved.get("folder"))
    data = loaded.config.get("data")
    if isinstance(data, dict):
        candidates.append(data.get("path"))
    for value in candidates:
        if value and (Path(value) / "meta.json").is_file():
            return Path(value)
    return None


def validation_tokens(
    loaded: LoadedModel, max_tokens: int, data: str | None = None, text: str | None = None
) -> tuple[np.ndarray, str]:
    """(token ids (n,), description of the source) for `loaded` (see module docstring for the order)."""
    from polycom.data import TokenShards

    if data:
        shards = TokenShards(data)
        return np.asarray(shards.val.tokens[:max_tokens], dtype=np.int64), f"val split of {data}"
    if text:
        path = Path(text).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"text file {path} does not exist")
        ids = _encode(loaded.tokenizer, path.read_text(encoding="utf-8", errors="replace"))
        return np.asarray(ids[:max_tokens], dtype=np.int64), f"text file {path}"
    folder = _run_data_folder(loaded)
    if folder is not None:
        shards = TokenShards(folder)
        return np.asarray(shards.val.tokens[:max_tokens], dtype=np.int64), f"val split of the run's data {folder}"
    from polycom.data import embedded_corpus_text

    corpus = embedded_corpus_text()
    tail = corpus[int(len(corpus) * 0.95) :]
    # Enough characters for max_tokens with any tokenizer (>= 1 char per token for byte/BPE).
    ids = _encode(loaded.tokenizer, tail[: max(4 * max_tokens, 4096)])
    return np.asarray(
        ids[:max_tokens], dtype=np.int64
    ), "embedded Shakespeare corpus, last 5% (may overlap training data)"
