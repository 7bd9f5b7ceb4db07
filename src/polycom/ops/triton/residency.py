"""How many CTAs of a compiled kernel fit on one SM, and the persistent grid that follows.

resident CTAs per SM = min(warp slots / warps per CTA, register file / registers per CTA,
shared memory / shared memory per CTA, max CTAs per SM), with the hardware's allocation granularity
(registers are allocated per warp in units of 256, i.e. per thread in units of 8). The persistent
kernels are launched with at most (resident CTAs per SM x SMs) programs: one wave, every program
resident (which the split-row path relies on: its programs wait for each other).

On the GPU the numbers come from the compiled kernel (``n_regs``, ``metadata.shared``) and the device
properties; `polycom bench ops --static` applies the same function to the cubin compiled for sm_90.
"""

from __future__ import annotations

import dataclasses
import functools

import torch


@dataclasses.dataclass(frozen=True)
class SmLimits:
    """Per-SM resources (defaults: sm_90 / H100 / H200)."""

    registers: int = 65536
    threads: int = 2048
    shared_bytes: int = 233472  # 228 KiB
    max_ctas: int = 32
    reserved_shared_per_cta: int = 1024  # the driver reserves 1 KiB of shared memory per CTA


SM90 = SmLimits()


def resident_ctas_per_sm(registers: int, shared_bytes: int, num_warps: int, sm: SmLimits = SM90) -> int:
    """CTAs of a kernel (registers per thread, shared memory per CTA, warps per CTA) resident on one SM."""
    per_warp_regs = ((max(registers, 1) * 32 + 255) // 256) * 256
    by_regs = (sm.registers // per_warp_regs) // num_warps
    by_threads = sm.threads // (32 * num_warps)
    by_shared = sm.shared_bytes // (shared_bytes + sm.reserved_shared_per_cta) if shared_bytes else sm.max_ctas
    return max(0, min(by_regs, by_threads, by_shared, sm.max_ctas))


@functools.cache
def device_limits(index: int) -> tuple[SmLimits, int]:
    """(SmLimits, SM count) of CUDA device `index` (sm_90 defaults for properties torch does not expose)."""
    props = torch.cuda.get_device_properties(index)
    limits = SmLimits(
        registers=getattr(props, "regs_per_multiprocessor", SM90.registers),
        threads=getattr(props, "max_threads_per_multi_processor", SM90.threads),
        shared_bytes=getattr(props, "shared_memory_per_multiprocessor", SM90.shared_bytes),
    )
    return limits, props.multi_processor_count


_RESIDENT: dict[tuple, int] = {}


def compiled_resident_slots(kernel, key: tuple, device: torch.device, args: tuple, kwargs: dict) -> int:
    """Resident programs (CTAs per SM x SMs) of `kernel` compiled for these arguments on a CUDA device.

    Compiles without launching (``JITFunction.warmup``) the first time a key is seen; cached by key.
    """
    index = device.index if device.index is not None else torch.cuda.current_device()
    full_key = (key, index)
    if full_key not in _RESIDENT:
        compiled = kernel.warmup(*args, grid=(1,), **kwargs)
        compiled._init_handles()  # fills n_regs / n_spills from the loaded module
        limits, sms = device_limits(index)
        per_sm = resident_ctas_per_sm(compiled.n_regs, compiled.metadata.shared, kwargs["num_warps"], limits)
        _RESIDENT[full_key] = max(1, per_sm) * sms
    return _RESIDENT[full_key]
