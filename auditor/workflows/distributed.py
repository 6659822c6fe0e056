"""Sampling runs computed by many processes (torchrun): the training set sharded over the
ranks (pspc.sharded), exact, and recorded by rank 0 alone.

Every rank runs the same sampler from the same noise; the collectives of each denoiser call
merge the shards, so every rank holds the same D(z_t) and weights. Rank 0 records the run
exactly as `record_sampling_run` does (one writer: the store allows one), with the
denoiser's record saying how the set was sharded ("distributed": world size, backend,
shards); the other ranks only compute. A rank that dies or hangs past the collective timeout
makes rank 0's next collective raise a CollectiveError, which fails the run through the
usual path (`fail_run`: 'failed', with the error), and `resume_run` continues it in one
process (resuming over ranks is not done yet: the other ranks would need the run's stored
state, which only rank 0 may read while it writes).
"""

from __future__ import annotations

from dataclasses import dataclass

from pspc.data.training_set import TrainingSet
from pspc.denoisers import build_denoiser
from pspc.posterior.distributed import DEFAULT_TIMEOUT_S, start_process_group, stop_process_group
from pspc.posterior.weights import WeightRequest
from pspc.samplers import SamplerConfig, initial_noise, sample
from pspc.sharded import ShardedPSPCDenoiser, shard

from auditor.workflows.options import Runtime, SamplingOptions
from auditor.workflows.sampling import check_kind, record_sampling_run

__all__ = ["Distribution", "compute_only", "record_distributed_sampling_run"]


@dataclass(frozen=True, kw_only=True)
class Distribution:
    """How the ranks talk: backend (None: NCCL on a CUDA device, else gloo) and the seconds
    a collective waits for the slowest rank before the run fails."""

    backend: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S


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
        denoiser = shard(build_denoiser(options.denoiser_kind, training_set, patch_size=options.patch_size))
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
