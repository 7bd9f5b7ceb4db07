"""Sharded checkpoints (multi-process runs): torch.distributed.checkpoint ("DCP") folders.

    save_sharded(CKPT, model, optimizer, extra_state, ctx)     # every rank; CKPT.tmp, then renamed
    extra_state = load_sharded(CKPT, model, optimizer, ctx)    # every rank, after parallelize

A checkpoint is a folder:

    CKPT/
      .metadata, __0_0.distcp, ...   DCP shards: {"model": model state, "optim": optimizer state}
      polycom_meta.json              format, world size / tp it was saved with, model config, and the
                                     global name -> (shape, dtype) of every model tensor
      extra_state.json (+ .safetensors)  the trainer's `extra_state` (step, RNG, data position, ...) from
                                     rank 0, without pickle (extra_state.py)
      checksums.json                 size and sha256 of every file above, written last (integrity.py)

Every rank writes its own shards (a multi-node run needs a shared filesystem). The folder is written
as CKPT.tmp and renamed once complete, so a crash never leaves a half-written CKPT. DCP reshards on
load, so a checkpoint saved with one layout (e.g. 2 ranks FSDP2) resumes with another (4 ranks
FSDP2 x TP, or a single process). Before loading, every rank compares the model in the folder with
the model in memory and raises UserError naming the differences, so an incompatible checkpoint fails
on every rank instead of hanging.

Integrity: once every rank has written its shards, the ranks hash the files (each a share of them) and
rank 0 writes ``checksums.json``; loading verifies every listed file first (sizes, then sha256), so a
corrupt, truncated or missing shard is a UserError naming the file, on every rank, before anything is
read into the model. Checkpoints from before ``checksums.json`` load with a one-line warning.

Trust: DCP's ``.metadata`` is a pickle that torch unpickles with no restriction, so loading a sharded
checkpoint can run code planted in it; load only sharded checkpoints from a source you trust. To share
a model, export it (`export_safetensors`); `polycom.train.checkpoint.load_run(..., safe=True)` refuses
sharded checkpoints and reads only ``weights_only`` / safetensors files.

`export_safetensors(CKPT, OUT)` turns the model part into one `.safetensors` file with the plain
state-dict names of docs/models.md, for the HF/eval tools; it needs no process group
(``polycom export --checkpoint CKPT --out OUT.safetensors``).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from polycom.distributed.runtime import DistContext
from polycom.errors import UserError
from polycom.train.checkpoint.extra_state import read_extra_state, write_extra_state
from polycom.train.checkpoint.integrity import CHECKSUMS_FILE, verify_checksums, write_checksums
from polycom.utils.atomic import replace_folder

__all__ = [
    "CHECKSUMS_FILE",
    "check_global_batch",
    "export_safetensors",
    "load_sharded",
    "model_signature",
    "read_checkpoint_meta",
    "save_full_safetensors",
    "save_sharded",
]

FORMAT = "polycom-dcp-1"
META_FILE = "polycom_meta.json"


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def model_signature(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Global name -> {"shape": [...], "dtype": "float32"} of every parameter and persistent buffer.

    DTensor parameters report their global (unsharded) shape, so the signature does not depend on
    the parallel layout.
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(model)
    return {name: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")} for name, t in state.items()}


def _model_config(model: nn.Module) -> dict | None:
    cfg = getattr(model, "config", None)
    to_dict = getattr(cfg, "to_dict", None)
    return to_dict() if callable(to_dict) else None


def _dcp_state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """What DCP saves / loads in place: {"model": ..., "optim": ...} (no "optim" without an optimizer)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is None:
        return {"model": get_model_state_dict(model)}
    model_state, optim_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optim": optim_state}


def read_checkpoint_meta(path: str | os.PathLike) -> dict:
    """The polycom_meta.json of a checkpoint folder; UserError when missing or unreadable."""
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"checkpoint folder {folder} does not exist")
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise UserError(f"{folder} is not a polycom distributed checkpoint (no {META_FILE})")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{meta_path} is unreadable: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise UserError(f"{folder}: checkpoint format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def _check_compatible(meta: dict, model: nn.Module, folder: Path) -> None:
    """Raise UserError listing how the saved model differs from `model` (same check on every rank)."""
    saved = meta["tensors"]
    current = model_signature(model)
    problems = []
    missing = sorted(set(current) - set(saved))
    unexpected = sorted(set(saved) - set(current))
    if missing:
        problems.append(f"missing in checkpoint: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"not in the model: {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
    for name in sorted(set(saved) & set(current)):
        if saved[name]["shape"] != current[name]["shape"]:
            problems.append(f"{name}: shape {saved[name]['shape']} in checkpoint vs {current[name]['shape']} in model")
    if problems:
        saved_cfg, cur_cfg = meta.get("model_config"), _model_config(model)
        if saved_cfg and cur_cfg:
            diff = [
                f"{k}={saved_cfg.get(k)!r} (model: {cur_cfg.get(k)!r})"
                for k in cur_cfg
                if saved_cfg.get(k) != cur_cfg[k]
            ]
            if diff:
                problems.insert(0, "config differs: " + ", ".join(diff))
        shown = "; ".join(problems[:8])
        raise UserError(f"checkpoint {folder} was saved from an incompatible model: {shown}")


def save_sharded(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    extra_state: dict | None,
    ctx: DistContext,
) -> Path:
    """Save model + optimizer shards with DCP into folder `path` (atomically); call on EVERY rank.

    extra_state: JSON values and tensors (step, data position, RNG state; see extra_state.py); rank 0's
    copy is kept.
    Works with one process too (no process group needed).
    """
    import torch.distributed.checkpoint as dcp

    folder = Path(path)
    tmp = folder.with_name(folder.name + ".tmp")
    if ctx.is_main:
        folder.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    _barrier()
    state = _dcp_state(model, optimizer)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to (save|load) in a single process")
        dcp.save(state, checkpoint_id=str(tmp), no_dist=not ctx.distributed)
    signature = model_signature(model)
    if ctx.is_main:
        meta = {
            "format": FORMAT,
            "world_size": ctx.world_size,
            "tp_size": ctx.tp_size,
            "dp_size": ctx.dp_size,
            "has_optimizer": optimizer is not None,
            "model_config": _model_config(model),
            "tensors": signature,
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
        write_extra_state(tmp, extra_state or {})
    _barrier()
    write_checksums(tmp, ctx)  # last: every file is complete; a collective (each rank hashes a share)
    _barrier()
    if ctx.is_main:
        replace_folder(tmp, folder)
    _barrier()
    return folder


def load_sharded(
    path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None, ctx: DistContext
) -> dict:
    """Load a `save_sharded` folder into the (already parallelized) model and optimizer; return extra_state.

    Call on EVERY rank. The world size and layout may differ from the saving run (DCP reshards).
    UserError (on every rank, before any collective) when the folder is missing, not a polycom
    checkpoint, holds no optimizer state but `optimizer` is given, comes from a different model, or a
    file fails its checksum (the verification is a collective: the ranks share the hashing).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

    folder = Path(path)
    meta = read_checkpoint_meta(folder)
    _check_compatible(meta, model, folder)
    if optimizer is not None and not meta.get("has_optimizer", False):
        raise UserError(f"checkpoint {folder} holds no optimizer state; load it with optimizer=None")
    verify_checksums(folder, ctx)
    state = _dcp_state(model, optimizer)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
        dcp.load(state, checkpoint_id=str(folder), no_dist=not ctx.distributed)
    if optimizer is not None:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    else:
        set_model_state_dict(model, state["model"])
    return read_extra_state(folder)


def _saved_batch(folder: Path) -> tuple[int, int, int] | None:
    """(batch_size per rank, grad_accum, dp_size) the checkpoint was trained with; None when not recorded."""
    meta = read_checkpoint_meta(folder)
    extra = read_extra_state(folder)
    try:
        batch_size = int(extra["data"]["batch_size"])
        grad_accum = int(extra["config"]["train"]["grad_accum"])
        return batch_size, grad_accum, int(meta.get("dp_size", 1))
    except (KeyError, TypeError, ValueError):
        return None


def _batch_hint(global_batch: int, batch_size: int, grad_accum: int, dp_size: int) -> str:
    """Which --train.batch_size / --train.grad_accum give `global_batch` with `dp_size` ranks."""
    options = []
    if global_batch % (dp_size * grad_accum) == 0:
        options.append(f"--train.batch_size={global_batch // (dp_size * grad_accum)} (the same windows as before)")
    if global_batch % (dp_size * batch_size) == 0:
        options.append(f"--train.grad_accum={global_batch // (dp_size * batch_size)}")
    if not options:
        return f"no --train.batch_size / --train.grad_accum keeps it with {dp_size} data-parallel ranks"
    return "to keep it pass " + " or ".join(options)


def check_global_batch(path: str | os.PathLike, batch_size: int, grad_accum: int, dp_size: int) -> None:
    """Refuse resuming checkpoint `path` on a different number of data-parallel ranks with another global batch.

    global batch = batch_size (per rank) x dp_size x grad_accum. With the same dp_size a changed batch is the
    user's explicit choice and passes; with a different dp_size the old global batch must be kept (the
    UserError names the --train.batch_size / --train.grad_accum that keep it, and the process count that
    saved it). The sampler draws batch_size x dp_size windows per (step, micro-batch), so keeping
    batch_size x dp_size keeps the very same windows. Checkpoints without a batch record pass.
    """
    folder = Path(path)
    saved = _saved_batch(folder)
    if saved is None or saved[2] == dp_size:
        return
    saved_global = saved[0] * saved[1] * saved[2]
    now = batch_size * grad_accum * dp_size
    if now == saved_global:
        return
    meta = read_checkpoint_meta(folder)
    raise UserError(
        f"checkpoint {folder} was trained with global batch {saved_global} (batch_size {saved[0]} x "
        f"{saved[2]} data-parallel ranks x grad_accum {saved[1]}, {meta.get('world_size', '?')} processes); "
        f"resuming on {dp_size} data-parallel ranks gives {now} ({batch_size} x {dp_size} x {grad_accum}): "
        f"{_batch_hint(saved_global, batch_size, grad_accum, dp_size)}, or launch "
        f"{meta.get('world_size', '?')} processes as before"
    )


def _write_safetensors_atomic(tensors: dict[str, torch.Tensor], out: Path, metadata: dict[str, str]) -> Path:
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, out)
    return out


def export_safetensors(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the model weights of DCP checkpoint folder `path` as ONE safetensors file `out`.

    Runs in a single process whatever world size saved the checkpoint. Tensor names are the plain
    model state-dict names; the file's metadata carries the model config as JSON ("polycom_config").
    """
    import torch.distributed.checkpoint as dcp

    folder = Path(path)
    meta = read_checkpoint_meta(folder)
    verify_checksums(folder, DistContext())
    tensors = {
        name: torch.empty(spec["shape"], dtype=getattr(torch, spec["dtype"])) for name, spec in meta["tensors"].items()
    }
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
        dcp.load({"model": tensors}, checkpoint_id=str(folder), no_dist=True)
    metadata = {"format": "pt", "polycom_source": str(folder)}
    if meta.get("model_config") is not None:
        metadata["polycom_config"] = json.dumps(meta["model_config"])
    return _write_safetensors_atomic(tensors, Path(out), metadata)


def save_full_safetensors(model: nn.Module, out: str | os.PathLike, ctx: DistContext) -> Path | None:
    """Gather the full (unsharded) weights of a live parallelized model and write them from rank 0.

    Call on EVERY rank (the gather is a collective); returns the path on rank 0, None elsewhere.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options)
    result = None
    if ctx.is_main:
        metadata = {"format": "pt"}
        cfg = _model_config(model)
        if cfg is not None:
            metadata["polycom_config"] = json.dumps(cfg)
        result = _write_safetensors_atomic({k: v.detach().cpu() for k, v in state.items()}, Path(out), metadata)
    _barrier()
    return result
