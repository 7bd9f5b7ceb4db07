"""Test-wide setup.

TRITON_INTERPRET must be set before any `@triton.jit` decorator runs, so it is set here, before
polycom is imported, whenever no GPU is present: CI then runs the Triton kernels on CPU tensors.
POLYCOM_CPU_COMPILE=0: the suite runs the closed form eagerly (see below).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The closed-form ops are compiled on CPU tensors inside training loops (polycom.ops.cpu_compile: train,
# compare, bench model); the suite runs them eagerly (a C++ build per function and process would dominate
# its time) and tests/core/test_cpu_compile.py runs the compiled path, the real Inductor build included.
# CLI subprocesses inherit this.
os.environ["POLYCOM_CPU_COMPILE"] = "0"

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
