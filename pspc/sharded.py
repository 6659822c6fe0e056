"""A PSPC denoiser that holds one rank's shard of the training set (torch.distributed).

`ShardedPSPCDenoiser(denoiser, reduction)` is `denoiser` (any PSPCDenoiser: pspc-square,
pspc-flex, empirical) restricted to the images [start, end) of this rank, with the
reduction (pspc.posterior.distributed) that merges the shards' partial states exactly: on
every rank it computes what `denoiser` computes on the whole set, numbers the entries as the
whole set does, and removes training images (`without`) by their index in the whole set.
Its describe() is the whole denoiser's plus "distributed" (world size, backend, shards).

Every rank must make the same calls in the same order (the same z, t and request): the
collectives pair them up.
"""

from __future__ import annotations

from pspc.denoisers import PSPCDenoiser, removal_mask
from pspc.posterior.distributed import DistributedError, TorchDistributedReduction
from pspc.posterior.patch_posterior import check_excluded
from pspc.posterior.weights import WeightRequest


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


def shard(denoiser: PSPCDenoiser, group=None) -> ShardedPSPCDenoiser:
    """This rank's shard of `denoiser` over the torch.distributed process group (started)."""
    if not isinstance(denoiser, PSPCDenoiser):
        raise DistributedError(f"only PSPC denoisers (pspc-square, pspc-flex, empirical) can be sharded, got "
                               f"{denoiser.describe().get('kind', type(denoiser).__name__)}")
    return ShardedPSPCDenoiser(denoiser, TorchDistributedReduction(len(denoiser.training_set), group))
