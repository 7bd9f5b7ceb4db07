"""The trainer's extra state in a sharded checkpoint, stored without pickle.

    write_extra_state(CKPT, {"step": 7, "rng": {"torch": tensor}, ...})   # rank 0, into the DCP folder
    extra = read_extra_state(CKPT)                                       # the same dict back

Two files:

    extra_state.json          {"format": "polycom-extra-state-1", "state": TREE}; TREE is the dict with
                              every tensor replaced by {"__tensor__": "t0"}, {"__tensor__": "t1"}, ...
    extra_state.safetensors   t0, t1, ... (only when the state holds tensors)

Nothing in either file can run code when read (JSON and safetensors hold data only), unlike the
``torch.load(weights_only=False)`` pickle earlier versions wrote as ``extra_state.pt``. Such a legacy
file is still read, with ``torch.load(weights_only=True)``: a polycom-written one holds only plain
values and tensors and loads; a crafted one that needs any other object is refused (UserError) before
anything from it runs.

What the tree may hold: dicts with string keys, lists / tuples (read back as lists), str, int, float
(inf / nan kept), bool, None, and CPU or GPU tensors (read back on the CPU). Anything else is a
TypeError when writing, so a new trainer field that JSON cannot hold fails at the first save, not
at resume.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from polycom.errors import UserError

__all__ = ["EXTRA_FORMAT", "EXTRA_JSON", "EXTRA_TENSORS", "LEGACY_EXTRA_FILE", "read_extra_state", "write_extra_state"]

EXTRA_FORMAT = "polycom-extra-state-1"
EXTRA_JSON = "extra_state.json"
EXTRA_TENSORS = "extra_state.safetensors"
LEGACY_EXTRA_FILE = "extra_state.pt"
_TENSOR_KEY = "__tensor__"


def _to_tree(value: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    """`value` with tensors moved into `tensors` (name -> CPU tensor) and replaced by references."""
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = value.detach().cpu().contiguous()
        return {_TENSOR_KEY: name}
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str) or k == _TENSOR_KEY]
        if bad:
            raise TypeError(f"extra_state{where}: keys must be strings other than {_TENSOR_KEY!r}, got {bad[:3]!r}")
        return {k: _to_tree(v, tensors, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_tree(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise TypeError(f"extra_state{where}: {type(value).__name__} cannot be stored as JSON or a tensor")


def _from_tree(value: Any, tensors: dict[str, torch.Tensor], source: Path) -> Any:
    if isinstance(value, dict):
        if set(value) == {_TENSOR_KEY}:
            name = value[_TENSOR_KEY]
            if name not in tensors:
                raise UserError(f"{source} names tensor {name!r}, which {EXTRA_TENSORS} does not hold")
            return tensors[name]
        return {k: _from_tree(v, tensors, source) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_tree(v, tensors, source) for v in value]
    return value


def write_extra_state(folder: str | Path, extra_state: dict) -> None:
    """Write `extra_state` as extra_state.json (+ extra_state.safetensors for its tensors) into `folder`.

    The folder is a checkpoint being written under a temporary name (renamed when complete), so these
    plain writes are atomic as a whole.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    tensors: dict[str, torch.Tensor] = {}
    tree = _to_tree(dict(extra_state), tensors, "")
    text = json.dumps({"format": EXTRA_FORMAT, "state": tree}, indent=1)
    if tensors:
        save_file(tensors, str(folder / EXTRA_TENSORS))
    (folder / EXTRA_JSON).write_text(text + "\n", encoding="utf-8")


def read_extra_state(folder: str | Path) -> dict:
    """The dict `write_extra_state` wrote (tensors on the CPU); a legacy extra_state.pt only as weights_only."""
    folder = Path(folder)
    path = folder / EXTRA_JSON
    if not path.is_file():
        return _read_legacy(folder / LEGACY_EXTRA_FILE)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is unreadable: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != EXTRA_FORMAT or not isinstance(data.get("state"), dict):
        raise UserError(f"{path} is not a polycom extra-state file (expected format {EXTRA_FORMAT!r})")
    tensors: dict[str, torch.Tensor] = {}
    if (folder / EXTRA_TENSORS).is_file():
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(folder / EXTRA_TENSORS))
        except Exception as exc:  # safetensors raises its own error types for a damaged file
            raise UserError(f"{folder / EXTRA_TENSORS} is unreadable: {exc}") from None
    return _from_tree(data["state"], tensors, path)


def _read_legacy(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"checkpoint {path.parent} holds no trainer state ({EXTRA_JSON})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(
            f"{path}: refusing to unpickle this extra_state.pt: it needs more than plain values and tensors, "
            f"which a file written by polycom never does ({first})"
        ) from None
    if not isinstance(state, dict):
        raise UserError(f"{path} does not hold a dict of trainer state")
    return state
