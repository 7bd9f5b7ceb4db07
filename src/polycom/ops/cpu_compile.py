"""Optional `torch.compile` of the closed-form PolyCom math on the ``torch`` backend.

``POLYCOM_CPU_COMPILE`` chooses:

- ``0`` (default): eager PyTorch;
- ``1``: compile each closed-form function once (Inductor, ``dynamic=True``, ``fullgraph=True``; Inductor
  keeps its compiled code in its on-disk cache, so later processes reuse it). Without a working C++
  compiler, or if compiling fails for any other reason, a one-time warning is printed and the run
  continues in eager mode with the same results up to fp32 rounding.

Compiling fuses the closed form's in-place passes (about 10 for a PolyNorm forward, 20 for its
backward) into one or two loops. The eager closed form already avoids fresh (rows, h) temporaries, which
are what cost most on a CPU, so compiling gains a few percent of an MLP block's time; it costs tens of
seconds of C++ compilation on the first call of each new (dtype, order, gated) combination, which is why
it is opt-in. Inside a model that is already being compiled the eager function is used (the outer compile
traces it).
"""

from __future__ import annotations

import functools
import os
import shutil
import warnings
from collections.abc import Callable

import torch

ENV_VAR = "POLYCOM_CPU_COMPILE"

_disabled_reason: str | None = None


def compile_requested() -> bool:
    value = os.environ.get(ENV_VAR, "0").strip().lower()
    if value not in ("0", "1", ""):
        raise ValueError(f"{ENV_VAR}={value!r}: use 1 (compile the closed-form ops) or 0 (eager)")
    return value == "1"


def _fall_back(reason: str) -> None:
    global _disabled_reason
    if _disabled_reason is None:
        warnings.warn(f"{ENV_VAR}=1 but the PolyCom ops run eagerly: {reason}", RuntimeWarning, stacklevel=3)
    _disabled_reason = reason


@functools.cache
def _compiled_version(fn: Callable) -> Callable:
    return torch.compile(fn, dynamic=True, fullgraph=True)


def compiled(fn: Callable) -> Callable:
    """`fn` compiled when ``POLYCOM_CPU_COMPILE=1`` and compiling works here, else `fn` itself."""
    if not compile_requested() or _disabled_reason is not None or torch.compiler.is_compiling():
        return fn
    if shutil.which(os.environ.get("CXX", "c++")) is None and shutil.which("g++") is None:
        _fall_back("no C++ compiler found (set CXX or install g++)")
        return fn

    def run(*args, **kwargs):
        try:
            return _compiled_version(fn)(*args, **kwargs)
        except Exception as exc:  # any compile failure: eager gives the same numbers
            _fall_back(f"torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
            return fn(*args, **kwargs)

    return run
