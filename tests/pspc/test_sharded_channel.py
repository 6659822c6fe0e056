"""Rank 0 leading, the others following (pspc.sharded.CallChannel, follow) in this process: a 1-rank
group's leading denoiser gives the one-process result and tells each call once, its settings and
patch sets only the first time; close() releases the others unless a call failed half-way; `follow`
makes the calls it is told (a stand-in channel here) and refuses a denoiser over other data."""

from __future__ import annotations

import pytest
import torch

from pspc.denoisers import pspc_square
from pspc.posterior.distributed import DistributedError, start_process_group, stop_process_group
from pspc.posterior.weights import WeightRequest
from pspc.sharded import CallChannel, follow
from tests.support.data import noisy, random_training_set
from tests.support.distributed import free_port

REQUEST = WeightRequest(top_k=5, mass=0.999)


@pytest.fixture
def one_rank(monkeypatch):
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(name, value)
    start_process_group("gloo", timeout_s=30)
    yield
    stop_process_group()


def data_and_queries(seed=4):
    data = random_training_set(count=9, channels=1, height=6, width=6, seed=seed, xflip=True)
    t = torch.tensor([0.3, 0.3, 2.0], dtype=torch.float64)
    return data, noisy(data, t, seed=2), t


class Told:
    """A stand-in for rank 1's end of the channel: hands out the given messages."""

    rank = 1

    def __init__(self, messages):
        self.messages = iter(messages)

    def receive(self):
        return next(self.messages)


def test_a_leading_denoiser_gives_the_one_process_result_and_tells_each_call(one_rank):
    data, z, t = data_and_queries()
    channel = CallChannel()
    leading = channel.lead(pspc_square(data, 3).without([2]))
    for _ in range(2):
        x_hat, weights = leading.posterior(z, t, REQUEST)
    x_ref, weights_ref = pspc_square(data, 3).without([2]).posterior(z, t, REQUEST)
    torch.testing.assert_close(x_hat, x_ref, rtol=0, atol=1e-12)
    assert torch.equal(weights[0][1].entry, weights_ref[0][1].entry)
    leading(z, t)  # D alone: one more call told
    calls, nbytes, _ = channel.traffic.by_kind["call"]
    assert calls == 3 and nbytes > 3 * z.numel() * 4  # each carries z (float32) and more
    assert leading.settings()["removed"] == [2] and leading.describe()["distributed"]["world_size"] == 1
    channel.close()
    assert channel.traffic.by_kind["stop"][0] == 1


def test_close_releases_the_others_unless_a_call_failed_half_way(one_rank):
    channel = CallChannel()
    channel.in_call = True  # a call's collectives failed: the others are inside them, not listening
    channel.close()
    assert "stop" not in channel.traffic.by_kind
    with pytest.raises(DistributedError, match="rank 0 leads"):
        follow(CallChannel())


def test_follow_makes_the_calls_it_is_told_until_stopped(one_rank):
    data, z, t = data_and_queries()
    reference = pspc_square(data, 3)
    settings = CallChannel().lead(reference).settings()
    patch_set = reference.patch_set_at(0.3)
    call = {"order": "call", "key": "k", "settings": settings, "patch_sets": {0: patch_set},
            "at": {0.3: 0, 2.0: 0}, "z": z, "t": t, "request": REQUEST}
    again = {**call, "settings": None, "patch_sets": {}}  # known by its key now
    assert follow(Told([call, again, {**again, "request": None}, {"order": "stop"}]), data) == 3
    assert follow(Told([{"order": "training-set", "training_set": data}, call, {"order": "stop"}])) == 1
    with pytest.raises(DistributedError, match="rank 1 holds training set .* load the same data on every rank"):
        follow(Told([call]), data_and_queries(seed=5)[0])
    with pytest.raises(DistributedError, match="rank 1 has no training set"):
        follow(Told([call]))
    with pytest.raises(DistributedError, match="never described"):
        follow(Told([{**call, "settings": None}]), data)
