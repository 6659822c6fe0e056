"""Copy detection: the nearest training images of generated samples, by descriptor similarity.

A :class:`CopyDetectionIndex` holds the L2-normalised descriptors of every training entry in
a faiss index, so the inner product is cosine similarity. Sets of at most
``EXACT_MAX_ENTRIES`` (200,000) entries use an exact ``IndexFlatIP``; larger ones an
``IndexIVFFlat`` (inner product) with nlist = 4 sqrt(N) lists, trained on a seeded sample
of 64 x nlist entries, probing nprobe = max(8, nlist / 16) lists per query. At 200k entries
an exact 512-d search costs about 45 ms per query on a 2-core CPU, as much as computing one
SSCD descriptor; beyond that the IVF index keeps search cheap at a small loss of recall.

A match whose score reaches a threshold is flagged (the usual copy thresholds 0.5 and 0.6,
Somepalli et al. 2023; configurable), and every result carries the descriptor's
``describe()`` (model, checkpoint sha256, preprocessing), the thresholds and the index used.

:func:`similarity_matrix` is the paper's Fig. 9: for denoisers A and B that sampled from
the same initial noises, the mean over i of <d(A_i), d(B_i)>.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import faiss
import numpy as np
import torch

from auditor.errors import UserError
from auditor.similarity.descriptor_cache import CACHED_KINDS, entry_descriptors
from auditor.similarity.descriptors import Descriptor, DescriptorError

__all__ = [
    "DEFAULT_THRESHOLDS",
    "EXACT_MAX_ENTRIES",
    "CopyDetectionError",
    "CopyDetectionIndex",
    "CopyDetectionResult",
    "IndexConfig",
    "Match",
    "SimilarityMatrix",
    "check_thresholds",
    "choose_index",
    "flag",
    "similarity_matrix",
]

DEFAULT_THRESHOLDS = (0.5, 0.6)
EXACT_MAX_ENTRIES = 200_000
MIN_POINTS_PER_LIST = 39  # faiss's k-means minimum; below it the lists are poorly trained
TRAIN_POINTS_PER_LIST = 64

MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"


class CopyDetectionError(UserError):
    """Bad input to copy detection (shapes, thresholds, mismatched descriptors); says which."""


# -- thresholds ----------------------------------------------------------------------------

def check_thresholds(thresholds: Sequence[float] | float) -> tuple[float, ...]:
    """Thresholds as a sorted tuple of distinct finite values in [-1, 1]."""
    values = (thresholds,) if isinstance(thresholds, (int, float)) else tuple(thresholds)
    if not values:
        raise CopyDetectionError("at least one threshold is needed")
    try:
        values = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise CopyDetectionError(f"thresholds must be numbers, got {thresholds!r}") from None
    if not all(math.isfinite(v) and -1.0 <= v <= 1.0 for v in values):
        raise CopyDetectionError(f"thresholds are cosine similarities and must lie in [-1, 1], got {list(values)}")
    if len(set(values)) != len(values):
        raise CopyDetectionError(f"thresholds repeat: {list(values)}")
    return tuple(sorted(values))


def flag(score: float, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> float | None:
    """The highest threshold the score reaches (score >= threshold), or None."""
    reached = [t for t in check_thresholds(thresholds) if score >= t]
    return reached[-1] if reached else None


# -- index configuration -------------------------------------------------------------------

@dataclass(frozen=True)
class IndexConfig:
    """Which faiss index: "flat" (exact IndexFlatIP) or "ivf" (IndexIVFFlat, inner product)."""

    kind: str
    nlist: int | None = None
    nprobe: int | None = None
    train_size: int | None = None
    seed: int = 0

    @property
    def exact(self) -> bool:
        return self.kind == "flat"

    def describe(self) -> dict:
        return {**asdict(self), "exact": self.exact, "metric": "inner product (cosine: descriptors are L2-normalised)",
                "faiss": faiss.__version__}


def choose_index(num_entries: int, kind: str = "auto", nlist: int | None = None, nprobe: int | None = None,
                 exact_max_entries: int = EXACT_MAX_ENTRIES, seed: int = 0) -> IndexConfig:
    """The documented rule: exact up to `exact_max_entries` entries, IVF beyond (or as asked).

    IVF: nlist = round(4 sqrt(N)) (at most N / 39, faiss's k-means minimum per list),
    trained on min(N, 64 nlist) entries drawn with `seed`; nprobe = max(8, nlist // 16).
    """
    if num_entries < 1:
        raise CopyDetectionError("cannot index an empty set")
    if kind not in ("auto", "flat", "ivf"):
        raise CopyDetectionError(f"unknown index kind {kind!r}; expected 'auto', 'flat' or 'ivf'")
    if kind == "auto":
        kind = "flat" if num_entries <= exact_max_entries else "ivf"
    if kind == "flat":
        if nlist is not None or nprobe is not None:
            raise CopyDetectionError("nlist / nprobe apply to the IVF index only (kind='ivf')")
        return IndexConfig("flat", seed=seed)
    largest = num_entries // MIN_POINTS_PER_LIST
    if largest < 1:
        raise CopyDetectionError(f"an IVF index needs at least {MIN_POINTS_PER_LIST} entries, got {num_entries}; "
                                 "use the exact index")
    nlist = int(nlist) if nlist is not None else max(1, min(largest, round(4 * math.sqrt(num_entries))))
    if not 1 <= nlist <= largest:
        raise CopyDetectionError(f"nlist must be in [1, {largest}] for {num_entries} entries "
                                 f"(at least {MIN_POINTS_PER_LIST} training points per list), got {nlist}")
    nprobe = int(nprobe) if nprobe is not None else min(nlist, max(8, nlist // 16))
    if not 1 <= nprobe <= nlist:
        raise CopyDetectionError(f"nprobe must be in [1, nlist = {nlist}], got {nprobe}")
    return IndexConfig("ivf", nlist, nprobe, min(num_entries, TRAIN_POINTS_PER_LIST * nlist), seed)


# -- results -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Match:
    """One of the k nearest training entries of a sample."""

    sample: int  # row of the query batch
    sample_id: str | None
    rank: int  # 0 = nearest
    entry: int  # training entry (with flips: N..2N-1 are the mirrored images)
    image_index: int
    image_id: str
    flip: bool
    score: float  # cosine similarity of the descriptors
    flag: float | None  # highest threshold reached, None if below all


@dataclass
class CopyDetectionResult:
    """The k nearest training entries of every sample, with what scored them."""

    descriptor: dict  # Descriptor.describe(): model, checkpoint sha256, preprocessing
    thresholds: tuple[float, ...]
    index: dict  # index kind, nlist / nprobe, exactness, training set record
    k: int
    num_samples: int
    matches: list[Match] = field(default_factory=list)

    def flagged(self, threshold: float | None = None) -> list[Match]:
        """Matches scoring at least `threshold` (default: the lowest threshold)."""
        limit = self.thresholds[0] if threshold is None else float(threshold)
        return [m for m in self.matches if m.score >= limit]

    def best(self) -> list[Match]:
        """The nearest entry of each sample (samples without a result are left out)."""
        return [m for m in self.matches if m.rank == 0]

    def rows(self) -> list[dict]:
        """Flat records, one per match, each naming descriptor, preprocessing and thresholds."""
        common = {"descriptor": self.descriptor["name"], "descriptor_fingerprint": self.descriptor["fingerprint"],
                  "preprocessing": json.dumps(self.descriptor["preprocessing"], sort_keys=True),
                  "thresholds": list(self.thresholds), "index_kind": self.index["config"]["kind"],
                  "exact": self.index["config"]["exact"]}
        return [{**asdict(m), **common} for m in self.matches]

    def to_dict(self) -> dict:
        return {"descriptor": self.descriptor, "thresholds": list(self.thresholds), "index": self.index,
                "k": self.k, "num_samples": self.num_samples, "matches": [asdict(m) for m in self.matches]}

    def summary(self) -> str:
        """A text table: one line per sample's nearest entry, headed by descriptor and thresholds."""
        prep = self.descriptor["preprocessing"]
        lines = [f"descriptor: {self.descriptor['name']} ({self.descriptor['kind']}, {self.descriptor['dimension']}-d, "
                 f"preprocessing {prep['name']}); thresholds: {', '.join(f'{t:g}' for t in self.thresholds)}; "
                 f"index: {self.index['config']['kind']} ({'exact' if self.index['config']['exact'] else 'approximate'})",
                 ]
        best = self.best()
        names = [m.sample_id if m.sample_id is not None else str(m.sample) for m in best]
        width = max([6, *map(len, names)])
        image_width = max([22, *(len(m.image_id) for m in best)])
        lines.append(f"{'sample':<{width}}  {'nearest training image':<{image_width}}  {'flip':<4}  {'score':>7}  flag")
        for name, m in zip(names, best):
            mark = f">= {m.flag:g}" if m.flag is not None else "-"
            lines.append(f"{name:<{width}}  {m.image_id:<{image_width}}  {'yes' if m.flip else 'no':<4}  "
                         f"{m.score:7.4f}  {mark}")
        return "\n".join(lines)


# -- the index -----------------------------------------------------------------------------

RECORD_KEYS = ("name", "kind", "dimension", "preprocessing", "fingerprint")


def _check_record(record: dict) -> dict:
    """A descriptor record (Descriptor.describe()) must say what scored the results."""
    missing = [key for key in RECORD_KEYS if not isinstance(record, dict) or key not in record]
    if missing:
        raise CopyDetectionError(f"the descriptor record lacks {missing}: pass Descriptor.describe()")
    return record


def _as_descriptor_array(descriptors, dimension: int | None, what: str) -> np.ndarray:
    if isinstance(descriptors, torch.Tensor):
        descriptors = descriptors.detach().to("cpu", torch.float32).numpy()
    array = np.ascontiguousarray(np.asarray(descriptors, dtype=np.float32))
    if array.ndim != 2 or (dimension is not None and array.shape[1] != dimension):
        expected = f"[B, {dimension}]" if dimension is not None else "[B, D]"
        raise CopyDetectionError(f"{what} must be {expected}, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise CopyDetectionError(f"{what} hold NaN or infinite values")
    return array


class CopyDetectionIndex:
    """Descriptors of a training set's entries in a faiss inner-product index."""

    def __init__(self, index: faiss.Index, config: IndexConfig, descriptor_record: dict, ids: Sequence[str],
                 include_flips: bool = False, training_set: dict | None = None, descriptor: Descriptor | None = None):
        self.index = index
        self.config = config
        self.descriptor_record = descriptor_record
        self.ids = [str(i) for i in ids]
        self.include_flips = bool(include_flips)
        self.training_set = training_set
        self.descriptor = descriptor
        expected = len(self.ids) * (2 if self.include_flips else 1)
        if index.ntotal != expected:
            raise CopyDetectionError(f"the index holds {index.ntotal} vectors, expected {expected} "
                                     f"({len(self.ids)} images{' with flips' if self.include_flips else ''})")

    # -- building --------------------------------------------------------------------------
    @staticmethod
    def _empty(dimension: int, config: IndexConfig, gpu: bool) -> faiss.Index:
        if config.kind == "flat":
            index = faiss.IndexFlatIP(dimension)
        else:
            quantizer = faiss.IndexFlatIP(dimension)
            index = faiss.IndexIVFFlat(quantizer, dimension, config.nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = config.seed  # k-means seed: the same lists on every build (faiss keeps the quantizer alive)
        if gpu:
            if not hasattr(faiss, "index_cpu_to_all_gpus") or faiss.get_num_gpus() < 1:
                raise CopyDetectionError("gpu=True needs the faiss-gpu package (pip install 'pspc-auditor[gpu]') "
                                         "and a CUDA device; faiss sees none")
            index = faiss.index_cpu_to_all_gpus(index)
        return index

    @classmethod
    def from_descriptors(cls, descriptors, descriptor_record: dict, *, ids: Sequence[str] | None = None,
                         kind: str = "auto", nlist: int | None = None, nprobe: int | None = None,
                         exact_max_entries: int = EXACT_MAX_ENTRIES, seed: int = 0, gpu: bool = False,
                         descriptor: Descriptor | None = None) -> "CopyDetectionIndex":
        """Index precomputed L2-normalised descriptors [N, D] (row i = training image ids[i])."""
        _check_record(descriptor_record)
        array = _as_descriptor_array(descriptors, descriptor_record.get("dimension"), "training descriptors")
        ids = [str(i) for i in range(len(array))] if ids is None else list(ids)
        if len(ids) != len(array):
            raise CopyDetectionError(f"{len(ids)} ids for {len(array)} descriptors")
        config = choose_index(len(array), kind, nlist, nprobe, exact_max_entries, seed)
        index = cls._empty(array.shape[1], config, gpu)
        if config.kind == "ivf":
            sample = np.random.default_rng(seed).choice(len(array), config.train_size, replace=False)
            index.train(array[np.sort(sample)])
            index.nprobe = config.nprobe
        index.add(array)
        return cls(index, config, descriptor_record, ids, descriptor=descriptor)

    @classmethod
    def build(cls, training_set, descriptor: Descriptor, *, include_flips: bool | None = None, kind: str = "auto",
              nlist: int | None = None, nprobe: int | None = None, exact_max_entries: int = EXACT_MAX_ENTRIES,
              batch_size: int | None = None, seed: int = 0, gpu: bool = False,
              progress: Callable[[int, int], None] | None = None) -> "CopyDetectionIndex":
        """Describe every entry of a `pspc.data.training_set.TrainingSet` in batches and index it.

        include_flips (default: the set's own xflip) also indexes the mirrored images as
        entries N..2N-1. For IVF the descriptors of a seeded training sample are computed
        first. progress(done, total) counts described entries (training sample included). An exact
        index of a learned or SSCD descriptor takes them from the disk cache when it holds them
        (auditor.similarity.descriptor_cache).
        """
        include_flips = training_set.xflip if include_flips is None else bool(include_flips)
        num_images = len(training_set)
        num_entries = num_images * (2 if include_flips else 1)
        config = choose_index(num_entries, kind, nlist, nprobe, exact_max_entries, seed)
        batch_size = int(batch_size or descriptor.batch_size)
        if batch_size < 1:
            raise CopyDetectionError(f"batch_size must be positive, got {batch_size}")
        total = num_entries + (config.train_size or 0)
        done = 0

        def entry_images(entries: np.ndarray) -> torch.Tensor:
            images = training_set.images[torch.from_numpy(entries % num_images)]
            flips = torch.from_numpy(entries >= num_images)
            if flips.any():
                images = torch.where(flips[:, None, None, None], images.flip(-1), images)
            return images

        def described(entries: np.ndarray) -> Iterator[np.ndarray]:
            nonlocal done
            for start in range(0, len(entries), batch_size):
                chunk = entries[start:start + batch_size]
                yield descriptor(entry_images(chunk), batch_size=batch_size).numpy()
                done += len(chunk)
                if progress is not None:
                    progress(done, total)

        index = cls._empty(descriptor.dimension, config, gpu)
        if config.exact and descriptor.kind in CACHED_KINDS:
            index.add(np.ascontiguousarray(entry_descriptors(descriptor, training_set.images, xflip=include_flips,
                                                             batch_size=batch_size).numpy()))
            if progress is not None:
                progress(total, total)
            return cls(index, config, descriptor.describe(), training_set.ids, include_flips,
                       training_set.describe(), descriptor)
        if config.kind == "ivf":
            sample = np.sort(np.random.default_rng(seed).choice(num_entries, config.train_size, replace=False))
            index.train(np.concatenate(list(described(sample))))
            index.nprobe = config.nprobe
        for block in described(np.arange(num_entries)):
            index.add(np.ascontiguousarray(block))
        return cls(index, config, descriptor.describe(), training_set.ids, include_flips,
                   training_set.describe(), descriptor)

    # -- entries ---------------------------------------------------------------------------
    @property
    def num_entries(self) -> int:
        return int(self.index.ntotal)

    @property
    def dimension(self) -> int:
        return int(self.index.d)

    def entry(self, j: int) -> tuple[int, str, bool]:
        """(image index, image id, flipped) of entry j."""
        n = len(self.ids)
        if not 0 <= j < self.num_entries:
            raise IndexError(f"entry {j} out of range for {self.num_entries} entries")
        index, flip = (j - n, True) if j >= n else (j, False)
        return index, self.ids[index], flip

    def describe(self) -> dict:
        return {"config": self.config.describe(), "num_entries": self.num_entries, "num_images": len(self.ids),
                "include_flips": self.include_flips, "training_set": self.training_set,
                "descriptor_fingerprint": self.descriptor_record.get("fingerprint")}

    # -- searching -------------------------------------------------------------------------
    def nearest(self, descriptors, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """(entries int64 [B, k], scores float32 [B, k]), best first. Where an IVF search finds
        fewer than k entries in the probed lists the entry is -1 and the score NaN."""
        query = _as_descriptor_array(descriptors, self.dimension, "query descriptors")
        k = int(k)
        if k < 1:
            raise CopyDetectionError(f"k must be at least 1, got {k}")
        k = min(k, self.num_entries)
        if len(query) == 0:
            return np.empty((0, k), np.int64), np.empty((0, k), np.float32)
        scores, entries = self.index.search(query, k)
        scores = scores.astype(np.float32)
        scores[entries < 0] = np.nan
        return entries.astype(np.int64), scores

    def _check_descriptor(self, descriptor: Descriptor) -> Descriptor:
        if descriptor is None:
            raise CopyDetectionError("this index has no descriptor attached: pass the one it was built with")
        if descriptor.fingerprint != self.descriptor_record.get("fingerprint"):
            raise CopyDetectionError(
                f"the index was built with descriptor {self.descriptor_record.get('name')!r} "
                f"(fingerprint {str(self.descriptor_record.get('fingerprint'))[:12]}), the queries would be "
                f"described with {descriptor.name!r} (fingerprint {descriptor.fingerprint[:12]})")
        return descriptor

    def detect(self, images, *, k: int = 5, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
               sample_ids: Sequence[str] | None = None, descriptor: Descriptor | None = None,
               batch_size: int | None = None) -> CopyDetectionResult:
        """Describe generated images [B, C, H, W] and find their k nearest training entries."""
        descriptor = self._check_descriptor(descriptor or self.descriptor)
        return self.detect_descriptors(descriptor(images, batch_size=batch_size), k=k, thresholds=thresholds,
                                       sample_ids=sample_ids)

    def detect_descriptors(self, descriptors, *, k: int = 5, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                           sample_ids: Sequence[str] | None = None) -> CopyDetectionResult:
        """As `detect`, for descriptors computed with this index's descriptor."""
        thresholds = check_thresholds(thresholds)
        entries, scores = self.nearest(descriptors, k)
        if sample_ids is not None and len(sample_ids) != len(entries):
            raise CopyDetectionError(f"{len(sample_ids)} sample ids for {len(entries)} samples")
        matches = []
        for sample in range(len(entries)):
            for rank in range(entries.shape[1]):
                j = int(entries[sample, rank])
                if j < 0:
                    continue
                image_index, image_id, flip = self.entry(j)
                score = float(scores[sample, rank])
                matches.append(Match(sample, None if sample_ids is None else str(sample_ids[sample]), rank, j,
                                     image_index, image_id, flip, score, flag(score, thresholds)))
        return CopyDetectionResult(self.descriptor_record, thresholds, self.describe(), entries.shape[1],
                                   len(entries), matches)

    # -- persistence -----------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> Path:
        """Write `index.faiss` and `manifest.json` (descriptor, training set, ids, config) to a folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        index = self.index
        if type(index).__name__.startswith("Gpu"):
            index = faiss.index_gpu_to_cpu(index)
        faiss.write_index(index, str(folder / INDEX_FILE))
        manifest = {"format": 1, "config": asdict(self.config), "descriptor": self.descriptor_record,
                    "training_set": self.training_set, "include_flips": self.include_flips, "ids": self.ids}
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, descriptor: Descriptor | None = None,
             training_set=None) -> "CopyDetectionIndex":
        """Read a saved index; checks the descriptor and training set against it when given."""
        folder = Path(folder)
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
            index = faiss.read_index(str(folder / INDEX_FILE))
        except (OSError, ValueError, RuntimeError) as error:
            raise CopyDetectionError(f"{folder}: not a saved copy-detection index ({error})") from error
        config = IndexConfig(**manifest["config"])
        if config.kind == "ivf":
            index.nprobe = config.nprobe
        loaded = cls(index, config, manifest["descriptor"], manifest["ids"], manifest["include_flips"],
                     manifest["training_set"])
        if descriptor is not None:
            loaded.descriptor = loaded._check_descriptor(descriptor)
        if training_set is not None and manifest["training_set"] is not None:
            if training_set.fingerprint != manifest["training_set"]["fingerprint"]:
                raise CopyDetectionError(f"{folder}: the index was built on training set "
                                         f"{manifest['training_set']['fingerprint'][:12]}, not on "
                                         f"{training_set.fingerprint[:12]} ({training_set.name})")
        return loaded


# -- Fig. 9: similarity between denoisers' samples from shared noise ----------------------

@dataclass
class SimilarityMatrix:
    """mean[a, b] = mean over i of <d(A_i), d(B_i)> for sets sampled from the same noises."""

    names: list[str]
    scores: np.ndarray  # [K, K, B]: every per-sample similarity
    descriptor: dict
    thresholds: tuple[float, ...]

    @property
    def count(self) -> int:
        return int(self.scores.shape[2])

    @property
    def mean(self) -> np.ndarray:
        return self.scores.mean(axis=2)

    @property
    def std(self) -> np.ndarray:
        return self.scores.std(axis=2)

    def fraction_above(self, threshold: float) -> np.ndarray:
        """[K, K] fraction of sample pairs whose similarity reaches `threshold`."""
        return (self.scores >= threshold).mean(axis=2)

    @classmethod
    def from_descriptors(cls, named_descriptors: Mapping[str, np.ndarray] | Sequence[tuple[str, np.ndarray]],
                         descriptor_record: dict, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> "SimilarityMatrix":
        _check_record(descriptor_record)
        items = list(named_descriptors.items() if isinstance(named_descriptors, Mapping) else named_descriptors)
        names = [str(name) for name, _ in items]
        if not items:
            raise CopyDetectionError("similarity_matrix needs at least one set of samples")
        if len(set(names)) != len(names):
            raise CopyDetectionError(f"set names repeat: {names}")
        arrays = [_as_descriptor_array(d, descriptor_record.get("dimension"), f"descriptors of {name!r}")
                  for name, d in items]
        counts = {name: len(a) for name, a in zip(names, arrays)}
        if len(set(counts.values())) != 1 or 0 in counts.values():
            raise CopyDetectionError(f"every set must hold the same (non-zero) number of samples, one per shared "
                                     f"noise; got {counts}")
        stacked = np.stack(arrays).astype(np.float64)  # [K, B, D]
        scores = np.einsum("aid,bid->abi", stacked, stacked).astype(np.float32)
        return cls(names, scores, descriptor_record, check_thresholds(thresholds))

    def rows(self) -> list[dict]:
        """One record per ordered pair: mean, std, count, fraction above each threshold."""
        mean, std = self.mean, self.std
        above = {t: self.fraction_above(t) for t in self.thresholds}
        return [{"a": a, "b": b, "mean": float(mean[i, j]), "std": float(std[i, j]), "count": self.count,
                 "fraction_above": {f"{t:g}": float(above[t][i, j]) for t in self.thresholds},
                 "descriptor": self.descriptor["name"], "descriptor_fingerprint": self.descriptor["fingerprint"],
                 "preprocessing": json.dumps(self.descriptor["preprocessing"], sort_keys=True),
                 "thresholds": list(self.thresholds)}
                for i, a in enumerate(self.names) for j, b in enumerate(self.names)]

    def to_dict(self, include_scores: bool = True) -> dict:
        record = {"names": self.names, "count": self.count, "mean": self.mean.tolist(), "std": self.std.tolist(),
                  "fraction_above": {f"{t:g}": self.fraction_above(t).tolist() for t in self.thresholds},
                  "descriptor": self.descriptor, "thresholds": list(self.thresholds)}
        if include_scores:
            record["scores"] = self.scores.tolist()
        return record

    def summary(self) -> str:
        """The mean matrix as a text table, headed by descriptor and preprocessing."""
        width = max(8, *(len(n) for n in self.names)) + 2
        lines = [f"mean descriptor similarity over {self.count} shared noises; descriptor: {self.descriptor['name']} "
                 f"({self.descriptor['kind']}, preprocessing {self.descriptor['preprocessing']['name']}); "
                 f"copy thresholds: {', '.join(f'{t:g}' for t in self.thresholds)}",
                 " " * width + "".join(f"{n:>{width}}" for n in self.names)]
        for i, name in enumerate(self.names):
            lines.append(f"{name:<{width}}" + "".join(f"{v:>{width}.3f}" for v in self.mean[i]))
        return "\n".join(lines)


def similarity_matrix(sets_of_images: Mapping[str, object] | Sequence[tuple[str, object]], descriptor: Descriptor,
                      thresholds: Sequence[float] = DEFAULT_THRESHOLDS, batch_size: int | None = None) -> SimilarityMatrix:
    """Fig. 9: descriptor similarity between denoisers' samples from shared initial noise.

    sets_of_images: name -> images [B, C, H, W], where sample i of every set was generated
    from the same noise z_i. Entry (A, B) is the mean over i of <d(A_i), d(B_i)>.
    """
    items = list(sets_of_images.items() if isinstance(sets_of_images, Mapping) else sets_of_images)
    described = []
    for name, images in items:
        try:
            described.append((name, descriptor(images, batch_size=batch_size)))
        except DescriptorError as error:
            raise CopyDetectionError(f"cannot describe the samples of {name!r}: {error}") from error
    return SimilarityMatrix.from_descriptors(described, descriptor.describe(), thresholds)
