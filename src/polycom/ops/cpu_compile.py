"""`torch.compile` of the closed-form PolyCom math on CPU tensors (the ``torch`` backend).

``POLYCOM_CPU_COMPILE`` chooses:

- ``1`` (default): on CPU tensors, compile each closed-form function once (Inductor, ``dynamic=True``,
  ``fullgraph=True``; Inductor keeps its compiled code in its on-disk cache, so later processes reuse it).
  Without a C++ compiler, or if compiling fails for any other reason, a one-time warning is printed and
  the run continues in eager mode with the same results up to fp32 rounding;
- ``0``: eager PyTorch everywhere (no compiler needed, no first-call cost).

Compiling fuses the closed form's passes (about 10 for a PolyNorm forward, 20 for its backward, each a
trip through memory) into one or two loops. On the project's 2-core CPU that takes the MLP block of a
PolyReLU / PolyNorm MLP from 1.03-1.05x / 1.05-1.07x the fused SwiGLU block's time (eager) to 0.98-1.02x
/ 1.00-1.02x (`benchmarks/README.md`). The price is a first call of each new (dtype, order, gated)
combination: about 25 s for SwiGLU, PolyReLU and PolyNorm together with an empty cache (the first
function compiled took 13.6 s, the later ones 3-6 s), near nothing once Inductor's cache holds them.
CUDA tensors always run the eager closed form here (the Triton kernels are the GPU path), and so does a
function called inside a model that is itself being compiled (the outer compile traces it).
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
    """The ``POLYCOM_CPU_COMPILE`` setting: True unless it is 0; any other value is an error naming it."""
    value = os.environ.get(ENV_VAR, "1").strip().lower()
    if value not in ("0", "1", ""):
        raise ValueError(f"{ENV_VAR}={value!r}: use 1 (compile the closed-form ops, the default) or 0 (eager)")
    return value != "0"


@functools.cache
def _compiler_found() -> bool:
    return shutil.which(os.environ.get("CXX", "c++")) is not None or shutil.which("g++") is not None


def active() -> bool:
    """Whether CPU calls are compiled in this process now: requested, a C++ compiler found, no failure yet."""
    return compile_requested() and _compiler_found() and _disabled_reason is None


def _fall_back(reason: str) -> None:
    global _disabled_reason
    if _disabled_reason is None:
        warnings.warn(f"PolyCom ops run eagerly on the CPU ({ENV_VAR}): {reason}", RuntimeWarning, stacklevel=3)
    _disabled_reason = reason


@functools.cache
def _compiled_version(fn: Callable) -> Callable:
    return torch.compile(fn, dynamic=True, fullgraph=True)


def compiled(fn: Callable) -> Callable:
    """`fn`, compiled for CPU tensors when ``POLYCOM_CPU_COMPILE`` allows it and compiling works here.

    fn's first argument decides the device: anything but a CPU tensor runs `fn` itself."""
    if not compile_requested() or _disabled_reason is not None or torch.compiler.is_compiling():
        return fn
    if not _compiler_found():
        _fall_back("no C++ compiler found (set CXX or install g++; POLYCOM_CPU_COMPILE=0 silences this)")
        return fn

    def run(*args, **kwargs):
        if args[0].device.type != "cpu":
            return fn(*args, **kwargs)
        try:
            return _compiled_version(fn)(*args, **kwargs)
        except Exception as exc:  # any compile failure: eager gives the same numbers
            _fall_back(f"torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
            return fn(*args, **kwargs)

    return run
