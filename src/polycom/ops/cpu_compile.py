"""When the closed-form PolyCom math of CPU tensors is compiled by `torch.compile` (the ``torch`` backend).

The rule: **a call answers eagerly unless it runs inside a training loop** (`training_loop()`, which
`polycom train`, `polycom compare` and `polycom bench model` enter); ``POLYCOM_CPU_COMPILE`` forces
either way:

- unset (or ``auto``): eager, except inside `training_loop()`;
- ``1``: compiled on every CPU call;
- ``0``: eager everywhere (no compiler needed, no first-call cost).

Why: compiling fuses the closed form's passes (about 10 for a PolyNorm forward, 20 for its backward,
each a trip through memory) into one or two loops. On the project's 2-core CPU that takes the MLP block
of a PolyReLU / PolyNorm MLP from 1.03-1.05x / 1.05-1.07x the fused SwiGLU block's time (eager) to
0.98-1.02x / 1.00-1.02x (`benchmarks/README.md`): worth it over the hundreds of same-shape steps of a
training loop. A first call pays the build: measured on that CPU at polycom 6b6ae6e, the README's
``PolyNorm(order=3)(torch.randn(4, 128, 8256))`` took 16.0 s with an empty Inductor cache and 4.2 s with
a warm one (forward + backward at a new shape 5.1 s / 1.2 s), against about 50 ms eagerly. That is why
a notebook line or a unit test of someone's model runs eagerly.

How it is compiled: one `torch.compile` (Inductor, ``dynamic=True``, ``fullgraph=True``) per *variant*
of a closed-form function: the tensors' dtypes, ranks and requires_grad, the order (the ``weight``
argument's length: a Python loop bound) and every non-tensor argument (eps, the ``needs`` flags, ...).
Each variant is its own code object, so it has its own Dynamo cache and recompile limit: sizes are
symbolic and Dynamo's duck sizing is off (it gives equal sizes one symbol, so a first call whose row count
happened to equal another size specialised it), so token counts that change from call to call (generation,
variable batches, evaluation) share one graph, and a test matrix of dtypes and orders compiles each variant
once (per memory layout) instead of hitting one function's recompile limit. A call of 0 or 1 row runs
eagerly: Dynamo specialises sizes 0 and 1 (a second build), and a single token's passes are tiny. Another
size-1 dimension (a batch of 1 in a 3-D input) is specialised once per variant. A variant that
still hits the limit runs eagerly from then on, without a warning (the results are the same).

Inductor's on-disk cache (shared by every process and polycom version of the user) is keyed, through
``torch.compiler.config.cache_key_tag``, by polycom's version and a hash of this package's sources
(`cache_tag()`): code compiled by another polycom is never reused.

Without a C++ compiler, or if compiling fails for any other reason, a one-time warning is printed and the
run continues eagerly with the same results up to fp32 rounding. CUDA tensors always run the eager closed
form here (the Triton kernels are the GPU path), and so does a function called inside a model that is
itself being compiled (the outer compile traces it).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import os
import shutil
import types
import warnings
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

import torch
import torch.fx.experimental._config as fx_config

ENV_VAR = "POLYCOM_CPU_COMPILE"

_disabled_reason: str | None = None
_loop_depth = 0  # how many training_loop() blocks are open (process-wide)
_eager_variants: set[tuple] = set()  # variants that hit Dynamo's recompile limit: eager from then on
_variants: list[tuple[str, tuple]] = []  # (name, key) of every compiled variant made in this process, in order
BACKEND = "inductor"  # the tests trace with "aot_eager" (Dynamo and AOTAutograd as here, no C++ build)


def compile_setting() -> str:
    """``POLYCOM_CPU_COMPILE``: "auto" (unset or empty), "1" or "0"; any other value is an error naming it."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value not in ("0", "1", "", "auto"):
        raise ValueError(
            f"{ENV_VAR}={value!r}: use 1 (always compile the closed-form ops on CPU tensors), 0 (never) "
            "or leave it unset (compile inside training loops only)"
        )
    return value or "auto"


def compile_requested() -> bool:
    """Whether CPU calls made now are to be compiled: ``POLYCOM_CPU_COMPILE=1``, or unset inside `training_loop()`."""
    setting = compile_setting()
    return setting == "1" or (setting == "auto" and _loop_depth > 0)


@contextlib.contextmanager
def training_loop() -> Iterator[None]:
    """Compile the closed-form ops of CPU tensors inside this block (unless ``POLYCOM_CPU_COMPILE=0``).

    For long loops over the same shapes, where a build of a few seconds per function pays back; the
    training, compare and bench model commands run inside one. Blocks nest; the setting is process-wide."""
    global _loop_depth
    _loop_depth += 1
    try:
        yield
    finally:
        _loop_depth -= 1


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
def cache_tag() -> str:
    """polycom's version and a hash of the sources of `polycom.ops` (the compiled functions and what they
    call): part of every Inductor cache key of the compiled variants, so a cache written by another polycom
    (an older release, or an edited checkout) misses instead of serving code built from other sources."""
    try:
        version = metadata.version("polycom")
    except metadata.PackageNotFoundError:
        version = "unknown"
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return f"polycom-{version}-{digest.hexdigest()[:16]}"


@functools.cache
def _weight_position(fn: Callable) -> int | None:
    """Index of fn's ``weight`` parameter (the PolyCom coefficients), None if it has none."""
    names = list(inspect.signature(fn).parameters)
    return names.index("weight") if "weight" in names else None


def _part(value):
    if isinstance(value, torch.Tensor):
        return (value.dtype, value.dim(), value.requires_grad)
    return value


def variant_key(fn: Callable, args: tuple, kwargs: dict) -> tuple:
    """What selects fn's compiled variant: dtypes, ranks and requires_grad of the tensors, the order
    (``weight``'s length) and the non-tensor arguments; never a size of the data."""
    position = _weight_position(fn)
    order = None
    if position is not None:
        weight = args[position] if position < len(args) else kwargs.get("weight")
        order = None if weight is None else tuple(weight.shape)
    return (order, *map(_part, args), *((k, _part(v)) for k, v in sorted(kwargs.items())))


@functools.cache
def _compiled_version(fn: Callable, key: tuple) -> Callable:
    """fn's compiled variant for `key`: a copy of fn with a code object of its own (Dynamo keeps its cache
    and recompile count per code object), under `torch.compile(dynamic=True, fullgraph=True)`."""
    code = fn.__code__.replace(co_name=f"{fn.__name__}_v{len(_variants)}")
    _variants.append((fn.__name__, key))
    variant = types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    variant.__kwdefaults__ = fn.__kwdefaults__
    variant.__wrapped__ = fn
    return torch.compile(variant, dynamic=True, fullgraph=True, backend=BACKEND)


_in_call = False  # True while a compiled variant runs: a compile starting now is polycom's
_saved_settings: list[tuple[str, bool]] = []


def _on_compile_start(_args) -> None:
    """Dynamo compile start (`torch._dynamo.callback_handler`): for polycom's own compiles, the Inductor cache
    key tag (`cache_tag()`, after the user's own tag) and no duck sizing (Dynamo would otherwise give equal
    sizes one symbol: a first call with as many rows as PolyNorm has statistics, r + 1, specialised the row
    count of its backward, and the next row count built again). Set here, not around every call: patching
    torch's config costs tens of microseconds a call, the callback runs only when something compiles."""
    if not _in_call:
        return
    user_tag = torch.compiler.config.cache_key_tag
    _saved_settings.append((user_tag, fx_config.use_duck_shape))
    torch.compiler.config.cache_key_tag = f"{user_tag}|{cache_tag()}" if user_tag else cache_tag()
    fx_config.use_duck_shape = False


def _on_compile_end(_args) -> None:
    if _saved_settings:
        torch.compiler.config.cache_key_tag, fx_config.use_duck_shape = _saved_settings.pop()


def _install_callbacks() -> None:
    """(Re-)register the compile callbacks; `torch._dynamo.reset()` clears them."""
    handler = torch._dynamo.callback_handler
    if _on_compile_start not in handler.start_callbacks:
        handler.register_start_callback(_on_compile_start)
        handler.register_end_callback(_on_compile_end)


def _recompile_limit_hit(exc: BaseException) -> bool:
    return type(exc).__name__ in ("FailOnRecompileLimitHit", "RecompileLimitExceeded")


def compiled(fn: Callable) -> Callable:
    """`fn`, compiled for CPU tensors when `compile_requested()` and compiling works here.

    fn's first argument decides the device: anything but a CPU tensor runs `fn` itself."""
    if not compile_requested() or _disabled_reason is not None or torch.compiler.is_compiling():
        return fn
    if not _compiler_found():
        _fall_back("no C++ compiler found (set CXX or install g++; POLYCOM_CPU_COMPILE=0 silences this)")
        return fn

    def run(*args, **kwargs):
        first = args[0]
        if first.device.type != "cpu" or first.numel() <= first.shape[-1]:
            return fn(*args, **kwargs)  # 0 or 1 row: a few tiny passes, no build pays
        key = variant_key(fn, args, kwargs)
        if (fn, key) in _eager_variants:
            return fn(*args, **kwargs)
        global _in_call
        _install_callbacks()
        _in_call = True
        try:
            return _compiled_version(fn, key)(*args, **kwargs)
        except Exception as exc:  # any compile failure: eager gives the same numbers
            if _recompile_limit_hit(exc):
                _eager_variants.add((fn, key))
            else:
                message = str(exc).splitlines()[0] if str(exc) else ""
                _fall_back(f"torch.compile failed ({type(exc).__name__}: {message})")
            return fn(*args, **kwargs)
        finally:
            _in_call = False

    return run
