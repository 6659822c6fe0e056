"""The attribution assertion: what an export says about a sample's training sources, THE record
that the C2PA manifest embeds (custom assertion ATTRIBUTION_LABEL), that the PROV document
restates, and that `auditor verify` compares with the store.

It holds the top sources of the final image ranked by the headline attribution score
(auditor.store.scores.HEADLINE_SCORE, the one bench/attribution.py measured best against exact
counterfactuals; `headline` names it and says what it means), with its value, their share (the
fraction of the final image built from the training image, from PSPC's posterior weights,
Eq. 11), their trajectory share, image ids, source URIs, owners and licences; the captured mass (the sum of
all sources' shares); per source, the regions of interest where it holds at least
PARTIAL_COPY_WEIGHT of each pixel's weight (candidate partial copies); the copy matches
stored for the sample (copy detection); and the run's, sample's and store's identity. The
generator (the tool and its version, the denoiser, sampler, schedule and seeds: `generator`)
goes with the C2PA action that created the sample.

`verdict` is the sample's stored copy verdict (auditor.similarity.verdict: copy / partial copy /
no copy found / inconclusive, with its score, calibrated threshold and measured TPR/FPR), or
"not assessed" when none is recorded, in which case the top sources stand in for it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from auditor.store.read_models.exports import ExportRecord
from auditor.store.read_models.sample import SampleProvenance
from auditor.store.scores import HEADLINE_SCORE, SCORES, sample_scores
from pspc.record import own_version

__all__ = ["ASSERTION_VERSION", "ATTRIBUTION_LABEL", "PARTIAL_COPY_WEIGHT", "TOOL_NAME", "assertion_images",
           "attribution_assertion", "compare_with_store", "dataset_uri", "generator", "headline_ranking",
           "number_lists_as_text",
           "partial_copy_regions", "verdict_record"]

ATTRIBUTION_LABEL = "org.pspc-auditor.attribution"
ASSERTION_VERSION = 1
TOOL_NAME = "pspc-auditor"
PARTIAL_COPY_WEIGHT = 0.5  # a pixel belongs to a source's region where the source holds at least this weight
HEADLINE_KEY = "headline_score"  # each top source's value of the headline score
SHARE_TOLERANCE = 1e-9  # shares are compared with the store to this (JSON keeps 17 significant digits)
NOT_ASSESSED = {"status": "not assessed", "basis": "top sources",
                "note": "no copy verdict is recorded for this sample (`auditor audit` and `auditor compare` record "
                        "one, `auditor calibrate` calibrates its thresholds); the top sources (their shares of the "
                        "final image) and the regions where one source dominates are the attribution evidence"}
VERDICT_FIELDS = ("verdict", "reason", "evidence", "score", "threshold", "tpr", "fpr", "calibration_id", "sources")


def verdict_record(stored: dict | None) -> dict:
    """The assertion's `verdict`: the stored copy verdict (its region as box and area, the mask
    stays in the store), or NOT_ASSESSED."""
    if not stored:
        return NOT_ASSESSED
    region = stored.get("region") or None
    return {"status": "assessed", **{k: stored.get(k) for k in VERDICT_FIELDS},
            "region": None if region is None else {k: region.get(k) for k in ("box", "area")}}


def dataset_uri(source: str | None) -> str | None:
    """A URI for a training set's recorded source: itself if it is one, a file: URI for an
    absolute path, else None (a loader spec such as 'fashion-mnist:train')."""
    if not source:
        return None
    if "://" in source:
        return source
    path = Path(source)
    return path.as_uri() if path.is_absolute() else None


def number_lists_as_text(value):
    """`value` with every list of numbers written as comma-separated text ("80.0, 9.72, 0.0"):
    c2pa's JSON reports (the Reader's json(), c2patool) show a CBOR array of numbers as a byte
    string, which garbles floats and integers above 255 (the CBOR in the manifest is intact)."""
    if isinstance(value, dict):
        return {k: number_lists_as_text(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return ", ".join(repr(v) for v in value)
        return [number_lists_as_text(v) for v in value]
    return value


def generator(record: ExportRecord) -> dict:
    """The tool and what made the sample: version, run kind, denoiser, sampler and schedule
    (lists of numbers as text: number_lists_as_text), seeds."""
    run, data = record.run, record.provenance
    return number_lists_as_text({
        "name": TOOL_NAME, "version": own_version(), "run_kind": run["kind"], "denoiser": run["denoiser"],
        "sampler": run["sampler"], "run_seed": int(run["seed"]), "sample_seed": int(data.seed),
        "num_samples": int(run["num_samples"]), "top_k": int(run["top_k"]),
        "mass_threshold": float(run["mass_threshold"]), "versions": run.get("versions") or {}})


def headline_ranking(data: SampleProvenance, top: int | None = None) -> list[tuple[int, float]]:
    """The assertion's sources: the training images with a positive headline attribution score
    (auditor.store.scores.HEADLINE_SCORE), highest first, with their scores (the first `top`)."""
    if data.final_shares() is None:
        return []
    values = sample_scores(data.db_path, data.run["id"], data.sample_index, [HEADLINE_SCORE])[HEADLINE_SCORE]
    return [(int(i), float(values[i])) for i in np.argsort(-values, kind="stable") if values[i] > 0][:top]


def assertion_images(data: SampleProvenance, top: int) -> list[int]:
    """The training images the assertion names (headline_ranking)."""
    return [i for i, _ in headline_ranking(data, top)]


def partial_copy_regions(data: SampleProvenance, image_index: int) -> list[dict]:
    """C2PA regions of interest (pixel rectangles) where `image_index` holds at least
    PARTIAL_COPY_WEIGHT of the final image's pixel weight: the bounding box of those pixels,
    with how many there are. Empty when it dominates no pixel."""
    images, weights, _ = data.image_weights(data.final_step)
    found = np.flatnonzero(images == int(image_index))
    if not len(found):
        return []
    mask = weights[found[0]] >= PARTIAL_COPY_WEIGHT
    if not mask.any():
        return []
    ys, xs = np.nonzero(mask)
    top, left = int(ys.min()), int(xs.min())
    height, width = int(ys.max()) - top + 1, int(xs.max()) - left + 1
    pixels = int(mask.sum())
    return [{"region": [{"type": "rectangle", "unit": "pixel", "x": left, "y": top, "width": width,
                         "height": height}],
             "role": "c2pa.areaOfInterest", "name": "candidate partial copy",
             "description": f"{pixels} of the {height}x{width} pixels in this box take at least "
                            f"{PARTIAL_COPY_WEIGHT:.0%} of their weight from this training image",
             "pixels": pixels}]


def _source(data: SampleProvenance, rank: int, image: int, headline: float, share: float, flip_share: float,
            trajectory: dict[int, float]) -> dict:
    meta = data.images.get(image)
    return {"rank": rank, "image_index": image, "image_id": meta.image_id if meta else None,
            HEADLINE_KEY: headline, "share": float(share), "flip_share": float(flip_share),
            "trajectory_share": trajectory.get(image, 0.0),
            "label_name": meta.label_name if meta else None, "source_uri": meta.source_uri if meta else None,
            "owner": meta.owner if meta else None, "license": meta.license if meta else None,
            "regions_of_interest": partial_copy_regions(data, image)}


def attribution_assertion(record: ExportRecord, top: int = 10) -> dict:
    """The assertion for a complete sample (see the module docstring); its top `top` sources
    must have been fetched into record.provenance.images (assertion_images)."""
    data = record.provenance
    final = data.final_shares()
    trajectory = data.trajectory_shares().as_dict()
    shares = {} if final is None else {int(i): (s, f) for i, s, f in zip(
        final.image_index.tolist(), final.share.tolist(), final.flip_share.tolist())}
    ranked = headline_ranking(data)
    sources = [_source(data, rank, i, value, *shares.get(i, (0.0, 0.0)), trajectory)
               for rank, (i, value) in enumerate(ranked[:top], 1)]
    dataset = record.dataset
    copies = [{"rank": m.rank, "image_index": m.image_index, "flip": m.flip, "score": m.score,
               "descriptor": m.descriptor, "flagged": m.flagged} for m in data.copy_matches]
    return {
        "version": ASSERTION_VERSION,
        "run_id": int(record.run["id"]), "sample_index": int(data.sample_index),
        "store": {**record.store, "run_fingerprint": record.run_fingerprint, "sample_sha256": record.sample_sha256},
        "dataset": {"name": dataset["name"], "fingerprint": dataset["fingerprint"], "source": dataset["source"],
                    "uri": dataset_uri(dataset["source"]), "images": int(dataset["count"])},
        "network": None if record.network is None else {k: record.network[k] for k in ("name", "kind", "sha256")},
        "verdict": verdict_record(data.verdict),
        "headline": {"score": HEADLINE_SCORE, "meaning": SCORES[HEADLINE_SCORE].meaning,
                     "ranking": "top_sources are ranked by it; the attribution benchmark (bench/attribution.py) "
                                "measured it best against exact counterfactuals"},
        "score": f"{HEADLINE_KEY}: the headline score ({HEADLINE_SCORE}); share: the fraction of the final image "
                 "built from the training image (kept PSPC posterior weights averaged over the pixels, Eq. 11); "
                 "flip_share: the part from its mirrored copy; trajectory_share: weighted over the sampling steps",
        "captured_mass": 0.0 if final is None else float(final.share.sum()),
        "sources_total": len(ranked),  # training images with a positive headline score
        "top_sources": sources,
        "copy_matches": copies,
    }


def _close(a, b) -> bool:
    return (isinstance(a, (int, float)) and isinstance(b, (int, float))
            and math.isclose(float(a), float(b), rel_tol=SHARE_TOLERANCE, abs_tol=SHARE_TOLERANCE))


def compare_with_store(claimed: dict, stored: dict) -> list[str]:
    """What differs between an assertion read from an image and the one the store gives now for
    the same sample: one line per difference (empty: they match)."""
    problems = []
    for key in ("run_id", "sample_index"):
        if claimed.get(key) != stored.get(key):
            problems.append(f"{key}: the image says {claimed.get(key)!r}, the store {stored.get(key)!r}")
    for key in ("run_fingerprint", "sample_sha256"):
        if (claimed.get("store") or {}).get(key) != stored["store"].get(key):
            problems.append(f"{key}: the image's does not match the store's")
    if (claimed.get("dataset") or {}).get("fingerprint") != stored["dataset"]["fingerprint"]:
        problems.append("dataset fingerprint: the image's does not match the store's")
    if not _close(claimed.get("captured_mass"), stored["captured_mass"]):
        problems.append(f"captured mass: the image says {claimed.get('captured_mass')!r}, "
                        f"the store {stored['captured_mass']!r}")
    verdict = (claimed.get("verdict") or {}).get("verdict"), stored["verdict"].get("verdict")
    if verdict[0] != verdict[1]:
        problems.append(f"copy verdict: the image says {verdict[0]!r}, the store {verdict[1]!r}")
    mine = claimed.get("top_sources") or []
    theirs = stored["top_sources"][:len(mine)] if mine else stored["top_sources"]
    if len(mine) != len(theirs):
        problems.append(f"top sources: the image lists {len(mine)}, the store has {len(theirs)}")
    for a, b in zip(mine, theirs):
        if a.get("image_index") != b["image_index"] or a.get("image_id") != b["image_id"]:
            problems.append(f"source #{b['rank']}: the image names {a.get('image_id')!r}, the store {b['image_id']!r}")
        elif not (_close(a.get("share"), b["share"]) and _close(a.get("flip_share"), b["flip_share"])):
            problems.append(f"source #{b['rank']} ({b['image_id']}): share {a.get('share')!r} in the image, "
                            f"{b['share']!r} in the store")
        elif not _close(a.get(HEADLINE_KEY), b[HEADLINE_KEY]):
            problems.append(f"source #{b['rank']} ({b['image_id']}): {HEADLINE_SCORE} {a.get(HEADLINE_KEY)!r} in the "
                            f"image, {b[HEADLINE_KEY]!r} in the store")
    return problems
