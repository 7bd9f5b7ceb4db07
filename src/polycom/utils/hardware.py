"""Device facts shared by training, benchmarks and the CLI: device choice, autocast, peak FLOP/s, peak memory.

device = pick_device("auto")                      # cuda when a GPU is visible, else cpu
dtype = matmul_dtype(device, "auto")             # bf16 on CUDA, fp32 on CPU
with autocast_context(device, "auto"): ...        # bf16 autocast, or nothing for fp32
mfu = flops_per_token * tokens_per_s / peak_flops(device, dtype)   # peak_flops is None when unknown
"""

from __future__ import annotations

import contextlib
import resource

import torch

from polycom.errors import UserError

# Dense (no 2:4 sparsity) bf16/fp16 tensor-core peak FLOP/s per GPU, matched case-insensitively as a
# substring of torch.cuda.get_device_name; the first hit wins, so longer names come before their prefixes
# ("GH200" before "H200", "H100 PCIe" before "H100", "A10G" before "A10"). Sources: NVIDIA datasheets,
# which print the sparse figure; the dense one is half of it (H100 SXM 1979 -> 989 TF, H100 PCIe 1513 ->
# 756 TF, H100 NVL 1671 -> 835 TF, H200 SXM 1979 -> 989 TF, H200 NVL 1671 -> 835 TF, A100 624 -> 312 TF,
# L40S 733 -> 362 TF, A10 250 -> 125 TF). The A10G is AWS's variant of the A10 with lower tensor
# throughput: 70 TF dense bf16 (Baseten, "NVIDIA A10 vs A10G for ML model inference", spec table; a bf16
# 10240^2 matmul measures 69.5 TF on an A10G in zzc0721/torch-performance-test-data issue 126), so it
# must not fall under the A10 row.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989e12),
    ("H200 NVL", 835e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 70e12),
    ("A10", 125e12),
)

PRECISIONS = ("auto", "fp32", "bf16")


def pick_device(name: str, *, option: str = "train.device") -> torch.device:
    """`name` ("auto", "cpu", "cuda", "cuda:N") as a torch.device; "auto" = cuda when available.

    UserError naming `option` for a malformed name or a CUDA device on a machine without a GPU.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"{option} {name!r} is not a device name (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{option}={name} but no CUDA GPU is available")
    return device


def matmul_dtype(device: torch.device, precision: str) -> torch.dtype:
    """Matmul dtype of a run: bf16 for precision "bf16", or "auto" on CUDA; fp32 otherwise."""
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.bfloat16 if use_bf16 else torch.float32


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """torch.autocast to bf16 when `matmul_dtype` is bf16, else a no-op context (plain fp32).

    The returned object is reusable: enter it once per forward.
    """
    if matmul_dtype(device, precision) != torch.bfloat16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def peak_flops(device: torch.device, dtype: torch.dtype = torch.bfloat16, *, card: str | None = None) -> float | None:
    """Dense tensor-core peak FLOP/s of `device` for 16-bit (bf16/fp16) matmuls, from PEAK_BF16_FLOPS.

    None on CPU, for other dtypes (the table holds 16-bit peaks only) and for cards not in the table.
    `card` overrides the device name (default: torch.cuda.get_device_name(device)).
    """
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return None
    name = (card if card is not None else torch.cuda.get_device_name(device)).lower()
    for key, flops in PEAK_BF16_FLOPS:
        if key.lower() in name:
            return flops
    return None


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """(peak memory in MiB, what was measured): CUDA max allocated, or the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    # Linux reports ru_maxrss in KiB: the peak resident memory of the whole process.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_peak_rss"
