"""Exact PSPC over a training set sharded across processes (torch.distributed).

Rank r of R holds the images [start_r, end_r) (`shard_range`) and runs `patch_posterior` on
them with a `TorchDistributedReduction`, which merges the shards' partial states exactly at
the two points where PSPC reduces over the training set:
  after pass 1, the log-normaliser l_r[b, k] = log sum_{i in shard r} exp(logit[b, k, i]):
      l = m + log sum_r exp(l_r - m), m = max_r l_r      (all-reduce MAX, then SUM);
  after pass 2, the numerator [B, C, H, W], entropy and sum w^2 [B, K] (sums over the entries,
      computed with the global l): all-reduce SUM; and the top-k: each shard's k best
      (weight descending, then GLOBAL entry ascending), merged with `fused_kernels.merge_top`
      into the k best of the union, the single-process top-k. Two ways (`merge`):
      "gather": every list all-gathered, one R-way merge (each rank receives R - 1 lists);
      "tree": recursive doubling, log2(P) rounds (P the largest power of two <= R) in which
      rank r swaps its current list with rank r XOR 2^j and both keep the merge of the two
      (ranks P..R-1 first hand theirs to rank r - P and get the result back): each rank
      sends and receives at most log2(P) + 1 lists. "auto": the tree above TREE_ABOVE ranks.
      Both give the same entries and weights (the k best of a union do not depend on the
      order it is merged in).
Entry ids are the whole set's: image start_r + i is entry start_r + i, its mirror N + start_r + i.
Every rank ends with the same result, equal to the one-process result up to rounding.

Backends: gloo on CPU, NCCL on GPU; processes are started by `torchrun` (its environment
variables), and every collective waits at most the process group's timeout, so a rank that
dies or hangs fails the others with a CollectiveError instead of blocking them.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from pspc.errors import InputError
from pspc.posterior import fused_kernels

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")
_GATHER = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # the new name, else the old
DEFAULT_TIMEOUT_S = 600.0  # a collective waits this long for the slowest rank (then CollectiveError)
MERGES = ("auto", "gather", "tree")  # how the shards' top-k lists are merged (module docstring)
TREE_ABOVE = 8  # "auto" merges by the tree above this many ranks, where the all-gather's R - 1 lists grow large


class DistributedError(InputError):
    """A distributed run that cannot start: no torchrun environment, a bad backend or shard."""


class CollectiveError(ConnectionError):
    """A collective failed: another rank died, hung past the timeout, or the group is gone."""


def shard_range(num_images: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, end) of rank's images: consecutive, balanced to one image, in rank order."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise DistributedError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
    if num_images < world_size:
        raise DistributedError(f"{num_images} training images cannot be split over {world_size} ranks "
                               f"(each rank needs at least one)")
    return rank * num_images // world_size, (rank + 1) * num_images // world_size


def torchrun_environment(environ=None) -> dict | None:
    """{rank, world_size, local_rank} when torchrun's variables (TORCHRUN_VARIABLES) are all set, else None."""
    environ = os.environ if environ is None else environ
    if not all(name in environ for name in TORCHRUN_VARIABLES):
        return None
    try:
        return {name: int(environ[name.upper()]) for name in ("rank", "world_size", "local_rank")}
    except ValueError:
        raise DistributedError("RANK, WORLD_SIZE and LOCAL_RANK must be integers: "
                               + ", ".join(f"{n}={environ[n]!r}" for n in TORCHRUN_VARIABLES)) from None


def start_process_group(backend: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                        device: str | torch.device = "cpu") -> str:
    """Join torchrun's process group (once per process); returns the backend. Default backend:
    NCCL for a CUDA device (each rank on cuda:LOCAL_RANK), else gloo."""
    found = torchrun_environment()
    if found is None:
        missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
        raise DistributedError(f"a distributed run needs torchrun's environment ({', '.join(missing)} not set): "
                               f"launch it with `torchrun --nproc-per-node N ...`")
    if not timeout_s > 0:
        raise DistributedError(f"the collective timeout must be > 0 seconds, got {timeout_s}")
    backend = backend or ("nccl" if torch.device(device).type == "cuda" else "gloo")
    if backend not in ("gloo", "nccl"):
        raise DistributedError(f"backend must be gloo (CPU) or nccl (GPU), got {backend!r}")
    if dist.is_initialized():
        return dist.get_backend()
    if backend == "nccl":
        torch.cuda.set_device(found["local_rank"])
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return backend


def stop_process_group() -> None:
    """Leave the process group, if this process is in one."""
    if dist.is_initialized():
        dist.destroy_process_group()


@dataclass
class Traffic:
    """What one rank's collectives cost: calls, bytes this rank contributed, seconds spent in them;
    `received`: kind -> bytes of the other ranks' data this rank took in, for the top-k merge
    (the all-gather's R - 1 lists, or the tree's partners' lists)."""

    calls: int = 0
    bytes: int = 0
    seconds: float = 0.0
    by_kind: dict = field(default_factory=dict)
    received: dict = field(default_factory=dict)

    def add(self, kind: str, nbytes: int, seconds: float, received: int | None = None) -> None:
        self.calls, self.bytes, self.seconds = self.calls + 1, self.bytes + nbytes, self.seconds + seconds
        calls, total, spent = self.by_kind.get(kind, (0, 0, 0.0))
        self.by_kind[kind] = (calls + 1, total + nbytes, spent + seconds)
        if received is not None:
            self.received[kind] = self.received.get(kind, 0) + received


def tree_merge_lists(rank: int, world_size: int) -> int:
    """How many other ranks' lists `rank` receives in the tree merge (= the lists it sends), P the
    largest power of two <= R: rank r < P makes log2(P) swaps, and takes in rank r + P's list
    first when there is one (then sends it the result); rank r >= P sends its list, takes the result."""
    power = 1 << (world_size.bit_length() - 1)
    return (power.bit_length() - 1 + (rank + power < world_size)) if rank < power else 1


class TorchDistributedReduction:
    """patch_posterior's `reduction` for this rank's shard of num_images training images,
    over the default torch.distributed process group (or `group`). `traffic` counts the
    collectives (bytes contributed by this rank and time, the wait for slower ranks included)."""

    def __init__(self, num_images: int, group=None, merge: str = "auto"):
        if merge not in MERGES:
            raise DistributedError(f"merge must be one of {', '.join(MERGES)}, got {merge!r}")
        self.group = group
        self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)
        self.backend = dist.get_backend(group)
        self.num_images = num_images
        self.start, self.end = shard_range(num_images, self.rank, self.world_size)
        self.merge = merge if merge != "auto" else ("tree" if self.world_size > TREE_ABOVE else "gather")
        self.traffic = Traffic()

    @property
    def shard_size(self) -> int:
        return self.end - self.start

    def describe(self) -> dict:
        """The run's record of the distribution: world size, backend, every rank's [start, end)."""
        return {"world_size": self.world_size, "backend": self.backend,
                "shards": [list(shard_range(self.num_images, r, self.world_size)) for r in range(self.world_size)]}

    def shard_excluded(self, excluded: torch.Tensor | None) -> torch.Tensor | None:
        """This shard's slice of the exclusion mask (bool [shard size], or None: none excluded).
        Unlike the whole set's, it may exclude every image of the shard: the other shards keep
        some (checked on the whole mask, `pspc.sharded.ShardedPSPCDenoiser.without`)."""
        if excluded is None:
            return None
        if not isinstance(excluded, torch.Tensor) or excluded.dtype != torch.bool or excluded.shape != (self.shard_size,):
            shape = tuple(excluded.shape) if isinstance(excluded, torch.Tensor) else type(excluded).__name__
            raise DistributedError(f"a shard's excluded must be a bool tensor [{self.shard_size}] (images "
                                   f"{self.start}..{self.end - 1} of {self.num_images}), got {shape}")
        return excluded.cpu() if excluded.any() else None

    # -- the two reduction points of patch_posterior ---------------------------------------
    def log_normaliser(self, local: torch.Tensor) -> torch.Tensor:
        """The whole set's log-normaliser [B, K] from this shard's (-inf where the shard keeps no image)."""
        top = self._all_reduce(local.clone(), dist.ReduceOp.MAX, "log-normaliser max")
        total = self._all_reduce(torch.exp(local - top), dist.ReduceOp.SUM, "log-normaliser sum")
        return top + total.log()

    def numerator(self, local: torch.Tensor) -> torch.Tensor:
        """The composite's numerator sum_i spread(w_i) x_i over every shard."""
        return self._all_reduce(local.clone(), dist.ReduceOp.SUM, "numerator")

    def weights(self, top_k: int, num_images: int, top_w: torch.Tensor, top_i: torch.Tensor,
                entropy: torch.Tensor, sum_sq: torch.Tensor):
        """(top_w, top_i, entropy, sum_sq, N) over the whole set from this shard's: top_w, top_i
        [B, K, k] in (weight desc, entry asc) order with the shard's own entry ids (image i: i,
        mirror: num_images + i; -1: none), entropy and sum_sq [B, K]. Returns the merged k best
        with global ids, k = min(top_k, the shards' lists together): the single-process length."""
        if num_images != self.shard_size:
            raise DistributedError(f"rank {self.rank} holds {self.shard_size} images, the posterior saw {num_images}")
        batch, patches, kept = top_w.shape
        sums = torch.cat([entropy.flatten(), sum_sq.flatten(), entropy.new_tensor([kept])])
        sums = self._all_reduce(sums, dist.ReduceOp.SUM, "entropy, sum w^2")
        entropy, sum_sq = sums[:-1].view(2, batch, patches)
        offset = torch.where(top_i >= num_images, self.num_images - num_images, 0) + self.start
        ids = torch.where(top_i >= 0, top_i + offset, -1)
        pad = top_k - kept  # every rank sends [2, B, K, top_k]: weights, then ids as float64 (exact below 2^53)
        packed = torch.stack([torch.nn.functional.pad(top_w.to(torch.float64), (0, pad)),
                              torch.nn.functional.pad(ids.to(torch.float64), (0, pad), value=-1)])
        k = min(top_k, int(round(float(sums[-1]))))
        if self.merge == "tree":
            merged = self._tree_merge(packed.cpu(), top_k)[..., :k]
            merged_w, merged_i = merged[0].numpy(), merged[1].numpy().astype(np.int64)
        else:
            gathered = self._all_gather(packed, "top-k")  # [R, 2, B, K, top_k]
            merged_w, merged_i = _merge(gathered.permute(1, 2, 3, 0, 4).cpu().numpy(), k)
        device = top_w.device
        return (torch.from_numpy(merged_w).to(device, top_w.dtype), torch.from_numpy(merged_i).to(device),
                entropy, sum_sq, self.num_images)

    def _tree_merge(self, mine: torch.Tensor, top_k: int) -> torch.Tensor:
        """The k best of every rank's list (packed [2, B, K, top_k] on the CPU) by recursive
        doubling (module docstring); every rank ends with the same merge."""
        power = 1 << (self.world_size.bit_length() - 1)  # the largest power of two <= R
        if self.rank >= power:  # fold in: hand the list to rank r - P, take the result back
            return self._swap(mine, self.rank - power, "top-k")
        if self.rank + power < self.world_size:
            mine = _merge_pair(mine, self._swap(None, self.rank + power, "top-k", like=mine), top_k)
        step = 1
        while step < power:
            mine = _merge_pair(mine, self._swap(mine, self.rank ^ step, "top-k"), top_k)
            step <<= 1
        if self.rank + power < self.world_size:
            self._swap(mine, self.rank + power, "top-k", receive=False)
        return mine

    # -- collectives ----------------------------------------------------------------------
    def _on_backend(self, tensor: torch.Tensor) -> torch.Tensor:
        """gloo takes CPU tensors, NCCL CUDA ones."""
        if self.backend == "nccl":
            return tensor if tensor.is_cuda else tensor.to(torch.device("cuda", torch.cuda.current_device()))
        return tensor.cpu()

    def _all_reduce(self, tensor: torch.Tensor, op, kind: str) -> torch.Tensor:
        moved = self._on_backend(tensor.contiguous())
        began = time.perf_counter()
        try:
            dist.all_reduce(moved, op, group=self.group)
        except RuntimeError as exc:  # torch.distributed.DistError and its kinds derive from it
            raise self._failure(kind, exc) from exc
        self.traffic.add(kind, moved.numel() * moved.element_size(), time.perf_counter() - began)
        return moved.to(tensor.device)

    def _all_gather(self, tensor: torch.Tensor, kind: str) -> torch.Tensor:
        moved = self._on_backend(tensor.contiguous())
        out = moved.new_empty((self.world_size * moved.shape[0], *moved.shape[1:]))  # ranks along dim 0
        began = time.perf_counter()
        try:
            _GATHER(out, moved, group=self.group)
        except RuntimeError as exc:  # torch.distributed.DistError and its kinds derive from it
            raise self._failure(kind, exc) from exc
        nbytes = moved.numel() * moved.element_size()
        self.traffic.add(kind, nbytes, time.perf_counter() - began, (self.world_size - 1) * nbytes)
        return out.view(self.world_size, *moved.shape)

    def _swap(self, tensor: torch.Tensor | None, peer: int, kind: str, like: torch.Tensor | None = None,
              receive: bool = True) -> torch.Tensor | None:
        """Send `tensor` (None: nothing) to rank `peer` of the group and receive one of the same
        shape (that of `like` when sending nothing) from it, unless receive=False."""
        moved = None if tensor is None else self._on_backend(tensor.contiguous())
        out = self._on_backend(torch.empty_like(like if moved is None else moved)) if receive else None
        operations = [dist.P2POp(op, buffer, group=self.group, group_peer=peer)
                      for op, buffer in ((dist.isend, moved), (dist.irecv, out)) if buffer is not None]
        began = time.perf_counter()
        try:
            for work in dist.batch_isend_irecv(operations):
                work.wait()
        except RuntimeError as exc:  # torch.distributed.DistError and its kinds derive from it
            raise self._failure(kind, exc) from exc
        sent = 0 if moved is None else moved.numel() * moved.element_size()
        self.traffic.add(kind, sent, time.perf_counter() - began, 0 if out is None else out.numel() * out.element_size())
        return None if out is None else out.cpu()

    def _failure(self, kind: str, exc: BaseException) -> CollectiveError:
        return CollectiveError(f"rank {self.rank} of {self.world_size} ({self.backend}): the {kind} collective "
                               f"failed (a rank died, or did not answer within the timeout): {first_line(exc)}")


def first_line(exc: BaseException) -> str:
    """The first line of a torch.distributed error (its C++ context follows), else its type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _merge(lists: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """merge_top of lists [2, B, K, L, top_k] (weights, then entry ids as float64): the k best."""
    return fused_kernels.merge_top(np.ascontiguousarray(lists[0]), np.ascontiguousarray(lists[1]).astype(np.int64), k)


def _merge_pair(a: torch.Tensor, b: torch.Tensor, top_k: int) -> torch.Tensor:
    """The top_k best of two packed lists [2, B, K, top_k], packed the same way (empty slots: 0, -1)."""
    merged_w, merged_i = _merge(torch.stack([a, b], dim=3).numpy(), top_k)
    return torch.stack([torch.from_numpy(merged_w), torch.from_numpy(merged_i).to(torch.float64)])
