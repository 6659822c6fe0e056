"""A PSPC denoiser that holds one rank's shard of the training set (torch.distributed).

`ShardedPSPCDenoiser(denoiser, reduction)` is `denoiser` (any PSPCDenoiser: pspc-square,
pspc-flex, empirical) restricted to the images [start, end) of this rank, with the
reduction (pspc.posterior.distributed) that merges the shards' partial states exactly: on
every rank it computes what `denoiser` computes on the whole set, numbers the entries as the
whole set does, and removes training images (`without`) by their index in the whole set.
Its describe() is the whole denoiser's plus "distributed" (world size, backend, shards).

Every rank must make the same calls in the same order (the same z, t and request): the
collectives pair them up. Two ways to get there:
- every rank runs the same computation (`auditor sample`: its inputs are the merged
  outputs, the same on every rank);
- rank 0 leads (`CallChannel`): whatever rank 0 runs (a comparison, an audit, a
  counterfactual, a resumed run), its `LeadingDenoiser` tells every call (z, t, the request,
  the denoiser's settings and patch sets) to the other ranks first, and they, in `follow`,
  make the same call on their shard. They need only the training set: not the store, the
  network, the options or the workflow, and their inputs are rank 0's, bit for bit.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import pickle
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from pspc.data.training_set import TrainingSet
from pspc.denoisers import PSPCDenoiser, removal_mask
from pspc.posterior.distributed import (
    CollectiveError, DistributedError, Traffic, TorchDistributedReduction, first_line
)
from pspc.posterior.patch_posterior import check_excluded
from pspc.posterior.weights import WeightRequest

DEFAULT_IDLE_TIMEOUT_S = 24 * 3600.0  # how long the other ranks wait for rank 0's next call (module docstring)


class ShardedPSPCDenoiser(PSPCDenoiser):
    """`denoiser` on this rank's images only, merged across ranks by `reduction`."""

    def __init__(self, denoiser: PSPCDenoiser, reduction: TorchDistributedReduction):
        whole = denoiser.training_set
        if reduction.num_images != len(whole):
            raise DistributedError(f"the reduction splits {reduction.num_images} images, the denoiser's training "
                                   f"set has {len(whole)}")
        super().__init__(whole.subset(slice(reduction.start, reduction.end)), denoiser.patch_set_at, denoiser.kind,
                         denoiser.schedule, denoiser.chunk_bytes)
        self.reduction = reduction
        self.dataset_record = whole.describe()  # the whole set's record and fingerprint
        self.num_images = len(whole)
        self._whole_excluded = None
        if denoiser.excluded is not None:
            self._exclude(denoiser.excluded)

    @property
    def excluded(self):
        """The removed training images of the whole set (bool [N]), or None."""
        return self._whole_excluded

    def without(self, image_indices) -> "ShardedPSPCDenoiser":
        """The same sharded denoiser without these images (indices in the whole set) and their
        mirrors, in addition to those removed already; each rank keeps its slice of the mask."""
        removed = removal_mask(image_indices, self.num_images)
        if self._whole_excluded is not None:
            removed |= self._whole_excluded
        clone = self._sharing_copy()
        clone._exclude(removed)
        return clone

    def _exclude(self, removed) -> None:
        self._whole_excluded = check_excluded(removed, self.num_images)  # some image must remain somewhere
        self._excluded = self.reduction.shard_excluded(removed[self.reduction.start:self.reduction.end])

    def posterior(self, z, t, request: WeightRequest = WeightRequest()):
        if request.full:
            raise DistributedError("dense weights (WeightRequest(full=True)) are not gathered across ranks: "
                                   "ask for the top-k, or run in one process")
        return super().posterior(z, t, request)

    def describe(self):
        record = {**super().describe(), "dataset": self.dataset_record}
        return {**record, "distributed": self.reduction.describe()}

    def settings(self) -> dict:
        """What another rank needs to build its shard of this denoiser (`follow`): the kind, its
        record, the data's identity, the removed images and the top-k merge."""
        removed = self.excluded
        return {"kind": self.kind, "schedule": self.schedule, "chunk_bytes": self.chunk_bytes,
                "xflip": self.training_set.xflip, "fingerprint": self.dataset_record["fingerprint"],
                "num_images": self.num_images, "merge": self.reduction.merge,
                "removed": None if removed is None else removed.nonzero()[:, 0].tolist()}


def shard(denoiser: PSPCDenoiser, group=None, merge: str = "auto") -> ShardedPSPCDenoiser:
    """This rank's shard of `denoiser` over the torch.distributed process group (started);
    merge: how the top-k lists are merged (pspc.posterior.distributed.MERGES)."""
    _check_shardable(denoiser)
    return ShardedPSPCDenoiser(denoiser, TorchDistributedReduction(len(denoiser.training_set), group, merge))


def _check_shardable(denoiser) -> None:
    if not isinstance(denoiser, PSPCDenoiser):
        raise DistributedError(f"only PSPC denoisers (pspc-square, pspc-flex, empirical) can be sharded, got "
                               f"{denoiser.describe().get('kind', type(denoiser).__name__)}")


# ---------------------------------------------------------------------------------------
# Rank 0 leads, the others follow
# ---------------------------------------------------------------------------------------
class LeadingDenoiser(ShardedPSPCDenoiser):
    """Rank 0's shard in a led run: before each call it tells the call to the other ranks
    (`CallChannel.tell`), which make it too (`follow`)."""

    def __init__(self, denoiser: PSPCDenoiser, reduction: TorchDistributedReduction, channel: "CallChannel"):
        super().__init__(denoiser, reduction)
        self.channel = channel

    def _run(self, z, t, request):
        self.channel.tell(self, z, t, request)
        self.channel.in_call = True  # until the call's collectives are done (a failure in between: see close)
        out = super()._run(z, t, request)
        self.channel.in_call = False
        return out


class CallChannel:
    """Rank 0's calls, told to the other ranks over a gloo group of its own. Every rank opens
    it (after the process group is started: a collective); rank 0 then `lead`s denoisers and
    `close`s the channel at the end, the others `follow`. The other ranks wait for rank 0's
    next call up to idle_timeout_s (rank 0 may do other work in between: record, load a
    network, detect copies); the calls' collectives keep the process group's timeout."""

    def __init__(self, idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S):
        if not idle_timeout_s > 0:
            raise DistributedError(f"the idle timeout must be > 0 seconds, got {idle_timeout_s}")
        self.group = dist.new_group(backend="gloo", timeout=timedelta(seconds=idle_timeout_s))
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.traffic = Traffic()
        self.in_call, self.closed = False, False
        self._told: set[str] = set()  # the denoiser settings the other ranks hold, by key
        self._patch_sets: dict[int, tuple[int, object]] = {}  # id(patch set) -> (number, the set: kept alive)

    # -- rank 0 ---------------------------------------------------------------------------
    def lead(self, denoiser: PSPCDenoiser, merge: str = "auto") -> LeadingDenoiser:
        """Rank 0's shard of `denoiser`, whose calls the other ranks follow."""
        _check_shardable(denoiser)
        self._require_rank_zero("lead")
        return LeadingDenoiser(denoiser, TorchDistributedReduction(len(denoiser.training_set), merge=merge), self)

    def send_training_set(self, training_set: TrainingSet) -> None:
        """Give the other ranks the training set (when only rank 0 can read it: the store's pixels)."""
        self._require_rank_zero("send the training set")
        self._send({"order": "training-set", "training_set": training_set})

    def tell(self, denoiser: ShardedPSPCDenoiser, z: torch.Tensor, t: torch.Tensor, request) -> None:
        """Tell the other ranks a call of `denoiser` (z [B, C, H, W], t [B] as validated, request
        or None for D alone): the settings and patch sets they do not hold yet, by key and number."""
        settings = denoiser.settings()
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
        new_sets, at = {}, {}
        for t_b in dict.fromkeys(t.tolist()):
            patch_set = denoiser.patch_set_at(t_b)
            if id(patch_set) not in self._patch_sets:
                self._patch_sets[id(patch_set)] = (len(self._patch_sets), patch_set)
                new_sets[len(self._patch_sets) - 1] = _portable(patch_set)
            at[t_b] = self._patch_sets[id(patch_set)][0]
        self._send({"order": "call", "key": key, "settings": None if key in self._told else settings,
                    "patch_sets": new_sets, "at": at, "z": z.detach().cpu(), "t": t.detach().cpu(), "request": request})
        self._told.add(key)

    def close(self) -> None:
        """Release the other ranks (they return from `follow`), unless a call failed half-way:
        then they are inside its collectives and fail with its timeout instead."""
        if self.rank == 0 and not self.closed and not self.in_call:
            self._send({"order": "stop"})
        self.closed = True

    def _require_rank_zero(self, what: str) -> None:
        if self.rank != 0:
            raise DistributedError(f"only rank 0 can {what}; rank {self.rank} follows (`follow`)")

    def _send(self, message: dict) -> None:
        self._broadcast(message)

    # -- both -----------------------------------------------------------------------------
    def ready(self) -> None:
        """Wait until every rank is here (the others with their training set): a rank that could
        not start fails rank 0 now, before it records anything."""
        try:
            dist.barrier(group=self.group)
        except RuntimeError as exc:  # torch.distributed.DistError and its kinds derive from it
            self.closed = True
            raise CollectiveError(f"rank {self.rank} of {self.world_size}: not every rank started (one failed before "
                                  f"rank 0's first call, e.g. loading its training set): {first_line(exc)}") from exc

    def receive(self) -> dict:
        """The next message from rank 0 (the other ranks)."""
        return self._broadcast(None)

    def _broadcast(self, message: dict | None) -> dict:
        """Rank 0's message on every rank: its pickled bytes' length, then the bytes (two
        broadcasts on the channel's group); the traffic counts the bytes by order."""
        began = time.perf_counter()
        try:
            if self.rank == 0:
                payload = torch.frombuffer(bytearray(pickle.dumps(message)), dtype=torch.uint8)
                size = torch.tensor([payload.numel()], dtype=torch.int64)
            else:
                size = torch.zeros(1, dtype=torch.int64)
            dist.broadcast(size, 0, group=self.group)
            if self.rank != 0:
                payload = torch.empty(int(size), dtype=torch.uint8)
            dist.broadcast(payload, 0, group=self.group)
        except RuntimeError as exc:  # torch.distributed.DistError and its kinds derive from it
            self.closed = True
            raise CollectiveError(f"rank {self.rank} of {self.world_size}: rank 0's call could not be told (a rank "
                                  f"died, or rank 0 sent nothing within the idle timeout): {first_line(exc)}") from exc
        if self.rank != 0:
            message = pickle.loads(payload.numpy().tobytes())  # from rank 0 of this job, not from outside
        self.traffic.add(message["order"], 8 + payload.numel(), time.perf_counter() - began)
        return message


def follow(channel: CallChannel, training_set: TrainingSet | None = None, device="cpu") -> int:
    """Make rank 0's calls on this rank's shard until rank 0 closes the channel; returns the
    number of calls. training_set: the whole set rank 0's denoisers are over (checked by
    fingerprint), or None when rank 0 sends it."""
    if channel.rank == 0:
        raise DistributedError("rank 0 leads (CallChannel.lead); the other ranks follow")
    denoisers: dict[str, ShardedPSPCDenoiser] = {}
    patch_sets, at = {}, {}
    calls = 0
    while True:
        message = channel.receive()
        if message["order"] == "stop":
            return calls
        if message["order"] == "training-set":
            training_set = message["training_set"]
            continue
        patch_sets.update(message["patch_sets"])
        at.clear()
        at.update({t_b: patch_sets[number] for t_b, number in message["at"].items()})
        if message["key"] not in denoisers:
            denoisers[message["key"]] = _follower(message["settings"], training_set, lambda t_b: at[float(t_b)],
                                                  channel.rank).to(device)
        denoiser, z, t = denoisers[message["key"]], message["z"].to(device), message["t"].to(device)
        if message["request"] is None:
            denoiser(z, t)
        else:
            denoiser.posterior(z, t, message["request"])
        calls += 1


def _follower(settings: dict | None, training_set: TrainingSet | None, patch_set_at, rank: int) -> ShardedPSPCDenoiser:
    """This rank's shard of the denoiser rank 0 described (`ShardedPSPCDenoiser.settings`)."""
    if settings is None:
        raise DistributedError(f"rank {rank} was told a call of a denoiser it was never described")
    if training_set is None:
        raise DistributedError(f"rank {rank} has no training set: give it one, or let rank 0 send it")
    if len(training_set) != settings["num_images"] or training_set.fingerprint != settings["fingerprint"]:
        raise DistributedError(f"rank {rank} holds training set {training_set.fingerprint[:12]}... "
                               f"({len(training_set)} images), rank 0's denoiser is over {settings['fingerprint'][:12]}"
                               f"... ({settings['num_images']} images): load the same data on every rank")
    whole = PSPCDenoiser(training_set.with_xflip(settings["xflip"]), patch_set_at, settings["kind"],
                         settings["schedule"], settings["chunk_bytes"])
    if settings["removed"]:
        whole = whole.without(settings["removed"])
    return ShardedPSPCDenoiser(whole, TorchDistributedReduction(settings["num_images"], merge=settings["merge"]))


def _portable(patch_set):
    """A copy of the patch set to send: on the CPU, without its cached derived tensors (a Flex
    set's float64 mask matrices weigh 16 K H W bytes; the other rank rebuilds them on first use)."""
    portable = copy.copy(patch_set)
    for name in [n for n in vars(portable) if isinstance(getattr(type(portable), n, None), functools.cached_property)]:
        del portable.__dict__[name]
    return portable.to("cpu")
