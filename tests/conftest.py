"""Test-wide setup.

TRITON_INTERPRET must be set before any `@triton.jit` decorator runs, so it is set here, before
polycom is imported, whenever no GPU is present: CI then runs the Triton kernels on CPU tensors.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
