"""The environment record of a run."""

import numba
import torch

from pspc.record import environment


def test_environment_records_the_numba_thread_count():
    """numba's threads run the fused CPU kernels, so the record holds their count next to torch's."""
    before = numba.get_num_threads(), torch.get_num_threads()
    try:
        numba.set_num_threads(1)
        record = environment(torch.device("cpu"))
    finally:
        numba.set_num_threads(before[0])
        torch.set_num_threads(before[1])
    assert record["numba_threads"] == 1
    assert record["torch_threads"] == torch.get_num_threads()
