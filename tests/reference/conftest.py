"""Shared fixture for the NumPy-reference tests."""
import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The torch oracles here work on tiny tensors, where extra threads only add synchronisation; on a
    busy 2-core machine two threads made a 1000-step optimizer loop 20x slower. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
