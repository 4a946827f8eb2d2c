"""The one-thread fixture of the test modules that run tiny models: importing it into a module applies it there."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def single_torch_thread():
    """Tiny models run fastest on one thread; on a busy 2-core machine two threads contend (10-100x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
