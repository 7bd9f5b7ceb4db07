"""Open a local Hugging Face folder without running code or unpickling objects from it.

    kwargs = hf_load_kwargs(trust_remote_code)        # {"local_files_only": True, "trust_remote_code": False}
    with refusing_unsafe_content(folder):             # custom code / pickle weights -> one-line UserError
        model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)

Every ``from_pretrained`` of a model, config or tokenizer in polycom passes these kwargs. Why explicit:

* ``trust_remote_code``: transformers' default (None) ASKS on the terminal ("Do you wish to run the
  custom code? [y/N]") when a folder's ``config.json`` / ``tokenizer_config.json`` has an ``auto_map``
  naming Python files transformers does not know; a script or a batch job would hang, and a "y" runs
  the folder's code. With False transformers raises instead, which `refusing_unsafe_content` turns into
  a UserError naming ``--trust-remote-code``. A folder with an ``auto_map`` whose ``model_type`` is
  built into transformers still loads, with the built-in class (the folder's files are not imported).
* pickle weights: transformers reads ``pytorch_model.bin`` with ``torch.load(weights_only=True)``; a
  pickle that needs more than tensors to load is refused with an ``UnpicklingError`` (nothing from it
  runs), which becomes a one-line UserError instead of a traceback.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from polycom.errors import UserError

__all__ = ["TRUST_REMOTE_CODE_HELP", "hf_load_kwargs", "refusing_unsafe_content"]

TRUST_REMOTE_CODE_HELP = (
    "run the Python files of a Hugging Face folder (its config's auto_map); only for folders from a source you trust"
)


def hf_load_kwargs(trust_remote_code: bool = False) -> dict[str, Any]:
    """Keyword arguments for every local ``from_pretrained``: offline, and code runs only when asked."""
    return {"local_files_only": True, "trust_remote_code": bool(trust_remote_code)}


@contextmanager
def refusing_unsafe_content(folder: str | Path) -> Iterator[None]:
    """Turn transformers' refusals (custom code without trust, pickle weights) into one-line UserErrors."""
    try:
        yield
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{folder}: refusing to load pickle weights (pytorch_model.bin) that need more than tensors to "
            f"unpickle ({first}); load a safetensors copy made on a machine that trusts this file"
        ) from None
    except ValueError as exc:
        if "trust_remote_code" not in str(exc):
            raise
        raise UserError(
            f"{folder} needs its own Python code to load (auto_map in its config); polycom does not run code "
            "from a model folder unless asked: pass --trust-remote-code (trust_remote_code=True) if you trust "
            "its source"
        ) from None
