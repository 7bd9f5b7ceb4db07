"""Op-level benchmark of the PolyCom activations (`polycom bench ops`; also `python benchmarks/bench_ops.py`).

For each shape (tokens x hidden), dtype, op and provider it first checks correctness against an fp64
evaluation of the formula on a slice of the rows (a provider that fails is reported as failed and never
timed), then times forward, backward and forward+backward and measures memory:

- times: median, p20, p80 over repetitions (CUDA events, L2 flushed before each repetition);
- effective bandwidth = minimum HBM traffic / median time, where the minimum traffic is
  fwd: inputs + output; bwd: inputs + grad_output + input grads; fwd+bwd: both;
- its fraction of the device-to-device copy bandwidth measured at the start of the same run;
- peak memory of one forward+backward above the inputs, and the memory a forward keeps alive.

Providers: ``polycom`` (our Triton kernels), ``eager`` (the official PolyCom formula in eager
PyTorch), ``ckpt`` (the same under `torch.utils.checkpoint`, as the official trainers do), ``compile``
(`torch.compile` of the official formula), ``liger`` (Liger-Kernel's PolyNorm, when installed), and
SwiGLU / ReLU^2 / GELU in eager and compiled form for scale.

Rows (card, versions, git commit, date) are appended to ``<out>/ops.jsonl`` and ``<out>/ops.csv``;
``--summarize`` prints a Markdown summary of the rows in a results file.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import io
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results"
EPS = 1e-6

FULL_SHAPES = ("8192x8192", "16384x5632", "4096x14336", "2048x65536")
QUICK_SHAPES = ("8192x8192", "2048x65536")
POLY_OPS = ("polynorm", "polyrelu", "polynorm_gated", "polyrelu_gated")
BASELINE_OPS = ("swiglu", "relu2", "gelu")
ALL_OPS = POLY_OPS + BASELINE_OPS
QUICK_OPS = ("polynorm", "polyrelu", "polynorm_gated")
POLY_PROVIDERS = ("polycom", "eager", "ckpt", "compile", "liger")
BASELINE_PROVIDERS = ("eager", "compile")
QUICK_PROVIDERS = ("polycom", "eager", "compile")
MODES = ("fwd", "bwd", "fwdbwd")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
GATED_OPS = ("polynorm_gated", "polyrelu_gated", "swiglu")
NO_COEFFICIENTS = BASELINE_OPS


# ------------------------------------------------------------------------------------ configuration


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


def _choose(values: Sequence[str] | None, allowed: Sequence[str], default: Sequence[str], what: str) -> list[str]:
    chosen = list(values) if values else list(default)
    unknown = [v for v in chosen if v not in allowed]
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(unknown)}; choose from {', '.join(allowed)}")
    return chosen


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    quick = args.quick
    shapes = [parse_shape(s) for s in (args.shapes or (QUICK_SHAPES if quick else FULL_SHAPES))]
    return BenchConfig(
        shapes=shapes,
        dtypes=_choose(args.dtypes, tuple(DTYPES), ("bf16",) if quick else tuple(DTYPES), "dtype"),
        ops=_choose(args.ops, ALL_OPS, QUICK_OPS if quick else ALL_OPS, "op"),
        providers=_choose(args.providers, POLY_PROVIDERS, QUICK_PROVIDERS if quick else POLY_PROVIDERS, "provider"),
        modes=_choose(args.modes, MODES, MODES, "mode"),
        order=args.order,
        warmup_ms=10.0 if quick else 25.0,
        rep_ms=40.0 if quick else 100.0,
        out_dir=Path(args.out),
        device=args.device,
        tiling=parse_tiling(args.tiling),
        write=not args.no_write,
        commit=args.commit,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help="reduced set for a short GPU session: 8192x8192 and 2048x65536, bf16, polynorm, polyrelu, polynorm_gated; polycom, eager, compile",
    )
    parser.add_argument("--shapes", nargs="+", metavar="MxN", help=f"tokens x hidden (default {' '.join(FULL_SHAPES)})")
    parser.add_argument("--dtypes", nargs="+", metavar="DTYPE", help="bf16 fp16 fp32 (default all)")
    parser.add_argument("--ops", nargs="+", metavar="OP", help=f"{' '.join(ALL_OPS)} (default all)")
    parser.add_argument("--providers", nargs="+", metavar="P", help=f"{' '.join(POLY_PROVIDERS)} (default all)")
    parser.add_argument("--modes", nargs="+", metavar="MODE", help="fwd bwd fwdbwd (default all)")
    parser.add_argument("--order", type=int, default=3, help="polynomial order r (default 3)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="folder for ops.jsonl / ops.csv")
    parser.add_argument("--no-write", action="store_true", help="print the table only, append no rows")
    parser.add_argument(
        "--tiling",
        metavar="K=V,...",
        help="override kernel tile limits (fields of polycom.ops.triton.config.TilingLimits)",
    )
    parser.add_argument(
        "--device",
        default="cuda",
        choices=("cuda", "cpu"),
        help="cuda (default). cpu only smoke-tests the harness on tiny shapes (Triton interpreter); no speed meaning",
    )
    parser.add_argument("--summarize", metavar="JSONL", help="print a Markdown summary of a results file and exit")
    parser.add_argument(
        "--static",
        action="store_true",
        help="no GPU needed: compile the kernels chosen for --shapes/--dtypes/--ops for sm_90 and print registers and "
        "spills (cubin resource usage); appends no rows",
    )
    parser.add_argument("--sms", type=int, default=132, help="SM count assumed by --static (H100 SXM: 132)")
    parser.add_argument(
        "--commit", help="git commit to record in the rows when the checkout has no .git (default: git rev-parse HEAD)"
    )


# ------------------------------------------------------------------------------------ formulas


def _official_norm(u: torch.Tensor, eps: float) -> torch.Tensor:
    return u * torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + eps)


def official_polynorm(x, w, b, eps=EPS):
    """The official PolyCom formula (math in the input dtype, fp32 coefficients), any order."""
    r = w.numel()
    out = b
    for i in range(1, r + 1):
        out = out + w[r - i] * _official_norm(x**i, eps)
    return out


def official_polyrelu(x, w, b):
    r = w.numel()
    t = F.relu(x)
    out = b
    for i in range(1, r + 1):
        out = out + w[r - i] * t**i
    return out


def exact_formula(op: str, inputs: Sequence[torch.Tensor], w, b):
    """The op evaluated in the dtype of its inputs (the check passes fp64 tensors)."""
    if op in ("polynorm", "polynorm_gated"):
        y = official_polynorm(inputs[0], w, b)
    elif op in ("polyrelu", "polyrelu_gated"):
        y = official_polyrelu(inputs[0], w, b)
    elif op == "swiglu":
        return F.silu(inputs[0]) * inputs[1]
    elif op == "relu2":
        return F.relu(inputs[0]).square()
    elif op == "gelu":
        return F.gelu(inputs[0])
    else:
        raise ValueError(op)
    return y * inputs[1] if op.endswith("_gated") else y


def _polycom_fn(op: str) -> Callable:
    import polycom

    table = {
        "polynorm": lambda ins, w, b: polycom.poly_norm(ins[0], w, b, EPS),
        "polyrelu": lambda ins, w, b: polycom.poly_relu(ins[0], w, b),
        "polynorm_gated": lambda ins, w, b: polycom.poly_norm_gated(ins[0], ins[1], w, b, EPS),
        "polyrelu_gated": lambda ins, w, b: polycom.poly_relu_gated(ins[0], ins[1], w, b),
    }
    return table[op]


def _reference32_fn(op: str) -> Callable:
    """polycom's torch reference (fp32 math, one cast): the accuracy yardstick of the 2x rule."""
    from polycom.ops import reference

    table = {
        "polynorm": lambda ins, w, b: reference.poly_norm_reference(ins[0], w, b, EPS),
        "polyrelu": lambda ins, w, b: reference.poly_relu_reference(ins[0], w, b),
        "polynorm_gated": lambda ins, w, b: reference.poly_norm_gated_reference(ins[0], ins[1], w, b, EPS),
        "polyrelu_gated": lambda ins, w, b: reference.poly_relu_gated_reference(ins[0], ins[1], w, b),
    }
    return table.get(op, lambda ins, w, b: exact_formula(op, [t.float() for t in ins], w, b).to(ins[0].dtype))


def _liger_fn(op: str) -> Callable | None:
    if op != "polynorm":
        return None
    try:
        from liger_kernel.ops.poly_norm import LigerPolyNormFunction
    except ImportError:
        try:
            from liger_kernel.ops import LigerPolyNormFunction
        except ImportError:
            return None

    def run(ins, w, b):
        try:
            return LigerPolyNormFunction.apply(ins[0], w, b, EPS, False)
        except TypeError:  # older signature without in_place
            return LigerPolyNormFunction.apply(ins[0], w, b, EPS)

    return run


def provider_fn(op: str, provider: str) -> Callable | None:
    """fn(inputs, weight, bias) -> output, or None when the provider does not apply / is not installed."""
    is_poly = op in POLY_OPS
    if provider == "polycom":
        return _polycom_fn(op) if is_poly else None
    if provider == "liger":
        return _liger_fn(op)
    if not is_poly and provider not in BASELINE_PROVIDERS:
        return None

    def eager(ins, w, b):
        return exact_formula(op, ins, w, b)

    if provider == "eager":
        return eager
    if provider == "ckpt":
        from torch.utils.checkpoint import checkpoint

        return lambda ins, w, b: checkpoint(eager, ins, w, b, use_reentrant=False)
    if provider == "compile":
        torch._dynamo.reset()  # fresh cache per case: no recompile limit, no automatic dynamic shapes
        return torch.compile(eager, dynamic=False)
    raise ValueError(provider)


# ------------------------------------------------------------------------------------ traffic model


def min_bytes(op: str, mode: str, m: int, n: int, dtype: torch.dtype) -> int:
    """Minimum HBM traffic: fwd reads the inputs and writes y; bwd reads inputs + dy, writes input grads."""
    s = m * n * torch.tensor([], dtype=dtype).element_size()
    k = 2 if op in GATED_OPS else 1  # number of (M, N) inputs
    fwd, bwd = (k + 1) * s, (2 * k + 1) * s
    return {"fwd": fwd, "bwd": bwd, "fwdbwd": fwd + bwd}[mode]


# ------------------------------------------------------------------------------------ timing


def quantiles(times_ms: Sequence[float]) -> dict[str, float]:
    """median, p20, p80 of a list of times (linear interpolation, like numpy's default)."""
    if not times_ms:
        raise ValueError("no timings")
    ts = sorted(times_ms)

    def q(p):
        pos = p * (len(ts) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(ts) - 1)
        return ts[lo] + (ts[hi] - ts[lo]) * (pos - lo)

    return {"median_ms": q(0.5), "p20_ms": q(0.2), "p80_ms": q(0.8)}


class Timer:
    """Times fn() per repetition; on CUDA with events after an L2 flush, on CPU with perf_counter."""

    def __init__(self, device: str, warmup_ms: float, rep_ms: float) -> None:
        self.device = device
        self.warmup_ms = warmup_ms
        self.rep_ms = rep_ms
        self._flush = torch.empty(256 * 2**20, dtype=torch.int8, device=device) if device == "cuda" else None

    def _sync(self):
        if self.device == "cuda":
            torch.cuda.synchronize()

    def __call__(self, fn: Callable[[], object], before: Callable[[], None] = lambda: None) -> dict[str, float]:
        before()
        fn()  # compile / autotune outside the timing
        self._sync()
        t0 = time.perf_counter()
        for _ in range(3):
            before()
            fn()
        self._sync()
        estimate_ms = max((time.perf_counter() - t0) * 1e3 / 3, 1e-3)
        for _ in range(max(1, int(self.warmup_ms / estimate_ms))):
            before()
            fn()
        min_reps = 10 if self.device == "cuda" else 2  # cpu: harness smoke test only
        reps = int(min(max(self.rep_ms / estimate_ms, min_reps), 1000))
        times = []
        if self.device == "cuda":
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
            for start, end in events:
                before()
                self._flush.zero_()
                start.record()
                fn()
                end.record()
            torch.cuda.synchronize()
            times = [s.elapsed_time(e) for s, e in events]
        else:
            for _ in range(reps):
                before()
                t = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t) * 1e3)
        return quantiles(times)


def copy_bandwidth_gbps(timer: Timer, nbytes: int, device: str) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    stats = timer(lambda: dst.copy_(src))
    return 2 * nbytes / (stats["median_ms"] * 1e-3) / 1e9


# ------------------------------------------------------------------------------------ correctness


@dataclasses.dataclass
class Check:
    ok: bool
    detail: str
    max_err: float  # worst error relative to the tensor's scale, over y and all gradients


def _grads_of(fn, inputs, w, b, dy, has_coeffs):
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    wl = w.detach().clone().requires_grad_(has_coeffs)
    bl = b.detach().clone().requires_grad_(has_coeffs)
    y = fn(leaves, wl, bl)
    y.backward(dy)
    out = [("y", y.detach())] + [(f"d{i}", t.grad) for i, t in enumerate(leaves)]
    if has_coeffs:
        out += [("dweight", wl.grad), ("dbias", bl.grad)]
    return dict(out)


def check_provider(op: str, provider: str, fn, inputs, w, b, dy) -> Check:
    """polycom: the issue's rule (error vs fp64 <= 2 x the fp32-math torch reference's error + 1 ulp of the
    scale). Other providers (baselines): a sanity bound of 5% of the scale (the official formula computes in
    the storage dtype, Liger is known to differ by ~1e-1 in bf16)."""
    has_coeffs = op not in NO_COEFFICIENTS
    try:
        ours = _grads_of(fn, inputs, w, b, dy, has_coeffs)
    except Exception as exc:  # a provider that crashes fails its check
        return Check(False, f"raised {type(exc).__name__}: {str(exc)[:200]}", math.inf)
    ref = _grads_of(_reference32_fn(op), inputs, w, b, dy, has_coeffs)

    def fp64(transform):
        return _grads_of(
            lambda ins, ww, bb: exact_formula(op, ins, ww, bb),
            [transform(t.double()) for t in inputs],
            transform(w.double()),
            transform(b.double()),
            transform(dy.double()),
            has_coeffs,
        )

    exact = fp64(lambda t: t)
    magnitude = fp64(torch.abs)
    worst, problems = 0.0, []
    for name, e in exact.items():
        o, t = ours[name], ref[name]
        finite = torch.isfinite(e)
        if not torch.isfinite(o[finite]).all():
            problems.append(f"{name} non-finite")
            continue
        scale_src = magnitude[name] if name in ("dweight", "dbias") else e
        scale = max(scale_src.abs().max().item(), 1e-30)
        err = (o.double() - e)[finite].abs().max().item()
        err_ref = (t.double() - e)[finite].abs().max().item()
        worst = max(worst, err / scale)
        if provider == "polycom":
            ulps = 1.0 if o.dtype in (torch.bfloat16, torch.float16) else 16.0
            tol = 2 * err_ref + ulps * torch.finfo(o.dtype).eps * scale
        else:
            tol = 0.05 * scale
        if err > tol:
            problems.append(f"{name} err {err:.3g} > tol {tol:.3g} (torch fp32-math err {err_ref:.3g})")
    return Check(not problems, "; ".join(problems) or "ok", worst)


# ------------------------------------------------------------------------------------ measuring


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


def _make_inputs(op, m, n, dtype, order, device, seed=0):
    """Random inputs generated on the device itself (CPU generation of 10^8 values would dominate the run)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    k = 2 if op in GATED_OPS else 1

    def randn():
        return torch.randn(m, n, generator=gen, device=device).to(dtype)

    inputs = [randn().requires_grad_(True) for _ in range(k)]
    dy = randn()
    w = torch.full((order,), 1.0 / order, device=device) + 0.1 * torch.randn(order, generator=gen, device=device)
    b = torch.full((1,), 0.05, device=device)
    return inputs, w.requires_grad_(True), b.requires_grad_(True), dy


def _time_backward(timer: Timer, fn, inputs, w, b, dy, clear_grads) -> dict[str, float]:
    """Backward alone: a fresh forward runs before each repetition, outside the timed region (no
    retain_graph, which compiled backwards with donated buffers refuse)."""
    state = {}

    def fresh_forward():
        clear_grads()
        state["y"] = fn(inputs, w, b)

    return timer(lambda: state.pop("y").backward(dy), before=fresh_forward)


def measure(op, provider, fn, m, n, dtype_name, cfg: BenchConfig, timer: Timer, copy_gbps: float) -> list[dict]:
    """Rows for one (op, provider, shape, dtype): a failed check gives one row without timings."""
    dtype = DTYPES[dtype_name]
    base = {"op": op, "provider": provider, "tokens": m, "hidden": n, "dtype": dtype_name, "order": cfg.order}
    inputs, w, b, dy = _make_inputs(op, m, n, dtype, cfg.order, cfg.device)
    # The check runs on the timed shape itself (same kernel configuration, full coefficient-grad sums).
    check = check_provider(op, provider, fn, inputs, w, b, dy)
    base.update({"check": "ok" if check.ok else "FAILED", "check_detail": check.detail, "max_rel_err": check.max_err})
    if not check.ok:
        return [dict(base, mode=mode) for mode in cfg.modes]
    leaves = (*inputs, w, b)

    def clear_grads():
        for t in leaves:
            t.grad = None

    rows = []
    memory = _memory(fn, inputs, w, b, dy, cfg.device)
    for mode in cfg.modes:
        try:
            if mode == "fwd":
                stats = timer(lambda: fn(inputs, w, b))
            elif mode == "bwd":
                stats = _time_backward(timer, fn, inputs, w, b, dy, clear_grads)
            else:
                stats = timer(lambda: fn(inputs, w, b).backward(dy), before=clear_grads)
        except Exception as exc:  # keep going: record why this mode has no timing
            rows.append(dict(base, mode=mode, check="ERROR", check_detail=f"{type(exc).__name__}: {str(exc)[:300]}"))
            continue
        finally:
            clear_grads()
        nbytes = min_bytes(op, mode, m, n, dtype)
        gbps = nbytes / (stats["median_ms"] * 1e-3) / 1e9
        rows.append(dict(base, mode=mode, **stats, min_bytes=nbytes, GBps=gbps, frac_copy=gbps / copy_gbps, **memory))
    return rows


# ------------------------------------------------------------------------------------ environment, output


def environment(device: str, copy_gbps: float, commit: str | None = None) -> dict[str, object]:
    from polycom.utils.provenance import git_commit, module_version

    commit = commit or git_commit(REPO_ROOT)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "card": torch.cuda.get_device_name() if device == "cuda" else "cpu (harness smoke test, no speed meaning)",
        "torch": torch.__version__,
        "triton": module_version("triton"),
        "cuda": torch.version.cuda,
        "liger_kernel": module_version("liger_kernel"),
        "git_commit": commit or "unknown",
        "copy_GBps": copy_gbps,
    }


CSV_FIELDS = [
    "date",
    "card",
    "torch",
    "triton",
    "cuda",
    "liger_kernel",
    "git_commit",
    "op",
    "provider",
    "tokens",
    "hidden",
    "dtype",
    "order",
    "mode",
    "check",
    "median_ms",
    "p20_ms",
    "p80_ms",
    "min_bytes",
    "GBps",
    "copy_GBps",
    "frac_copy",
    "peak_MiB",
    "fwd_kept_MiB",
    "max_rel_err",
    "check_detail",
]


def _atomic_append(path: Path, text: str) -> None:
    """Append by rewriting into a temp file in the same folder and os.replace (never a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.exists() else ""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(old + text)
    os.replace(tmp, path)


def append_rows(out_dir: Path, rows: list[dict]) -> None:
    _atomic_append(out_dir / "ops.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    csv_path = out_dir / "ops.csv"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    if not csv_path.exists():
        writer.writeheader()
    writer.writerows(rows)
    _atomic_append(csv_path, buf.getvalue())


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def print_table(rows: list[dict]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain fallback
        for r in rows:
            print(r)
        return
    table = Table(title="polycom bench ops")
    for col in ("shape", "dtype", "op", "provider", "mode", "median ms", "p20", "p80", "GB/s", "% copy", "peak MiB"):
        table.add_column(col, justify="right" if col not in ("op", "provider", "mode") else "left")
    for r in rows:
        if r["check"] != "ok":
            cells = [f"{r['tokens']}x{r['hidden']}", r["dtype"], r["op"], r["provider"], r["mode"]]
            table.add_row(*cells, f"check {r['check']}", "", "", "", "", "")
            continue
        table.add_row(
            f"{r['tokens']}x{r['hidden']}",
            r["dtype"],
            r["op"],
            r["provider"],
            r["mode"],
            _fmt(r["median_ms"], ".3f"),
            _fmt(r["p20_ms"], ".3f"),
            _fmt(r["p80_ms"], ".3f"),
            _fmt(r["GBps"], ".0f"),
            _fmt(100 * r["frac_copy"], ".1f"),
            _fmt(r.get("peak_MiB"), ".0f"),
        )
    Console().print(table)


def summarize(path: Path) -> str:
    """Markdown summary of a results file: fraction of copy bandwidth per (card, shape, dtype, op, provider)."""
    if not path.exists():
        raise FileNotFoundError(f"results file {path} does not exist")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        return "(no rows)"
    lines = [
        "| card | commit | shape | dtype | op | provider | fwd ms | fwd % copy | fwd+bwd ms | fwd+bwd % copy | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        key = (r["card"], r["git_commit"], f"{r['tokens']}x{r['hidden']}", r["dtype"], r["op"], r["provider"])
        groups.setdefault(key, {})[r["mode"]] = r
    for key, by_mode in groups.items():
        f, fb = by_mode.get("fwd", {}), by_mode.get("fwdbwd", {})
        if any(r.get("check") != "ok" for r in by_mode.values()):
            lines.append("| " + " | ".join(key) + " | check FAILED | | | | |")
            continue

        def pct(r):
            return _fmt(100 * r["frac_copy"], ".1f") if r else "-"

        lines.append(
            "| " + " | ".join(key) + f" | {_fmt(f.get('median_ms'), '.3f')} | {pct(f)} | "
            f"{_fmt(fb.get('median_ms'), '.3f')} | {pct(fb)} | {_fmt(fb.get('peak_MiB'), '.0f')} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ static resources


_STORAGE_PTRS = {"x_ptr", "up_ptr", "y_ptr", "dy_ptr", "dx_ptr", "dup_ptr"}
_ACC_PTRS = {"rstd_ptr", "part_ptr"}


def _kernel_signature(fn, storage: str, acc: str, constexprs: dict) -> tuple[dict, dict]:
    """Triton signature and 16-divisibility attributes (what the launcher sees for aligned, 16-multiple shapes)."""
    sig, attrs = {}, {}
    for index, name in enumerate(fn.arg_names):
        if name in constexprs:
            sig[name] = "constexpr"
            continue
        if name.endswith("_ptr"):
            sig[name] = "*" + (storage if name in _STORAGE_PTRS else acc if name in _ACC_PTRS else "fp32")
        elif name == "eps":
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
        if name.endswith("_ptr") or name in ("M", "N") or name.startswith("stride"):
            attrs[(index,)] = [["tt.divisibility", 16]]
    return sig, attrs


def static_resources(shapes, dtypes, ops, order: int, sms: int) -> list[dict]:
    """Compile each kernel configuration the launcher would pick for sm_90 (no GPU) and read the cubin's
    registers / stack / local memory with cuobjdump. Uses Triton's compiler API (ASTSource, GPUTarget)."""
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from polycom.ops.triton import config as kcfg
    from polycom.ops.triton import polynorm_kernels, polyrelu_kernels

    if not isinstance(polynorm_kernels.poly_norm_fwd_kernel, triton.runtime.JITFunction):
        from polycom.errors import UserError

        raise UserError("--static compiles the kernels for sm_90: run it without TRITON_INTERPRET=1 in the environment")
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    target = GPUTarget("cuda", 90, 32)
    storage_names = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}
    out = []
    for m, n in shapes:
        for dtype_name in dtypes:
            elt = torch.tensor([], dtype=DTYPES[dtype_name]).element_size()
            for op in ops:
                if op not in POLY_OPS:
                    continue
                gated = op.endswith("_gated")
                for mode in ("fwd", "bwd"):
                    if op.startswith("polynorm"):
                        backward = mode == "bwd"
                        row_bytes = n * elt * ((3 if gated else 2) if backward else 1)
                        launch = kcfg.row_launch(m, n, backward=backward, row_bytes=row_bytes, num_sms=sms)
                        fn = (
                            polynorm_kernels.poly_norm_bwd_kernel if backward else polynorm_kernels.poly_norm_fwd_kernel
                        )
                        constexprs = {
                            "R": order, "RP": triton.next_power_of_2(order), "GATED": gated, "BLOCK_M": launch.block_m,
                            "BLOCK_N": launch.block_n, "SINGLE_TILE": launch.single_tile, "ACC": tl.float32,
                        }  # fmt: skip
                        layout = f"{'single' if launch.single_tile else 'looped'} {launch.block_m}x{launch.block_n}"
                    else:
                        launch = kcfg.elementwise_launch(m, n)
                        fn = (
                            polyrelu_kernels.poly_relu_bwd_kernel
                            if mode == "bwd"
                            else polyrelu_kernels.poly_relu_fwd_kernel
                        )
                        constexprs = {
                            "R": order, "GATED": gated, "BLOCK_M": launch.block_m, "BLOCK_N": launch.block_n,
                            "ACC": tl.float32,
                        }  # fmt: skip
                        layout = f"tile {launch.block_m}x{launch.block_n}"
                    sig, attrs = _kernel_signature(fn, storage_names[dtype_name], "fp32", constexprs)
                    row = {"op": op, "mode": mode, "shape": f"{m}x{n}", "dtype": dtype_name, "layout": layout,
                           "num_warps": launch.num_warps, "grid": launch.grid}  # fmt: skip
                    try:
                        src = ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
                        kernel = triton.compile(src, target=target, options={"num_warps": launch.num_warps})
                        with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
                            f.write(kernel.asm["cubin"])
                        usage = subprocess.run(
                            [str(cuobjdump), "--dump-resource-usage", f.name],
                            capture_output=True,
                            text=True,
                            timeout=60,
                        ).stdout
                        os.unlink(f.name)
                        found = re.search(r"REG:(\d+).*?STACK:(\d+).*?SHARED:(\d+).*?LOCAL:(\d+)", usage)
                        if not found:
                            raise RuntimeError(f"could not read cuobjdump output: {usage[:200]!r}")
                        row.update(registers=int(found[1]), stack=int(found[2]), local=int(found[4]))
                        row["vector_loads"] = len(re.findall(r"ld\.global(?:\.\w+)*\.v4", kernel.asm["ptx"]))
                    except Exception as exc:
                        row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                    print(
                        f"{op:15s} {mode} {m}x{n} {dtype_name} {layout:20s} warps {launch.num_warps:2d} grid {launch.grid}: "
                        + (row.get("error") or f"{row['registers']} registers, stack {row['stack']} B, local "
                           f"{row['local']} B, {row['vector_loads']} 16-byte loads"),
                        flush=True,
                    )  # fmt: skip
                    out.append(row)
    return out


# ------------------------------------------------------------------------------------ main


def _prepare_device(cfg: BenchConfig) -> None:
    from polycom.errors import UserError
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


def _apply_tiling(tiling: dict[str, int]) -> None:
    if not tiling:
        return
    from polycom.ops.triton import config as kernel_config

    fields = {f.name for f in dataclasses.fields(kernel_config.TilingLimits)}
    unknown = sorted(set(tiling) - fields)
    if unknown:
        raise ValueError(f"unknown --tiling keys {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    kernel_config.TILING = dataclasses.replace(kernel_config.TILING, **tiling)


def run(cfg: BenchConfig) -> list[dict]:
    import polycom

    _prepare_device(cfg)
    if "polycom" in cfg.providers:
        _apply_tiling(cfg.tiling)
    timer = Timer(cfg.device, cfg.warmup_ms, cfg.rep_ms)
    biggest = max(m * n * torch.tensor([], dtype=DTYPES[d]).element_size() for m, n in cfg.shapes for d in cfg.dtypes)
    copy_gbps = copy_bandwidth_gbps(timer, biggest, cfg.device)
    env = environment(cfg.device, copy_gbps, cfg.commit)
    print(f"{env['card']}: copy bandwidth {copy_gbps:.0f} GB/s ({biggest / 2**20:.0f} MiB buffers)", flush=True)
    rows: list[dict] = []
    started = time.perf_counter()
    with polycom.use_backend("triton" if "polycom" in cfg.providers else "torch"):
        for m, n in cfg.shapes:
            for dtype_name in cfg.dtypes:
                for op in cfg.ops:
                    for provider in cfg.providers:
                        try:
                            fn = provider_fn(op, provider)
                        except Exception as exc:  # e.g. triton missing for polycom
                            print(f"skip {op}/{provider}: {exc}", flush=True)
                            continue
                        if fn is None:
                            continue
                        new = measure(op, provider, fn, m, n, dtype_name, cfg, timer, copy_gbps)
                        new = [dict(env, **r) for r in new]
                        rows.extend(new)
                        done = " ".join(
                            f"{r['mode']} {r['median_ms']:.3f}ms" if r["check"] == "ok" else f"{r['mode']} {r['check']}"
                            for r in new
                        )
                        elapsed = time.perf_counter() - started
                        print(f"[{elapsed:6.1f}s] {m}x{n} {dtype_name} {op} {provider}: {done}", flush=True)
                        if new[0]["check"] != "ok":
                            print(f"    {new[0]['check_detail']}", flush=True)
                        if cfg.device == "cuda":
                            torch.cuda.empty_cache()
    print_table(rows)
    if cfg.write and rows:
        append_rows(cfg.out_dir, rows)
        print(f"appended {len(rows)} rows to {cfg.out_dir / 'ops.jsonl'} and ops.csv")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_ops", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    return handle(args)


def handle(args: argparse.Namespace) -> int:
    if args.summarize:
        print(summarize(Path(args.summarize)))
        return 0
    cfg = config_from_args(args)
    if args.static:
        rows = static_resources(cfg.shapes, cfg.dtypes, [op for op in cfg.ops if op in POLY_OPS], cfg.order, args.sms)
        return 1 if any("error" in r for r in rows) else 0
    rows = run(cfg)
    return 1 if any(r["check"] != "ok" and r["provider"] == "polycom" for r in rows) else 0


if __name__ == "__main__":
    from polycom.errors import UserError

    try:
        sys.exit(main())
    except (UserError, ValueError, FileNotFoundError) as exc:
        print(f"bench_ops: error: {exc}", file=sys.stderr)
        sys.exit(2)
