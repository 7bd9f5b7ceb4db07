"""Backend selection for the PolyCom ops.

`POLYCOM_BACKEND` chooses the implementation behind `polycom.poly_norm` and friends:

- ``auto`` (default): the fused Triton kernels for CUDA tensors when Triton is importable, the pure
  PyTorch reference otherwise;
- ``torch``: always the reference (`polycom.ops.reference`);
- ``triton``: always the kernels; on CPU tensors this needs ``TRITON_INTERPRET=1``. Raises a clear
  error when Triton is not installed.

The variable is read at every call (cheap) so tests and users can switch it at run time;
`use_backend` is a context manager for the same thing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator

import torch

BACKENDS = ("auto", "torch", "triton")
ENV_VAR = "POLYCOM_BACKEND"

_override: str | None = None


def requested_backend() -> str:
    """The backend asked for by `use_backend` or ``POLYCOM_BACKEND``, validated."""
    value = _override if _override is not None else os.environ.get(ENV_VAR, "auto")
    value = value.strip().lower()
    if value not in BACKENDS:
        raise ValueError(f"{ENV_VAR}={value!r} is not a known backend; choose one of {', '.join(BACKENDS)}")
    return value


# Looked up once at import (no import of triton itself): a plain constant keeps torch.compile quiet.
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    """True when the `triton` package is installed."""
    return _TRITON_INSTALLED


def triton_interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def backend_for(x: torch.Tensor) -> str:
    """The concrete backend (``torch`` or ``triton``) that will run an op on `x`."""
    requested = requested_backend()
    if requested == "torch":
        return "torch"
    if requested == "triton":
        if not triton_available():
            raise RuntimeError(
                f"{ENV_VAR}=triton but Triton is not installed; `pip install polycom[triton]` or set {ENV_VAR}=torch"
            )
        if x.device.type != "cuda" and not triton_interpreter_enabled():
            raise RuntimeError(
                f"{ENV_VAR}=triton needs CUDA tensors (got {x.device.type}); set TRITON_INTERPRET=1 "
                "before importing polycom to run the kernels on CPU through the Triton interpreter"
            )
        return "triton"
    # auto
    if x.device.type == "cuda" and triton_available():
        return "triton"
    return "torch"


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Temporarily select a backend (same values as ``POLYCOM_BACKEND``)."""
    global _override
    previous = _override
    _override = name
    try:
        requested_backend()  # validate eagerly
        yield
    finally:
        _override = previous
