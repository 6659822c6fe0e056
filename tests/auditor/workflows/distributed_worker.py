"""One rank of the distributed sampling fault test: `python -m tests.auditor.workflows.distributed_worker DB`
in a torchrun-like environment (tests.support.distributed). Rank 0 records OPTIONS on random_set()
into DB; rank 1 exits (os._exit, as a killed process would) at its denoiser call EXIT_AT, mid-run.
Rank 0 prints the error its run failed with and exits 0."""

from __future__ import annotations

import os
import sys

from auditor.workflows.distributed import Distribution, record_distributed_sampling_run
from auditor.workflows.options import SamplingOptions
from pspc.posterior.distributed import CollectiveError
from pspc.sharded import ShardedPSPCDenoiser
from tests.support.data import random_set

OPTIONS = SamplingOptions(num_samples=2, steps=5, seed=7, patch_size=3, top_k=4, mass=0.95)
EXIT_AT = 3  # the third step's call: steps 0 and 1 are recorded by then


def _dies_at(call: int):
    posterior, calls = ShardedPSPCDenoiser.posterior, []

    def dying(self, z, t, request=None):
        calls.append(1)
        if len(calls) == call:
            os._exit(3)
        return posterior(self, z, t, request)

    return dying


def main(db: str) -> None:
    if os.environ["RANK"] == "1":
        ShardedPSPCDenoiser.posterior = _dies_at(EXIT_AT)
    try:
        record_distributed_sampling_run(db, random_set(), options=OPTIONS, distribution=Distribution(timeout_s=60))
    except CollectiveError as error:
        print(f"failed: {error}")


if __name__ == "__main__":
    main(*sys.argv[1:])
