"""Op-level benchmark of the PolyCom activations (the engine behind `polycom bench ops`).

For each shape (tokens x hidden), dtype, op (`op_cases.OP_CASES`) and provider (`op_providers.PROVIDERS`)
it first checks correctness against an fp64 evaluation of the formula (`op_check`; a provider that
fails is reported as failed and never timed), then times forward, backward and forward+backward and
measures memory:

- times: median, p20, p80 over repetitions (`timing.Timer`: CUDA events, L2 flushed before each one);
- effective bandwidth = minimum HBM traffic / median time, where the minimum traffic is
  fwd: inputs + output; bwd: inputs + grad_output + input grads; fwd+bwd: both;
- its fraction of the device-to-device copy bandwidth measured at the start of the same run;
- peak memory of one forward+backward above the inputs, and the memory a forward keeps alive.

Rows (provenance fields of `rows`) are appended to ``<out>/ops.jsonl`` and ``<out>/ops.csv``.
On CPU (``device="cpu"``) the kernels run through the Triton interpreter on tiny shapes: a smoke test of
the harness, without speed meaning.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from polycom.bench.op_cases import ALL_OPS, OP_CASES, POLY_OPS, OpCase
from polycom.bench.op_check import check_provider
from polycom.bench.op_providers import PROVIDERS
from polycom.bench.ops_report import CSV_FIELDS, print_table
from polycom.bench.rows import append_rows, provenance_fields
from polycom.bench.timing import Timer, copy_bandwidth_gbps
from polycom.errors import UserError

DEFAULT_OUT = Path("benchmarks") / "results"
FULL_SHAPES = ("8192x8192", "16384x5632", "4096x14336", "2048x65536")
QUICK_SHAPES = ("8192x8192", "2048x65536")
# CPU runs the kernels through the Triton interpreter (~10^5 slower than a GPU): tiny shapes only,
# one narrow-and-tall and one wide (looped-tile path) case.
CPU_SHAPES = ("64x256", "8x4096")
QUICK_OPS = ("polynorm", "polyrelu", "polynorm_gated")
MODES = ("fwd", "bwd", "fwdbwd")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclasses.dataclass
class BenchConfig:
    shapes: list[tuple[int, int]]
    dtypes: list[str]
    ops: list[str]
    providers: list[str]
    modes: list[str]
    order: int = 3
    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    out_dir: Path = DEFAULT_OUT
    device: str = "cuda"
    tiling: dict[str, int] = dataclasses.field(default_factory=dict)
    write: bool = True
    commit: str | None = None


def parse_shape(text: str) -> tuple[int, int]:
    try:
        m, n = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"shape {text!r} must look like TOKENSxHIDDEN, e.g. 8192x8192") from None
    if m < 1 or n < 1:
        raise ValueError(f"shape {text!r} must have positive sizes")
    return m, n


def parse_tiling(text: str | None) -> dict[str, int]:
    """'max_single_tile_fwd=16384,loop_tile_fwd=8192' -> dict (fields of polycom.ops.triton.config.TilingLimits)."""
    if not text:
        return {}
    out = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--tiling item {item!r} must be KEY=VALUE")
        out[key.strip()] = int(value)
    return out


def choose(values: Sequence[str] | None, allowed: Sequence[str], default: Sequence[str], what: str) -> list[str]:
    """`values` (or `default` when empty), each checked against `allowed`."""
    chosen = list(values) if values else list(default)
    unknown = [v for v in chosen if v not in allowed]
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(unknown)}; choose from {', '.join(allowed)}")
    return chosen


def make_config(
    *,
    quick: bool = False,
    device: str = "cuda",
    shapes: Sequence[str] | None = None,
    dtypes: Sequence[str] | None = None,
    ops: Sequence[str] | None = None,
    providers: Sequence[str] | None = None,
    modes: Sequence[str] | None = None,
    **fields,
) -> BenchConfig:
    """A BenchConfig from names; None picks the defaults of the full set, or of --quick (reduced set).
    On CPU the default shapes are tiny and `compile` is left out of the quick providers (an inductor C++
    build per case would dominate a smoke test)."""
    cpu = device == "cpu"
    default_shapes = CPU_SHAPES if cpu else QUICK_SHAPES if quick else FULL_SHAPES
    quick_providers = [p.name for p in PROVIDERS.values() if p.quick and not (cpu and p.name == "compile")]
    return BenchConfig(
        shapes=[parse_shape(s) for s in (shapes or default_shapes)],
        dtypes=choose(dtypes, tuple(DTYPES), ("bf16",) if quick else tuple(DTYPES), "dtype"),
        ops=choose(ops, ALL_OPS, QUICK_OPS if quick else ALL_OPS, "op"),
        providers=choose(providers, tuple(PROVIDERS), quick_providers if quick else tuple(PROVIDERS), "provider"),
        modes=choose(modes, MODES, MODES, "mode"),
        warmup_ms=10.0 if quick else 25.0,
        rep_ms=40.0 if quick else 100.0,
        device=device,
        **fields,
    )


# ------------------------------------------------------------------------------------ measuring


def min_bytes(op: str, mode: str, m: int, n: int, dtype: torch.dtype) -> int:
    """Minimum HBM traffic: fwd reads the inputs and writes y; bwd reads inputs + dy, writes input grads."""
    s = m * n * torch.tensor([], dtype=dtype).element_size()
    k = OP_CASES[op].n_inputs
    fwd, bwd = (k + 1) * s, (2 * k + 1) * s
    return {"fwd": fwd, "bwd": bwd, "fwdbwd": fwd + bwd}[mode]


def _memory(fn, inputs, w, b, dy, device) -> dict[str, float | None]:
    if device != "cuda":
        return {"peak_MiB": None, "fwd_kept_MiB": None}
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    y = fn(inputs, w, b)
    kept = torch.cuda.memory_allocated() - base
    y.backward(dy)
    del y
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    for t in (*inputs, w, b):
        t.grad = None
    return {"peak_MiB": peak / 2**20, "fwd_kept_MiB": kept / 2**20}


def _make_inputs(case: OpCase, m, n, dtype, order, device, seed=0):
    """Random inputs generated on the device itself (CPU generation of 10^8 values would dominate the run)."""
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn():
        return torch.randn(m, n, generator=gen, device=device).to(dtype)

    inputs = [randn().requires_grad_(True) for _ in range(case.n_inputs)]
    dy = randn()
    w = torch.full((order,), 1.0 / order, device=device) + 0.1 * torch.randn(order, generator=gen, device=device)
    b = torch.full((1,), 0.05, device=device)
    return inputs, w.requires_grad_(True), b.requires_grad_(True), dy


def _time_modes(timer: Timer, fn, inputs, w, b, dy, modes) -> dict[str, dict | Exception]:
    """Stats per mode, or the exception that stopped a mode. Backward alone: a fresh forward runs before
    each repetition, outside the timed region (no retain_graph, which compiled backwards with donated
    buffers refuse)."""
    leaves = (*inputs, w, b)
    state = {}

    def clear_grads():
        for t in leaves:
            t.grad = None

    def fresh_forward():
        clear_grads()
        state["y"] = fn(inputs, w, b)

    runs = {
        "fwd": (lambda: fn(inputs, w, b), lambda: None),
        "bwd": (lambda: state.pop("y").backward(dy), fresh_forward),
        "fwdbwd": (lambda: fn(inputs, w, b).backward(dy), clear_grads),
    }
    out = {}
    for mode in modes:
        try:
            out[mode] = timer(*runs[mode])
        except Exception as exc:  # keep going: record why this mode has no timing
            out[mode] = exc
        finally:
            clear_grads()
    return out


def measure(op, provider, fn, m, n, dtype_name, cfg: BenchConfig, timer: Timer, copy_gbps: float) -> list[dict]:
    """Rows for one (op, provider, shape, dtype): a failed check gives rows without timings."""
    case, dtype = OP_CASES[op], DTYPES[dtype_name]
    base = {"op": op, "provider": provider, "tokens": m, "hidden": n, "dtype": dtype_name, "order": cfg.order}
    inputs, w, b, dy = _make_inputs(case, m, n, dtype, cfg.order, cfg.device)
    # The check runs on the timed shape itself (same kernel configuration, full coefficient-grad sums).
    check = check_provider(case, provider, fn, inputs, w, b, dy)
    base.update({"check": "ok" if check.ok else "FAILED", "check_detail": check.detail, "max_rel_err": check.max_err})
    if not check.ok:
        return [dict(base, mode=mode) for mode in cfg.modes]
    memory = _memory(fn, inputs, w, b, dy, cfg.device)
    rows = []
    for mode, stats in _time_modes(timer, fn, inputs, w, b, dy, cfg.modes).items():
        if isinstance(stats, Exception):
            detail = f"{type(stats).__name__}: {str(stats)[:300]}"
            rows.append(dict(base, mode=mode, check="ERROR", check_detail=detail))
            continue
        nbytes = min_bytes(op, mode, m, n, dtype)
        gbps = nbytes / (stats["median_ms"] * 1e-3) / 1e9
        rows.append(dict(base, mode=mode, **stats, min_bytes=nbytes, GBps=gbps, frac_copy=gbps / copy_gbps, **memory))
    return rows


# ------------------------------------------------------------------------------------ run


def prepare_device(cfg: BenchConfig) -> None:
    """Drop the polycom provider without Triton; refuse CUDA without a GPU; CPU runs the Triton interpreter."""
    from polycom.ops.backend import triton_available

    if "polycom" in cfg.providers and not triton_available():
        print("Triton is not installed: the polycom provider is skipped (pip install polycom[triton])", flush=True)
        cfg.providers = [p for p in cfg.providers if p != "polycom"]
    if cfg.device == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                "`polycom bench ops` needs a CUDA GPU (torch.cuda.is_available() is False on this machine); "
                "nothing was measured. Use --device cpu only to smoke-test the harness."
            )
        return
    os.environ.setdefault("TRITON_INTERPRET", "1")  # CPU: kernels only through the interpreter
    if "polycom" in cfg.providers and "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise UserError("--device cpu needs TRITON_INTERPRET=1 set before triton is imported")


def apply_tiling(tiling: dict[str, int]) -> None:
    """Set the kernels' TilingLimits for this process: the defaults with `tiling`'s fields replaced (each
    call starts from the defaults, so a sweep of --tiling values does not accumulate)."""
    from polycom.ops.triton import config as kernel_config

    fields = {f.name for f in dataclasses.fields(kernel_config.TilingLimits)}
    unknown = sorted(set(tiling) - fields)
    if unknown:
        raise ValueError(f"unknown --tiling keys {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    kernel_config.TILING = dataclasses.replace(kernel_config.TilingLimits(), **tiling)


def tiling_label(tiling: dict[str, int]) -> str:
    """'k=v,...' of a --tiling override ('' for the defaults), recorded in every row."""
    return ",".join(f"{k}={v}" for k, v in sorted(tiling.items()))


def _cases(cfg: BenchConfig):
    """(m, n, dtype, op, provider, fn) for every selected combination a provider applies to."""
    for m, n in cfg.shapes:
        for dtype_name in cfg.dtypes:
            for op in cfg.ops:
                for provider in cfg.providers:
                    try:
                        fn = PROVIDERS[provider].build(OP_CASES[op])
                    except Exception as exc:  # e.g. a provider's package is broken
                        print(f"skip {op}/{provider}: {exc}", flush=True)
                        continue
                    if fn is not None:
                        yield m, n, dtype_name, op, provider, fn


def _progress_line(rows: list[dict]) -> str:
    return " ".join(
        f"{r['mode']} {r['median_ms']:.3f}ms" if r["check"] == "ok" else f"{r['mode']} {r['check']}" for r in rows
    )


def run(cfg: BenchConfig) -> list[dict]:
    """Measure every case of `cfg`, print the table, append the rows (unless cfg.write is False)."""
    from polycom.ops.backend import use_backend

    prepare_device(cfg)
    if "polycom" in cfg.providers:
        apply_tiling(cfg.tiling)
    timer = Timer(cfg.device, cfg.warmup_ms, cfg.rep_ms)
    biggest = max(m * n * torch.tensor([], dtype=DTYPES[d]).element_size() for m, n in cfg.shapes for d in cfg.dtypes)
    copy_gbps = copy_bandwidth_gbps(timer, biggest, cfg.device)
    env = dict(provenance_fields(cfg.device, cfg.commit, "liger_kernel"), copy_GBps=copy_gbps)
    if "polycom" in cfg.providers:
        from polycom.ops.triton import config as kernel_config

        env.update(tiling=tiling_label(cfg.tiling), kernel_variant=f"v{kernel_config.TILING.variant}")
    print(f"{env['card']}: copy bandwidth {copy_gbps:.0f} GB/s ({biggest / 2**20:.1f} MiB buffers)", flush=True)
    rows: list[dict] = []
    started = time.perf_counter()
    with use_backend("triton" if "polycom" in cfg.providers else "torch"):
        for m, n, dtype_name, op, provider, fn in _cases(cfg):
            label = f"{m}x{n} {dtype_name} {op} {provider}"
            print(f"[{time.perf_counter() - started:6.1f}s] {label} ...", flush=True)
            new = [dict(env, **r) for r in measure(op, provider, fn, m, n, dtype_name, cfg, timer, copy_gbps)]
            rows.extend(new)
            print(f"[{time.perf_counter() - started:6.1f}s] {label}: {_progress_line(new)}", flush=True)
            if new[0]["check"] != "ok":
                print(f"    {new[0]['check_detail']}", flush=True)
            if cfg.device == "cuda":
                torch.cuda.empty_cache()
    print_table(rows)
    if cfg.write and rows:
        append_rows(cfg.out_dir / "ops.jsonl", rows, CSV_FIELDS)
        print(f"appended {len(rows)} rows to {cfg.out_dir / 'ops.jsonl'} and ops.csv")
    return rows


__all__ = ["POLY_OPS", "BenchConfig", "make_config", "measure", "min_bytes", "run"]
