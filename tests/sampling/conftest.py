import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Thousands of small tensor ops: on a busy 2-core machine intra-op threads only add overhead."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
