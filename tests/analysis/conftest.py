"""Analysis tests run torch single-threaded.

Their tensors are tiny; with two intra-op threads on a busy 2-core machine the OpenMP workers spin
and the suite took ~6x more CPU (113 s vs 17 s measured). The setting is restored after each test.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
