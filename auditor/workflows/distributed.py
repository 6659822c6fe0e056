"""Workflows computed by many processes (torchrun): the training set sharded over the ranks
(pspc.sharded), exact, and recorded by rank 0 alone (one writer: the store allows one).

Two ways for the ranks to make the same PSPC calls:

- `record_distributed_sampling_run` (`auditor sample`): every rank runs the same sampler from
  the same noise; each call's collectives merge the shards, so every rank holds the same
  D(z_t) and weights, and rank 0 records the run as `record_sampling_run` does.
- `over_ranks` (compare, audit, counterfactual, a resumed run): rank 0 runs the one-process
  workflow with `distribute=` (its PSPC denoisers become leading shards, pspc.sharded.
  CallChannel) and records exactly what it records in one process, with the denoiser's
  record saying how the set was sharded ("distributed": world size, backend, shards). The
  other ranks `follow`: each of rank 0's PSPC calls is told to them first (its z, t,
  request, patch sets), so whatever rank 0 computes around the calls (a network's
  trajectory or inversion, the store, descriptors, copy detection, the verdict, none of
  which calls a PSPC denoiser) makes no collective, and a resumed run's stored state
  reaches the other ranks as the z of the calls that continue it. They need only the
  training set (`--data`; for a counterfactual rank 0 sends the store's pixels).

A rank that dies or hangs past the collective timeout makes rank 0's next collective raise a
CollectiveError, which fails the run through the usual path ('failed', with the error);
`resume_run` continues it, in one process or over ranks (`resume_distributed_run`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, TypeVar

from pspc.data.training_set import TrainingSet
from pspc.denoisers import PSPCDenoiser, build_denoiser
from pspc.posterior.distributed import DEFAULT_TIMEOUT_S, MERGES, start_process_group, stop_process_group
from pspc.posterior.weights import WeightRequest
from pspc.samplers import SamplerConfig, initial_noise, sample
from pspc.sharded import DEFAULT_IDLE_TIMEOUT_S, CallChannel, ShardedPSPCDenoiser, follow, shard

from auditor.errors import UserError
from auditor.workflows.audit import record_audit
from auditor.workflows.comparison import record_comparison
from auditor.workflows.counterfactual import record_counterfactual
from auditor.workflows.options import AuditOptions, CounterfactualOptions, Runtime, SamplingOptions
from auditor.workflows.sampling import check_kind, record_sampling_run, resume_run

__all__ = ["Distribution", "Leader", "compute_only", "over_ranks", "record_distributed_audit",
           "record_distributed_comparison", "record_distributed_counterfactual", "record_distributed_sampling_run",
           "resume_distributed_run"]

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class Distribution:
    """How the ranks talk: backend (None: NCCL on a CUDA device, else gloo), the seconds a
    collective waits for the slowest rank before the run fails, how the top-k lists are
    merged (pspc.posterior.distributed.MERGES), and, when rank 0 leads, the seconds the other
    ranks wait for its next call (it may record, load a network or detect copies meanwhile)."""

    backend: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    merge: str = "auto"
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S

    def __post_init__(self):
        if self.merge not in MERGES:
            raise UserError(f"the top-k merge must be one of {', '.join(MERGES)}, got {self.merge!r}")
        for name in ("timeout_s", "idle_timeout_s"):
            if not getattr(self, name) > 0:
                raise UserError(f"{name} must be > 0 seconds, got {getattr(self, name)}")


def record_distributed_sampling_run(db_path, training_set: TrainingSet, *, options: SamplingOptions,
                                    runtime: Runtime = Runtime(),
                                    distribution: Distribution = Distribution()) -> int | None:
    """`record_sampling_run` over torchrun's ranks: rank 0 records and returns the run id, the
    others compute their shard and return None. Every rank must be given the same training set
    and options. The process group is joined here and left at the end."""
    check_kind(options.denoiser_kind)
    options.check_fits(*training_set.resolution)
    start_process_group(distribution.backend, distribution.timeout_s, runtime.device)
    try:
        denoiser = shard(build_denoiser(options.denoiser_kind, training_set, patch_size=options.patch_size),
                         merge=distribution.merge)
        if denoiser.reduction.rank == 0:
            return record_sampling_run(db_path, training_set, options=options, runtime=runtime, denoiser=denoiser)
        compute_only(denoiser, options, runtime)
        return None
    finally:
        stop_process_group()


def compute_only(denoiser: ShardedPSPCDenoiser, options: SamplingOptions, runtime: Runtime) -> None:
    """A rank other than 0: the recorded run's sampling (same noise, steps and weight request,
    so the same collectives), with nothing written."""
    config = SamplerConfig(method=options.sampler, num_steps=options.steps)
    z = initial_noise(options.num_samples, denoiser.image_shape, options.seed, config.t_max, runtime.device)
    sample(denoiser.to(runtime.device), z, config, request=WeightRequest(top_k=options.top_k, mass=options.mass),
           progress=runtime.progress)


# ---------------------------------------------------------------------------------------
# Rank 0 leads, the others follow
# ---------------------------------------------------------------------------------------
@dataclass
class Leader:
    """Rank 0's `distribute=` for the workflows: a PSPC denoiser -> its leading shard. With
    send_data, the other ranks hold no training set: each denoiser's whole set is sent to
    them first (once per set, by fingerprint)."""

    channel: CallChannel
    merge: str = "auto"
    send_data: bool = False
    sent: str | None = None  # the fingerprint of the set the other ranks were sent last

    def __call__(self, denoiser: PSPCDenoiser) -> ShardedPSPCDenoiser:
        if self.send_data and self.sent != denoiser.training_set.fingerprint:
            self.channel.send_training_set(denoiser.training_set)
            self.sent = denoiser.training_set.fingerprint
        return self.channel.lead(denoiser, self.merge)


def over_ranks(lead: Callable[[Leader], T], training_set: TrainingSet | Callable[[], TrainingSet] | None, *,
               distribution: Distribution = Distribution(), device="cpu") -> T | None:
    """Run `lead(leader)` on rank 0 of torchrun's ranks, where it calls a workflow with
    `distribute=leader`, and return its result; the other ranks follow rank 0's PSPC calls on
    their shard of `training_set` (a TrainingSet, a function loading it, called on those ranks
    only, or None on every rank: rank 0 sends them each denoiser's set, e.g. the store's
    pixels, which only rank 0 reads) and return None. The process group is joined here and
    left at the end; rank 0 releases the others when `lead` returns or raises."""
    start_process_group(distribution.backend, distribution.timeout_s, device)
    try:
        channel = CallChannel(distribution.idle_timeout_s)
        if channel.rank != 0:
            data = training_set() if callable(training_set) else training_set
            channel.ready()
            follow(channel, data, device)
            return None
        channel.ready()  # the others are up, with their training set
        try:
            return lead(Leader(channel, distribution.merge, send_data=training_set is None))
        finally:
            channel.close()
    finally:
        stop_process_group()


def record_distributed_comparison(db_path, training_set: TrainingSet, network, *, options=None,
                                  runtime: Runtime = Runtime(), distribution: Distribution = Distribution()):
    """`record_comparison` over torchrun's ranks: its ComparisonResult on rank 0, None on the
    others (which need only the training set: `network` is loaded and run on rank 0 alone)."""
    return over_ranks(lambda leader: record_comparison(db_path, training_set, network, options=options, runtime=runtime,
                                                       distribute=leader),
                      training_set, distribution=distribution, device=runtime.device)


def record_distributed_audit(db_path, training_set: TrainingSet, image, *, network=None, options=None,
                             runtime: Runtime = Runtime(), distribution: Distribution = Distribution()):
    """`record_audit` over torchrun's ranks: its AuditResult on rank 0, None on the others."""
    options = options or AuditOptions()
    return over_ranks(lambda leader: record_audit(db_path, training_set, image, network=network, options=options,
                                                  runtime=runtime, distribute=leader),
                      training_set, distribution=distribution, device=runtime.device)


def record_distributed_counterfactual(db_path, run_id: int, sample_index: int, *, options: CounterfactualOptions,
                                      runtime: Runtime = Runtime(), distribution: Distribution = Distribution(),
                                      training_set: TrainingSet | None = None):
    """`record_counterfactual` over torchrun's ranks: its CounterfactualResult on rank 0, None on
    the others. training_set None (on every rank): the store's pixels, which rank 0 reads and
    sends to the others."""
    return over_ranks(lambda leader: record_counterfactual(db_path, run_id, sample_index, options=options,
                                                           runtime=runtime, training_set=training_set,
                                                           distribute=leader),
                      training_set, distribution=distribution, device=runtime.device)


def resume_distributed_run(db_path, run_id: int, training_set: TrainingSet, *, runtime: Runtime = Runtime(),
                           distribution: Distribution = Distribution()) -> int | None:
    """`resume_run` over torchrun's ranks: rank 0 reads the run's stored state and continues it
    (the denoiser rebuilt from the record, then sharded); its calls, from the stored z_s on,
    reach the others, so every rank continues the same trajectory. Rank 0 returns the run id,
    the others None. Every rank must be given the run's training set."""
    return over_ranks(lambda leader: resume_run(db_path, run_id, training_set, runtime=runtime, distribute=leader),
                      training_set, distribution=distribution, device=runtime.device)
