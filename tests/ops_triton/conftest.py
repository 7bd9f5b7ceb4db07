"""Device selection for the Triton kernel tests.

The kernel tests build their tensors without naming a device; an autouse fixture makes the kernel
device the default device for factory functions (``with torch.device(...)``):

- a GPU is present: CUDA tensors, so the compiled kernels run on the GPU;
- no GPU: CPU tensors, run by the Triton interpreter (``tests/conftest.py`` sets
  ``TRITON_INTERPRET=1`` before polycom is imported). These tests get the ``interpret`` marker, so
  ``pytest -m "not interpret"`` skips the slow interpreter runs.

A test in a kernel module that must see CPU tensors even on a GPU machine (e.g. the ``auto`` backend
choosing the reference for CPU tensors) carries ``@pytest.mark.cpu_tensors``. The benchmark harness
tests pass their devices explicitly and are left alone.
"""

from __future__ import annotations

import pytest
import torch

KERNEL_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
KERNEL_MODULES = frozenset({"test_triton_kernels_numerics.py", "test_triton_ops_dispatch_compile.py"})


def _runs_kernels(item: pytest.Item) -> bool:
    return item.path.name in KERNEL_MODULES and item.get_closest_marker("cpu_tensors") is None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if KERNEL_DEVICE.type == "cuda":
        return
    for item in items:
        if _runs_kernels(item):
            item.add_marker(pytest.mark.interpret)


@pytest.fixture(autouse=True)
def kernel_device(request: pytest.FixtureRequest):
    """The device the kernel tests' tensors are created on (also the default device while they run)."""
    if not _runs_kernels(request.node):
        yield torch.device("cpu")
        return
    with torch.device(KERNEL_DEVICE):
        yield KERNEL_DEVICE
