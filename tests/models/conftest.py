"""Model tests run tiny models: one intra-op thread is as fast as two and immune to oversubscription.

On a busy 2-core runner, OpenMP threads spinning for tiny matmuls made these tests ~6x slower.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
