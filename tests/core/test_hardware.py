"""polycom.utils.hardware: the one peak-FLOPs table, device choice, autocast, peak memory."""

import pytest
import torch

from polycom.errors import UserError
from polycom.utils.hardware import autocast_context, matmul_dtype, peak_flops, peak_memory_mb, pick_device

CUDA = torch.device("cuda")


@pytest.mark.parametrize(
    "card, expected",
    [
        ("NVIDIA H100 80GB HBM3", 989e12),  # SXM: datasheet 1979 TF with sparsity
        ("NVIDIA H100 PCIe", 756e12),  # 1513 TF with sparsity
        ("NVIDIA H100 NVL", 835e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA H200 NVL", 835e12),
        ("NVIDIA GH200 480GB", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA L40S", 362e12),
        ("NVIDIA A10G", 70e12),  # AWS variant: not the A10's 125 TF
        ("NVIDIA A10", 125e12),
        ("Some Future GPU", None),
    ],
)
def test_peak_table_dense_bf16(card, expected):
    assert peak_flops(CUDA, torch.bfloat16, card=card) == expected
    assert peak_flops(CUDA, torch.float16, card=card) == expected


def test_peak_flops_none_on_cpu_and_for_fp32():
    assert peak_flops(torch.device("cpu"), torch.bfloat16, card="NVIDIA H100 80GB HBM3") is None
    assert peak_flops(CUDA, torch.float32, card="NVIDIA H100 80GB HBM3") is None


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="train.device 'gpu0' is not a device name"):
        pick_device("gpu0")
    with pytest.raises(UserError, match="--device 'nope' is not a device name"):
        pick_device("nope", option="--device")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU is available"):
            pick_device("cuda")


def test_matmul_dtype_and_autocast():
    cpu = torch.device("cpu")
    assert matmul_dtype(cpu, "auto") == torch.float32
    assert matmul_dtype(CUDA, "auto") == torch.bfloat16
    assert matmul_dtype(cpu, "bf16") == torch.bfloat16
    assert matmul_dtype(CUDA, "fp32") == torch.float32
    with pytest.raises(UserError, match="precision must be one of auto, fp32, bf16, got 'fp16'"):
        matmul_dtype(cpu, "fp16")
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast_context(cpu, "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with autocast_context(cpu, "auto"):
        assert (a @ b).dtype == torch.float32


def test_peak_memory_cpu_is_process_rss():
    mb, kind = peak_memory_mb(torch.device("cpu"))
    assert kind == "process_peak_rss"
    assert mb > 1.0
