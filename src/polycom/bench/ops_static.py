"""`polycom bench ops --static`: compile the kernels the launcher would pick for sm_90, without a GPU,
and report what decides their bandwidth before any GPU run.

Per kernel and benchmark shape: registers, spills (local memory / stack, from cuobjdump), shared memory,
resident CTAs per SM and warps per SM (`polycom.ops.triton.residency` on the cubin's numbers), grid vs
resident slots (waves), whether the loads are software-pipelined (``cp.async`` / TMA ``cp.async.bulk``
in the PTX), and a modelled HBM traffic in bytes per element against the minimum (inputs read once,
outputs written once). Uses Triton's compiler API (``triton.compile(ASTSource(...),
target=GPUTarget("cuda", 90, 32))``) and the ``cuobjdump`` Triton ships; no CUDA device is touched.

Traffic model: variant 2 reads every input once and writes every output once (split rows keep their
chunk in registers), plus the per-row statistics (r fp32 values per row; split rows also publish and
read back their partial sums). Variant 1's column loop re-reads its row in a second pass; that pass is
counted as HBM traffic when the rows in flight (grid x bytes per row) exceed the L2 budget.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import tempfile
from pathlib import Path

import torch

from polycom.bench.op_cases import POLY_OPS
from polycom.errors import UserError

_STORAGE_PTRS = {"x_ptr", "up_ptr", "y_ptr", "dy_ptr", "dx_ptr", "dup_ptr"}
_ACC_PTRS = {"rstd_ptr", "part_ptr", "scratch_ptr"}
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclasses.dataclass(frozen=True)
class KernelPlan:
    """What the launcher would run for one op, mode and shape."""

    fn: object
    constexprs: dict
    num_warps: int
    layout: str
    work: int  # row blocks x split (PolyNorm) or tiles (PolyReLU): the most programs that have work
    split: int  # programs per row (1 unless a variant 2 row is split)
    persistent: bool  # grid = min(work, resident slots) rounded to the split, else grid = v1_grid
    v1_grid: int
    stats_bytes_per_row: int  # rstd (and split-row partial sums) traffic per row, bytes
    reread_bytes_per_row: int  # variant 1 column loop: bytes the second pass re-reads per row


def _kernel_signature(fn, storage: str, acc: str, constexprs: dict) -> tuple[dict, dict]:
    """Triton signature and 16-divisibility attributes (what the launcher sees for aligned, 16-multiple shapes)."""
    sig, attrs = {}, {}
    for index, name in enumerate(fn.arg_names):
        if name in constexprs:
            sig[name] = "constexpr"
            continue
        if name == "count_ptr":
            sig[name] = "*i32"
        elif name.endswith("_ptr"):
            sig[name] = "*" + (storage if name in _STORAGE_PTRS else acc if name in _ACC_PTRS else "fp32")
        elif name == "eps":
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
        if name.endswith("_ptr") or name in ("M", "N") or name.startswith("stride"):
            attrs[(index,)] = [["tt.divisibility", 16]]
    return sig, attrs


def _polynorm_plan(mode: str, gated: bool, m: int, n: int, elt: int, order: int, sms: int) -> KernelPlan:
    import triton
    import triton.language as tl

    from polycom.ops.triton import config as kcfg
    from polycom.ops.triton import polynorm_kernels, polynorm_persistent

    backward = mode == "bwd"
    streams_reread = (3 if gated else 2) if backward else 1
    if kcfg.TILING.variant == 2:
        p = kcfg.persistent_row_launch(m, n, backward=backward, gated=gated)
        rp = triton.next_power_of_2(order + 1 if backward or p.split > 1 else order)  # as launch_persistent
        fn = (
            polynorm_persistent.poly_norm_bwd_persistent_kernel
            if backward
            else polynorm_persistent.poly_norm_fwd_persistent_kernel
        )
        cx = {"R": order, "RP": rp, "GATED": gated, "BLOCK_M": p.block_m, "BLOCK_N": p.block_n, "SPLIT": p.split,
              "SPLIT_P": triton.next_power_of_2(p.split),
              "PHASE": 2, "NUM_STAGES": p.num_stages, "ACC": tl.float32}  # fmt: skip
        if backward:
            cx.update(NEED_DX=True, NEED_DUP=gated, NEED_COEF=True)
        layout = f"v2 {p.block_m}x{p.block_n}" + (f" split {p.split}" if p.split > 1 else "") + f" st{p.num_stages}"
        stats = 4 * (order + 1) + (2 * p.split * rp * 4 if p.split > 1 else 0)  # r inverse RMS values and s per row
        return KernelPlan(fn, cx, p.num_warps, layout, p.blocks * p.split, p.split, True, 0, stats, 0)
    launch = kcfg.row_launch(m, n, backward=backward, row_bytes=n * elt * streams_reread, num_sms=sms)
    fn = polynorm_kernels.poly_norm_bwd_kernel if backward else polynorm_kernels.poly_norm_fwd_kernel
    cx = {"R": order, "RP": triton.next_power_of_2(order), "GATED": gated, "BLOCK_M": launch.block_m,
          "BLOCK_N": launch.block_n, "SINGLE_TILE": launch.single_tile, "ACC": tl.float32}  # fmt: skip
    layout = f"v1 {'single' if launch.single_tile else 'looped'} {launch.block_m}x{launch.block_n}"
    reread = 0 if launch.single_tile else n * elt * (streams_reread + (1 if gated and not backward else 0))
    return KernelPlan(
        fn, cx, launch.num_warps, layout, launch.grid[0], 1, False, launch.grid[0], 4 * (order + 1), reread
    )


def _polyrelu_plan(mode: str, gated: bool, m: int, n: int, order: int) -> KernelPlan:
    import triton
    import triton.language as tl

    from polycom.ops.triton import config as kcfg
    from polycom.ops.triton import polyrelu_kernels

    backward = mode == "bwd"
    t = kcfg.elementwise_launch(m, n)
    tiles = t.grid[0] * t.grid[1]
    cx = {"R": order, "GATED": gated, "BLOCK_M": t.block_m, "BLOCK_N": t.block_n, "ACC": tl.float32}
    if kcfg.TILING.variant == 2:
        fn = (
            polyrelu_kernels.poly_relu_bwd_persistent_kernel
            if backward
            else polyrelu_kernels.poly_relu_fwd_persistent_kernel
        )
        cx["NUM_STAGES"] = kcfg.TILING.num_stages
        if backward:
            cx.update(RP=triton.next_power_of_2(order + 1), NEED_DX=True, NEED_DUP=gated, NEED_COEF=True)
        layout = f"v2 tile {t.block_m}x{t.block_n} st{kcfg.TILING.num_stages}"
        return KernelPlan(fn, cx, t.num_warps, layout, tiles, 1, True, 0, 0, 0)
    fn = polyrelu_kernels.poly_relu_bwd_kernel if backward else polyrelu_kernels.poly_relu_fwd_kernel
    return KernelPlan(fn, cx, t.num_warps, f"v1 tile {t.block_m}x{t.block_n}", tiles, 1, False, tiles, 0, 0)


def _compile_and_read(plan: KernelPlan, storage: str) -> dict:
    """Compile for sm_90; registers, stack, local and shared memory, pipelined and 16-byte loads."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig, attrs = _kernel_signature(plan.fn, storage, "fp32", plan.constexprs)
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    src = ASTSource(fn=plan.fn, signature=sig, constexprs=plan.constexprs, attrs=attrs)
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": plan.num_warps})
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
        f.write(kernel.asm["cubin"])
    try:
        usage = subprocess.run(
            [str(cuobjdump), "--dump-resource-usage", f.name], capture_output=True, text=True, timeout=60
        ).stdout
    finally:
        os.unlink(f.name)
    found = re.search(r"REG:(\d+).*?STACK:(\d+).*?SHARED:(\d+).*?LOCAL:(\d+)", usage)
    if not found:
        raise RuntimeError(f"could not read cuobjdump output: {usage[:200]!r}")
    ptx = kernel.asm["ptx"]
    shared = max(int(found[3]), int(getattr(kernel.metadata, "shared", 0) or 0))
    return {
        "registers": int(found[1]),
        "stack": int(found[2]),
        "local": int(found[4]),
        "shared": shared,
        "cp_async": len(re.findall(r"cp\.async\.(?:ca|cg)\.shared", ptx)),
        "tma": len(re.findall(r"cp\.async\.bulk", ptx)),
        "vector_loads": len(re.findall(r"ld\.global(?:\.\w+)*\.v4", ptx)),
    }


def _occupancy(row: dict, plan: KernelPlan, sms: int, l2_budget: int, n: int, min_bytes: float) -> None:
    """Resident CTAs/SM, grid vs slots, and the modelled bytes per element (into row)."""
    from polycom.ops.triton import config as kcfg
    from polycom.ops.triton.residency import resident_ctas_per_sm

    per_sm = resident_ctas_per_sm(row["registers"], row["shared"], plan.num_warps)
    slots = max(1, per_sm) * sms
    grid = kcfg.persistent_grid(plan.work, plan.split, slots) if plan.persistent else plan.v1_grid
    reread = plan.reread_bytes_per_row if grid * plan.reread_bytes_per_row > l2_budget else 0
    row.update(
        ctas_per_sm=per_sm,
        warps_per_sm=per_sm * plan.num_warps,
        grid=grid,
        slots=slots,
        waves=grid / slots,
        bytes_per_elt=min_bytes + (plan.stats_bytes_per_row + reread) / n,
        min_bytes_per_elt=min_bytes,
    )


def _min_bytes_per_elt(op: str, mode: str, elt: int) -> float:
    gated = op.endswith("_gated")
    if mode == "fwd":
        return elt * (3 if gated else 2)  # x (+ up) read, y written
    return elt * (5 if gated else 3)  # x, dy (+ up) read, dx (+ d_up) written


def _pipelined(row: dict, split: int) -> str:
    if row["tma"]:
        return "TMA"
    if row["cp_async"]:
        return "cp.async"
    return "prefetch" if split > 1 else "no"  # split rows: next row block loaded by hand before the wait


def _describe(row: dict) -> str:
    head = (
        f"{row['op']:15s} {row['mode']} {row['shape']:>10s} {row['dtype']} {row['layout']:26s} w{row['num_warps']:<2d} "
    )
    if "error" in row:
        return head + row["error"]
    return head + (
        f"{row['registers']:3d} registers, local {row['local']} B, stack {row['stack']} B, shared "
        f"{row['shared'] / 1024:.0f} KiB, {row['ctas_per_sm']} CTAs/SM ({row['warps_per_sm']} warps), grid "
        f"{row['grid']} / {row['slots']} slots ({row['waves']:.2f} waves), pipelined {row['pipelined']}, "
        f"{row['bytes_per_elt']:.3f} B/elt (min {row['min_bytes_per_elt']:.0f})"
    )


def markdown_table(rows: list[dict]) -> str:
    """The rows as the Markdown table of docs/kernels.md."""
    lines = [
        "| kernel | shape | dtype | layout | warps | regs | spill B | smem KiB | CTAs/SM (warps) | grid / slots "
        "| pipelined | B/elt (min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['op']} {r['mode']} | {r['shape']} | {r['dtype']} | {r['layout']} | error: {r['error']} |"
            )
            continue
        lines.append(
            f"| {r['op']} {r['mode']} | {r['shape']} | {r['dtype']} | {r['layout']} | {r['num_warps']} "
            f"| {r['registers']} | {r['local'] + r['stack']} | {r['shared'] / 1024:.0f} "
            f"| {r['ctas_per_sm']} ({r['warps_per_sm']}) | {r['grid']} / {r['slots']} | {r['pipelined']} "
            f"| {r['bytes_per_elt']:.3f} ({r['min_bytes_per_elt']:.0f}) |"
        )
    return "\n".join(lines)


def static_resources(shapes, dtypes, ops, order: int, sms: int) -> list[dict]:
    """One row per (shape, dtype, PolyCom op, fwd/bwd): the chosen kernel plan, its cubin resources,
    residency, waves, pipelining and modelled traffic."""
    os.environ.pop("TRITON_INTERPRET", None)
    import triton

    from polycom.ops.triton import config as kcfg
    from polycom.ops.triton import polynorm_kernels

    if not isinstance(polynorm_kernels.poly_norm_fwd_kernel, triton.runtime.JITFunction):
        raise UserError("--static compiles the kernels for sm_90: run it without TRITON_INTERPRET=1 in the environment")
    out = []
    for m, n in shapes:
        for dtype_name in dtypes:
            elt = torch.tensor([], dtype=_DTYPES[dtype_name]).element_size()
            for op in (op for op in ops if op in POLY_OPS):
                gated = op.endswith("_gated")
                for mode in ("fwd", "bwd"):
                    if op.startswith("polynorm"):
                        plan = _polynorm_plan(mode, gated, m, n, elt, order, sms)
                    else:
                        plan = _polyrelu_plan(mode, gated, m, n, order)
                    row = {"op": op, "mode": mode, "shape": f"{m}x{n}", "dtype": dtype_name, "layout": plan.layout,
                           "num_warps": plan.num_warps, "triton": triton.__version__}  # fmt: skip
                    try:
                        row.update(_compile_and_read(plan, dtype_name))
                        _occupancy(row, plan, sms, kcfg.TILING.l2_budget_bytes, n, _min_bytes_per_elt(op, mode, elt))
                        row["pipelined"] = _pipelined(row, plan.split)
                    except Exception as exc:  # report the failure in the table, keep compiling the rest
                        row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                    print(_describe(row), flush=True)
                    out.append(row)
    return out
