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

import torch
import triton


@dataclasses.dataclass(frozen=True)
class TilingLimits:
    """Upper bounds for the tile shapes (all powers of two)."""

    max_single_tile_fwd: int = 8192  # widest row kept whole in registers by the forward
    max_single_tile_bwd: int = 4096  # backward keeps ~3x more live fp32 vectors per element
    loop_tile_fwd: int = 4096  # column tile of the looped (wide-row) forward
    loop_tile_bwd: int = 2048  # column tile of the looped backward
    elements_per_program: int = 4096  # target tile size for narrow rows / elementwise kernels
    max_rows_per_program: int = 256
    elementwise_max_cols: int = 2048


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


def _warps_for(elements: int) -> int:
    if elements <= 1024:
        return 4
    if elements <= 4096:
        return 8
    return 16


def row_launch(m: int, n: int, backward: bool) -> RowLaunch:
    """Tile shape for a row reduction over ``n`` columns on ``m`` rows (m >= 1, n >= 1)."""
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
    return RowLaunch(block_m, block_n, single, _warps_for(block_m * block_n), (triton.cdiv(m, block_m),))


def elementwise_launch(m: int, n: int) -> ElementwiseLaunch:
    """2-D tile for an elementwise kernel over an (m, n) view with a row stride."""
    limits = TILING
    block_n = min(triton.next_power_of_2(n), limits.elementwise_max_cols)
    block_m = max(1, limits.elements_per_program // block_n)
    block_m = min(block_m, limits.max_rows_per_program, triton.next_power_of_2(m))
    return ElementwiseLaunch(
        block_m, block_n, _warps_for(block_m * block_n), (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    )


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 inputs compute in fp64, every other dtype in fp32 (same contract as the reference)."""
    return torch.float64 if dtype == torch.float64 else torch.float32
