"""Launch configuration (block sizes, warps) for the PolyCom Triton kernels.

The configurations are chosen by fixed rules rather than `triton.autotune`: the kernels must also
run in the Triton CPU interpreter (which cannot autotune over several configs), the choice must be
deterministic, and the first call must not pay for a tuning sweep. The rules follow the design
notes in docs/kernels.md:

- row kernels (PolyNorm): a row of up to ``max_single_tile`` columns is handled as one register tile
  (x read once); wider rows loop over column tiles of ``loop_tile`` (two passes, the second mostly
  hitting L2), so there is no whole-row-in-registers spill cliff; narrow rows are packed several per
  program so that each program moves at least ``elements_per_program`` elements;
- elementwise kernels (PolyReLU): 2-D tiles of about ``elements_per_program`` elements.

`TILING` is a module attribute so tests can shrink the tiles (e.g. force the looped path on a 5000
column row in the interpreter) with ``monkeypatch.setattr(config, "TILING", TilingLimits(...))``.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import torch
import triton


@dataclasses.dataclass(frozen=True)
class TilingLimits:
    """Upper bounds for the tile shapes (all powers of two) and the L2 budget of the looped path.

    Register use on sm_90 (Triton 3.9 cubin, bf16, r = 3; no spills): forward single tile 8192 / 16
    warps 46-56 registers, 16384 / 16 warps 79-97; backward single tile 8192 / 16 warps 77-108,
    16384 spills when gated, hence the lower backward limit.
    """

    max_single_tile_fwd: int = 16384  # widest row kept whole in registers by the forward
    max_single_tile_bwd: int = 8192  # backward keeps ~2x more live fp32 vectors per element
    loop_tile_fwd: int = 8192  # column tile of the looped (wide-row) forward
    loop_tile_bwd: int = 8192  # column tile of the looped backward
    elements_per_program: int = 4096  # target tile size for narrow rows / elementwise kernels
    max_rows_per_program: int = 256
    elementwise_max_cols: int = 2048
    # Looped path: at most this many bytes of rows in flight (all programs together), so that the
    # second pass over a row still finds it in L2 (H100/H200 L2: 50 MiB; keep a safety margin).
    l2_budget_bytes: int = 24 * 2**20
    # Kernel variant: 1 = one program per row block (wide rows: two-pass column loop), 2 = persistent
    # pipelined grid sized from residency, wide rows split across co-resident programs. Both stay
    # selectable (POLYCOM_KERNEL_VARIANT=v1|v2) until GPU measurements decide between them.
    variant: int = dataclasses.field(default_factory=lambda: _variant_from_env())
    num_warps_fwd: int = 0  # 0: the rule of _warps_for (about 16 elements per thread)
    num_warps_bwd: int = 0  # 0: the rule of _warps_for (about 8 elements per thread)
    num_stages: int = 2  # software-pipelining depth of the persistent row / tile loops (variant 2)
    # The PolyNorm backward's row loop: 3 stages hold the next two row blocks in shared memory; at 8192
    # columns / 32 warps that is what keeps it within 64 registers without spills (2 stages: 8-16 bytes of
    # stack since the row scaling; `polycom bench ops --static`). Split rows prefetch by hand either way.
    num_stages_bwd: int = 3
    split_tile_fwd: int = 8192  # variant 2: column chunk per program for rows wider than max_single_tile_fwd
    split_tile_bwd: int = 2048  # variant 2: the same for the backward (max_single_tile_bwd[_gated])
    max_single_tile_bwd_gated: int = 4096  # variant 2 gated backward: wider rows are split (see below)


def _variant_from_env() -> int:
    value = os.environ.get("POLYCOM_KERNEL_VARIANT", "v2").strip().lower().lstrip("v")
    if value not in ("1", "2"):
        raise ValueError(f"POLYCOM_KERNEL_VARIANT must be v1 or v2, got {os.environ['POLYCOM_KERNEL_VARIANT']!r}")
    return int(value)


TILING = TilingLimits()


@dataclasses.dataclass(frozen=True)
class RowLaunch:
    """How a (M, N) row-reduction kernel is launched."""

    block_m: int
    block_n: int
    single_tile: bool
    num_warps: int
    grid: tuple[int]


@dataclasses.dataclass(frozen=True)
class ElementwiseLaunch:
    block_m: int
    block_n: int
    num_warps: int
    grid: tuple[int, int]


def _warps_for(elements: int, backward: bool = False, max_warps: int = 16) -> int:
    """4..max_warps warps: ~16 elements per thread forward, ~8 backward (more live fp32 values per element)."""
    per_thread = 8 if backward else 16
    return max(4, min(max_warps, triton.next_power_of_2(max(1, elements // (32 * per_thread)))))


def row_launch(m: int, n: int, backward: bool, row_bytes: int = 0, num_sms: int = 1) -> RowLaunch:
    """Tile shape and grid for a row reduction over ``n`` columns on ``m`` rows (m >= 1, n >= 1).

    row_bytes: bytes one row re-reads in the second pass of the looped path (x, plus dy and up in the
    backward); num_sms: streaming multiprocessors of the device. The looped path runs a persistent
    grid of max(num_sms, l2_budget / row_bytes) programs (each loops over rows); the single-tile path
    one program per block of rows.
    """
    limits = TILING
    single_max = limits.max_single_tile_bwd if backward else limits.max_single_tile_fwd
    loop_tile = limits.loop_tile_bwd if backward else limits.loop_tile_fwd
    n_pow2 = triton.next_power_of_2(n)
    single = n_pow2 <= single_max
    block_n = n_pow2 if single else loop_tile
    block_m = 1
    if single:
        block_m = max(1, limits.elements_per_program // block_n)
        block_m = min(block_m, limits.max_rows_per_program, triton.next_power_of_2(m))
    blocks = triton.cdiv(m, block_m)
    grid = blocks
    if not single:
        in_flight = max(num_sms, limits.l2_budget_bytes // max(row_bytes, 1))
        grid = max(1, min(blocks, in_flight))
    return RowLaunch(block_m, block_n, single, _warps_for(block_m * block_n, backward), (grid,))


@dataclasses.dataclass(frozen=True)
class PersistentRowLaunch:
    """Variant 2 row kernels: BLOCK_M rows x BLOCK_N columns per step; a row is cut into `split`
    chunks of BLOCK_N columns (1: the whole row is one tile); `blocks` row blocks to process."""

    block_m: int
    block_n: int
    split: int
    num_warps: int
    num_stages: int
    blocks: int


def persistent_row_launch(m: int, n: int, backward: bool, gated: bool = False) -> PersistentRowLaunch:
    """Tile shape of the persistent (variant 2) PolyNorm kernels for an (m, n) problem; the grid comes
    from the compiled kernel's residency (`persistent_grid`).

    Rows up to max_single_tile_* columns are one register tile; wider rows are split into chunks of
    split_tile_* columns. Warps: a single tile runs up to 32 warps, 8 elements per thread, forward and
    backward (<= 64 registers, i.e. 32 resident warps per SM; with the row scaling the 16-warp forward
    needs 77-97 registers at 8192-16384 columns, one 16-warp CTA per SM, and the 16-warp backward
    ~96-128). The gated backward does not fit 64 registers at 8192 columns, so its
    wider rows are split (max_single_tile_bwd_gated). Split chunks: 16 elements per thread forward, 8
    backward (the hand prefetch of the next rows needs registers); backward chunks of 2048 columns keep
    two CTAs per SM without spills with Triton 3.6 and 3.9 (`polycom bench ops --static`).
    """
    limits = TILING
    if backward:
        single_max = limits.max_single_tile_bwd_gated if gated else limits.max_single_tile_bwd
    else:
        single_max = limits.max_single_tile_fwd
    n_pow2 = triton.next_power_of_2(n)
    if n_pow2 <= single_max:
        block_n, split = n_pow2, 1
        block_m = max(1, limits.elements_per_program // block_n)
        block_m = min(block_m, limits.max_rows_per_program, triton.next_power_of_2(m))
        rule = _warps_for(block_m * block_n, backward=True, max_warps=32)  # 8 elements per thread, both ways
    else:
        split_tile = limits.split_tile_bwd if backward else limits.split_tile_fwd
        block_n = triton.next_power_of_2(min(split_tile, single_max))
        block_m, split = 1, triton.cdiv(n, block_n)
        rule = _warps_for(block_n, backward)
    override = limits.num_warps_bwd if backward else limits.num_warps_fwd
    stages = limits.num_stages_bwd if backward else limits.num_stages
    return PersistentRowLaunch(block_m, block_n, split, override or rule, stages, triton.cdiv(m, block_m))


def persistent_grid(work: int, split: int, resident_slots: int) -> int:
    """Programs of a persistent launch: at most one wave (resident_slots), a multiple of `split`, no more
    than the work (row blocks x split). Callers check ``resident_slots >= split`` where programs wait."""
    lanes = max(1, resident_slots // split)
    return min(work, lanes) * split


def elementwise_launch(m: int, n: int) -> ElementwiseLaunch:
    """2-D tile for an elementwise kernel over an (m, n) view with a row stride."""
    limits = TILING
    block_n = min(triton.next_power_of_2(n), limits.elementwise_max_cols)
    block_m = max(1, limits.elements_per_program // block_n)
    block_m = min(block_m, limits.max_rows_per_program, triton.next_power_of_2(m))
    return ElementwiseLaunch(
        block_m, block_n, _warps_for(block_m * block_n), (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    )


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 2 on CPU (interpreter), so tests exercise the
    persistent row loop with few programs."""
    if device.type != "cuda":
        return 2
    return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count
