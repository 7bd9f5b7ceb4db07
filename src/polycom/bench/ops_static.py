"""`polycom bench ops --static`: compile the kernels the launcher would pick for sm_90, without a GPU,
and read each cubin's registers / stack / local memory (spills) with cuobjdump.

Uses Triton's compiler API (``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))``).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

import torch

from polycom.bench.op_cases import POLY_OPS
from polycom.errors import UserError

_STORAGE_PTRS = {"x_ptr", "up_ptr", "y_ptr", "dy_ptr", "dx_ptr", "dup_ptr"}
_ACC_PTRS = {"rstd_ptr", "part_ptr"}
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


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


def _kernel_choice(op: str, mode: str, m: int, n: int, elt: int, order: int, sms: int):
    """(kernel, constexprs, launch, layout text) the launcher would use for this op, mode and shape."""
    import triton
    import triton.language as tl

    from polycom.ops.triton import config as kcfg
    from polycom.ops.triton import polynorm_kernels, polyrelu_kernels

    gated = op.endswith("_gated")
    backward = mode == "bwd"
    if op.startswith("polynorm"):
        row_bytes = n * elt * ((3 if gated else 2) if backward else 1)
        launch = kcfg.row_launch(m, n, backward=backward, row_bytes=row_bytes, num_sms=sms)
        fn = polynorm_kernels.poly_norm_bwd_kernel if backward else polynorm_kernels.poly_norm_fwd_kernel
        constexprs = {
            "R": order, "RP": triton.next_power_of_2(order), "GATED": gated, "BLOCK_M": launch.block_m,
            "BLOCK_N": launch.block_n, "SINGLE_TILE": launch.single_tile, "ACC": tl.float32,
        }  # fmt: skip
        layout = f"{'single' if launch.single_tile else 'looped'} {launch.block_m}x{launch.block_n}"
    else:
        launch = kcfg.elementwise_launch(m, n)
        fn = polyrelu_kernels.poly_relu_bwd_kernel if backward else polyrelu_kernels.poly_relu_fwd_kernel
        constexprs = {
            "R": order, "GATED": gated, "BLOCK_M": launch.block_m, "BLOCK_N": launch.block_n, "ACC": tl.float32,
        }  # fmt: skip
        layout = f"tile {launch.block_m}x{launch.block_n}"
    return fn, constexprs, launch, layout


def _compile_and_read(fn, sig: dict, attrs: dict, constexprs: dict, num_warps: int) -> dict:
    """Compile for sm_90 and read registers, stack, local memory and 16-byte vector loads."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
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
    return {
        "registers": int(found[1]),
        "stack": int(found[2]),
        "local": int(found[4]),
        "vector_loads": len(re.findall(r"ld\.global(?:\.\w+)*\.v4", kernel.asm["ptx"])),
    }


def _describe(row: dict) -> str:
    head = f"{row['op']:15s} {row['mode']} {row['shape']} {row['dtype']} {row['layout']:20s} "
    head += f"warps {row['num_warps']:2d} grid {row['grid']}: "
    if "error" in row:
        return head + row["error"]
    return head + (
        f"{row['registers']} registers, stack {row['stack']} B, local {row['local']} B, "
        f"{row['vector_loads']} 16-byte loads"
    )


def static_resources(shapes, dtypes, ops, order: int, sms: int) -> list[dict]:
    """One row per (shape, dtype, PolyCom op, fwd/bwd): the chosen kernel layout and its cubin resources."""
    os.environ.pop("TRITON_INTERPRET", None)
    import triton

    from polycom.ops.triton import polynorm_kernels

    if not isinstance(polynorm_kernels.poly_norm_fwd_kernel, triton.runtime.JITFunction):
        raise UserError("--static compiles the kernels for sm_90: run it without TRITON_INTERPRET=1 in the environment")
    out = []
    for m, n in shapes:
        for dtype_name in dtypes:
            elt = torch.tensor([], dtype=_DTYPES[dtype_name]).element_size()
            for op in (op for op in ops if op in POLY_OPS):
                for mode in ("fwd", "bwd"):
                    fn, constexprs, launch, layout = _kernel_choice(op, mode, m, n, elt, order, sms)
                    sig, attrs = _kernel_signature(fn, dtype_name, "fp32", constexprs)
                    row = {"op": op, "mode": mode, "shape": f"{m}x{n}", "dtype": dtype_name, "layout": layout,
                           "num_warps": launch.num_warps, "grid": launch.grid}  # fmt: skip
                    try:
                        row.update(_compile_and_read(fn, sig, attrs, constexprs, launch.num_warps))
                    except Exception as exc:  # report the failure in the table, keep compiling the rest
                        row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                    print(_describe(row), flush=True)
                    out.append(row)
    return out
