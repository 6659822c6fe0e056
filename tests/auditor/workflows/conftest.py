"""Fixtures of the workflow tests."""

import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """Tiny tensors: torch's OpenMP threads only add synchronisation (seconds per call on a loaded machine).
    Modules that want it: `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
