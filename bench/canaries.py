"""Benchmark: planted canaries, the training images a network memorised, found by each evidence source.

    PYTHONPATH=. nice -n 10 .venv/bin/python bench/canaries.py --out bench/results/canaries   # ~9 min, 2 cores
    PYTHONPATH=. .venv/bin/python bench/canaries.py --samples 8 --batch 8 --per-family 3 --novel 60 \
        --out /tmp/canaries   # smoke

The network (--network, default checkpoints/fmnist-canary-unet.pt) was trained by `auditor
train-network --limit M --canaries N --canary-repeats R` on the first M Fashion-MNIST training
images plus R more copies of N of them; its record names them (indices, pixel sha256), and the
base slice is checked against its fingerprint. Every evidence source's training set is that
base slice with mirrored entries, each canary once.

1. Samples: K samples from the network (Heun, 18 EDM steps; sample i from seed + i), with
   PSPC-Square's posterior on the network's z_t at every step (the trajectory evidence,
   auditor.similarity.trajectory_evidence, as `auditor compare` explains a network sample).
2. Ground truth: each sample's nearest training image by pixel MSE (the 8-bit sample against
   every image and its mirror); it replicates that image when d1 / d2 <= --replication (1/3),
   d1 its MSE to that image and d2 to the nearest other training image: a copy is far closer
   to its source than to any look-alike (the relative rule of Carlini et al. 2023, which also
   holds for the grainy copies a small network makes). Positives replicate a canary (their
   source is known); "other replicas" replicate another training image and count on neither
   side; "near replicas" (1/3 < d1 / d2 <= --near-replica, 0.5: mostly grainy copies of a
   canary) count on neither side in the main table and as negatives in the strict one; the
   rest are the negatives. The bounds are justified each run by the share of novel
   Fashion-MNIST test images that pass them. Pixel correlation is no rule here: 13.6 % of test
   images reach 0.95 with some image of a 2,000-image slice (garments are centred silhouettes).
3. Sources: pixel-correlation (faiss, the audit's default descriptor: the raw cosine), the
   learned descriptor (--descriptor: raw cosine, and descriptor-match s1 - 0.5 s2), pspc-share
   (PSPC-Square's posterior on the final image at t = 0.3, 7x7 patches), trajectory-share, and
   trajectory-share with descriptor-match (the larger score standardised on the negatives).
4. Per source: Recall@1 / @5 of the true canary among the positives and AUROC positives vs
   negatives (all samples); a threshold at --target-fpr on one half's negatives (even / odd
   sample indices), applied to the other half, so every sample is called by a threshold chosen
   without it (2-fold): TPR, FPR and "right" (called, and top candidate the true canary).
5. The copy verdict `auditor compare` gives (auditor.workflows.verdicts.judge), calibrated as
   `auditor calibrate` does (calibrate_store with its defaults: labelled cases of the base set and
   Fashion-MNIST test images, joint rule) in a temporary store, without and with descriptor-match,
   and with trajectory-share added (its 2-fold threshold as in 4): the share of each group called
   copy and, for positives, a copy of the right canary.

Writes OUT.md (tables, command, machine load, seeds, versions, checkpoint sha256) and OUT.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from auditor.similarity.benchmark import markdown_table, write_results
from auditor.similarity.cases import COPY_FAMILIES, PARTIAL_FAMILIES
from auditor.similarity.copy_detection import CopyDetectionIndex
from auditor.similarity.descriptor_evidence import DescriptorMatch
from auditor.similarity.descriptors import PixelCorrelationDescriptor, load_descriptor
from auditor.similarity.metrics import auroc, threshold_for_fpr
from auditor.similarity.pspc_evidence import PSPCShare
from auditor.similarity.trajectory_evidence import TrajectoryShare, standardised_max
from auditor.workflows.verdicts import CalibrationOptions
from pspc.data.loaders import load_fashion_mnist
from pspc.data.training_set import to_uint8
from pspc.networks import load_network
from pspc.networks.training import record_path_for
from pspc.record import environment
from pspc.samplers import SamplerConfig, initial_noise

GROUPS = ("canary", "other replica", "near replica", "novel")
SOURCES = ("pixel-correlation", "learned-descriptor", "descriptor-match", "pspc-share", "trajectory-share",
           "trajectory-share + descriptor-match")


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", type=Path, default=Path("checkpoints/fmnist-canary-unet.pt"))
    parser.add_argument("--samples", type=int, default=256, help="network samples K (default 256)")
    parser.add_argument("--batch", type=int, default=16, help="samples sampled and explained together (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="sample i starts from the noise of seed + i")
    parser.add_argument("--steps", type=int, default=18)
    parser.add_argument("--sampler", choices=("euler", "heun"), default="heun")
    parser.add_argument("--replication", type=float, default=1 / 3,
                        help="d1 / d2 (MSE to the nearest training image over that to the nearest other one) at "
                             "or below which a sample replicates its nearest image (default 1/3)")
    parser.add_argument("--near-replica", type=float, default=0.5,
                        help="d1 / d2 at or below which a sample that is no replica is a near replica (0.5)")
    parser.add_argument("--target-fpr", type=float, default=0.005,
                        help="the FPR at which each source's threshold is chosen on the samples (0.005)")
    parser.add_argument("--per-family", type=int,
                        help=f"verdict calibration: cases per copy family (default: auditor calibrate's "
                             f"{CalibrationOptions.per_family}, or fewer where the base set has too few images)")
    parser.add_argument("--novel", type=int, default=CalibrationOptions.novel_count,
                        help="verdict calibration: novel test images (default: auditor calibrate's, %(default)s)")
    parser.add_argument("--descriptor", default="fmnist-copy", help="the learned descriptor (default %(default)s)")
    parser.add_argument("--pspc-t", type=float, default=0.3)
    parser.add_argument("--pspc-patch", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and numba threads (default 1, for the shared machine)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/canaries"))
    return parser.parse_args(argv)


# -- the network and its data ------------------------------------------------------------------
def canary_network(path: Path):
    """(training record, base set with mirrored entries, network): the base slice is checked against
    the record's fingerprint and the canaries against their pixel sha256."""
    record = json.loads(record_path_for(path).read_text())
    canaries = record.get("canaries")
    if not canaries:
        raise SystemExit(f"{path}: its record names no canaries; train one with `auditor train-network --canaries N`")
    base = load_fashion_mnist("train", limit=canaries["base"]["count"])
    if base.fingerprint != canaries["base"]["fingerprint"]:
        raise SystemExit(f"{path}: trained on a base set with fingerprint {canaries['base']['fingerprint'][:12]}..., "
                         f"the first {len(base)} Fashion-MNIST images have {base.fingerprint[:12]}...")
    if [base.image_sha256(i) for i in canaries["indices"]] != canaries["sha256"]:
        raise SystemExit(f"{path}: the canaries' pixel sha256 do not match the base set's images")
    base = base.with_xflip()
    return record, base, load_network(path, base)


def sample_with_trajectories(args, network, base):
    """(8-bit samples [K, C, H, W], trajectory-share evidence, the source), K = args.samples."""
    source = TrajectoryShare(base)
    config = SamplerConfig(method=args.sampler, num_steps=args.steps)
    finals, evidence = [], []
    for start in range(0, args.samples, args.batch):
        count = min(args.batch, args.samples - start)
        final, found = source.sample(network, initial_noise(count, base.image_shape, args.seed + start), config)
        finals.append(to_uint8(final.clamp(-1, 1).cpu()))
        evidence += found
        print(f"sampled and explained {start + count}/{args.samples}", file=sys.stderr, flush=True)
    return torch.cat(finals), evidence, source


# -- ground truth ----------------------------------------------------------------------------
def _unit(rows: torch.Tensor) -> torch.Tensor:
    rows = rows - rows.mean(1, keepdim=True)
    return rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-8)


def nearest_images(images: torch.Tensor, base) -> dict:
    """Of 8-bit images [B, C, H, W], by pixel MSE on [-1, 1] over the training images and their
    mirrors: the nearest image, its entry, d1 (its MSE), ratio d1 / d2 (d2: the nearest other
    image's MSE) and the Pearson correlation with it."""
    entries = base.entry_images(torch.float32).flatten(1)
    x = images.float().div(127.5).sub(1).flatten(1)
    n = len(base)
    mse = torch.cat([torch.cdist(x[i:i + 256], entries).square() / x.shape[1] for i in range(0, len(x), 256)])
    per_image = torch.minimum(mse[:, :n], mse[:, n:])
    closest, image = per_image.topk(2, dim=1, largest=False)
    entry = image[:, 0] + n * (mse[:, n:].gather(1, image[:, :1]) < mse[:, :n].gather(1, image[:, :1]))[:, 0]
    correlation = (_unit(x) * _unit(entries[entry])).sum(1)
    return {"image": image[:, 0].numpy(), "entry": entry.numpy(), "mse": closest[:, 0].numpy(),
            "ratio": (closest[:, 0] / closest[:, 1].clamp_min(1e-12)).numpy(), "correlation": correlation.numpy()}


def ground_truth(images, base, canary_indices, bound, near_bound) -> dict:
    truth = nearest_images(images, base)
    replica = truth["ratio"] <= bound
    truth["group"] = np.where(replica & np.isin(truth["image"], canary_indices), "canary",
                              np.where(replica, "other replica",
                                       np.where(truth["ratio"] <= near_bound, "near replica", "novel")))
    return truth


def novel_rate(base, test_images, bound, near_bound) -> dict:
    """How often a novel image (a Fashion-MNIST test image) passes the replication rules."""
    truth = nearest_images(test_images, base)
    return {"images": len(test_images), "bound": round(bound, 4),
            "share_replicating": float(np.mean(truth["ratio"] <= bound)),
            "share_near_replicating": float(np.mean(truth["ratio"] <= near_bound)),
            "ratio_q0.005": float(np.quantile(truth["ratio"], 0.005)),
            "ratio_median": float(np.median(truth["ratio"])),
            "correlation_share_at_or_above_0.95": float(np.mean(truth["correlation"] >= 0.95))}


# -- the evidence sources --------------------------------------------------------------------
def image_sources(args, base, images, timings) -> tuple[dict[str, list], list]:
    """{source: [(score, candidate entries)]} of the image-based sources, and the descriptor-match evidence."""
    out = {}
    start = time.perf_counter()
    descriptor = PixelCorrelationDescriptor()
    entries, scores = CopyDetectionIndex.build(base, descriptor).nearest(descriptor(images), k=16)
    out["pixel-correlation"] = [(float(s[0]), [int(e) for e in row]) for row, s in zip(entries, scores)]
    timings["pixel-correlation"] = time.perf_counter() - start
    start = time.perf_counter()
    match = DescriptorMatch(base.images, load_descriptor(args.descriptor))
    found = match(images)
    out["learned-descriptor"] = [(e.alignment["similarity"], [c for c, _ in e.candidates]) for e in found]
    out["descriptor-match"] = [(e.score, [c for c, _ in e.candidates]) for e in found]
    timings["learned descriptor (describe the base set + samples)"] = time.perf_counter() - start
    start = time.perf_counter()
    pspc = PSPCShare(base, t=args.pspc_t, patch_size=args.pspc_patch, seed=args.seed)
    out["pspc-share"] = [(e.score, [c for c, _ in e.candidates]) for i in range(0, len(images), 32)
                         for e in pspc(images[i:i + 32])]
    timings["pspc-share (final images)"] = time.perf_counter() - start
    return out, found


def halves(count: int) -> list[np.ndarray]:
    """The two folds: even and odd sample indices."""
    index = np.arange(count)
    return [index % 2 == 0, index % 2 == 1]


def combined(trajectory, descriptor, negative) -> list:
    """trajectory-share + descriptor-match: the larger score standardised on the negatives of the
    other fold (2-fold, so no sample is scored against itself)."""
    out = [None] * len(trajectory)
    for fold in halves(len(trajectory)):
        reference = {"trajectory-share": [trajectory[i].score for i in np.flatnonzero(~fold & negative)],
                     "descriptor-match": [descriptor[i].score for i in np.flatnonzero(~fold & negative)]}
        for i in np.flatnonzero(fold):
            e = standardised_max({"trajectory-share": trajectory[i], "descriptor-match": descriptor[i]}, reference)
            out[i] = (e.score, [c for c, _ in e.candidates])
    return out


def held_out_calls(scores: np.ndarray, negative: np.ndarray, target_fpr: float) -> tuple[np.ndarray, list[float]]:
    """Each sample's call (score >= the threshold chosen at target_fpr on the other fold's negatives)."""
    called, thresholds = np.zeros(len(scores), bool), []
    for fold in halves(len(scores)):
        threshold = threshold_for_fpr(scores[~fold & negative], target_fpr)
        called[fold] = scores[fold] >= threshold
        thresholds.append(threshold)
    return called, thresholds


def source_row(name, scored, truth, base_count, target_fpr, negatives=("novel",)) -> dict:
    """One source's metrics; negatives: the groups that count as negatives."""
    group, canary = truth["group"], truth["image"]
    positive, negative = group == "canary", np.isin(group, negatives)
    scores = np.array([s for s, _ in scored], float)
    top = [[c % base_count for c in candidates] for _, candidates in scored]
    rows = np.flatnonzero(positive)
    called, thresholds = held_out_calls(scores, negative, target_fpr)
    return {"source": name, "positives": int(positive.sum()), "negatives": int(negative.sum()),
            "R@1": float(np.mean([canary[i] in top[i][:1] for i in rows])) if len(rows) else None,
            "R@5": float(np.mean([canary[i] in top[i][:5] for i in rows])) if len(rows) else None,
            "AUROC": auroc(scores[positive], scores[negative]),
            "TPR @ cal": float(np.mean(called[positive])) if len(rows) else None,
            "right @ cal": float(np.mean([called[i] and canary[i] == top[i][0] for i in rows])) if len(rows) else None,
            "FPR @ cal": float(np.mean(called[negative])) if negative.any() else None,
            "near replicas called": float(np.mean(called[group == "near replica"])) if (group == "near replica").any()
            else None, "thresholds (even, odd)": [round(t, 4) for t in thresholds]}


# -- the verdict -----------------------------------------------------------------------------
PLAIN = "hash, aligned-correlation, region-match"


def verdict_calls(args, base, novel, images, timings) -> tuple[dict, dict]:
    """({verdict: [Verdict.to_dict()] per sample}, {verdict: its calibration}): `auditor calibrate`'s
    calibration (auditor.workflows.verdicts.calibrate_store, its defaults unless given) in a temporary
    store, then the verdict `auditor compare` gives (judge), without and with descriptor-match."""
    from auditor.store import database
    from auditor.workflows.verdicts import CalibrationOptions, calibrate_store, judge

    calls, calibration = {}, {}
    per_family = args.per_family or min(CalibrationOptions.per_family,
                                        len(base) // len(COPY_FAMILIES + PARTIAL_FAMILIES))  # one source image each
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "canaries.duckdb"
        database.upgrade(db)
        for title, spec in ((PLAIN, "none"), ("+ descriptor-match", args.descriptor)):
            start = time.perf_counter()
            options = CalibrationOptions(per_family=per_family, novel_count=args.novel, seed=args.seed,
                                         verdict_descriptor=spec)
            result = calibrate_store(db, base, novel, options)
            calls[title] = [v.to_dict() for v in judge(db, base, result.dataset_id, images, descriptor=spec)]
            calibration[title] = {"rule": options.rule, "target_fpr": options.target_fpr, "per_family": per_family,
                                  "thresholds": result.thresholds, "test": result.record["test"]}
            timings[f"verdict {title}: calibrate on the base set, judge the samples"] = time.perf_counter() - start
    return calls, calibration


def verdict_rows(calls: dict, trajectory, truth) -> dict:
    """Per group: the share called copy (or partial copy) and, for positives, of the right canary;
    "+ trajectory-share": the plain verdict, or copy of its top image where trajectory[i] = (called at
    the held-out threshold, top image) says so."""
    calls = {**calls, "+ trajectory-share": [
        v if v["verdict"] in ("copy", "partial copy") or not called else
        {"verdict": "copy", "sources": [{"image_index": int(image)}]} for v, (called, image) in zip(calls[PLAIN],
                                                                                                  trajectory)]}
    tables = {}
    for title, verdicts in calls.items():
        rows = []
        for name in GROUPS:
            members = np.flatnonzero(truth["group"] == name)
            copy = [verdicts[i]["verdict"] in ("copy", "partial copy") for i in members]
            right = [c and truth["image"][i] in {s["image_index"] for s in verdicts[i]["sources"]}
                     for c, i in zip(copy, members)]
            rows.append({"group": name, "samples": len(members), "called copy": float(np.mean(copy)) if copy else None,
                         "of the right canary": float(np.mean(right)) if name == "canary" and right else None})
        tables[title] = rows
    return tables


# -- the run ---------------------------------------------------------------------------------
def run(args) -> dict:
    import numba

    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))  # the PSPC kernels' threads
    timings, load = {}, os.getloadavg()
    record, base, network = canary_network(args.network)
    canaries = record["canaries"]["indices"]
    test_images = load_fashion_mnist("test").images
    start = time.perf_counter()
    images, trajectory, source = sample_with_trajectories(args, network, base)
    timings["network samples with PSPC on every state"] = time.perf_counter() - start
    truth = ground_truth(images, base, canaries, args.replication, args.near_replica)
    scored, described = image_sources(args, base, images, timings)
    scored["trajectory-share"] = [(e.score, [c for c, _ in e.candidates]) for e in trajectory]
    scored["trajectory-share + descriptor-match"] = combined(trajectory, described, truth["group"] == "novel")
    rows = [source_row(name, scored[name], truth, len(base), args.target_fpr) for name in SOURCES]
    strict = [source_row(name, scored[name], truth, len(base), args.target_fpr, ("novel", "near replica"))
              for name in SOURCES]
    trajectory_called, _ = held_out_calls(np.array([e.score for e in trajectory]), truth["group"] == "novel",
                                          args.target_fpr)
    calls, calibration = verdict_calls(args, base, load_fashion_mnist("test"), images, timings)
    verdicts = verdict_rows(calls, list(zip(trajectory_called, [e.entry for e in trajectory])), truth)
    per_canary = {int(c): int(np.sum((truth["group"] == "canary") & (truth["image"] == c))) for c in canaries}
    return {
        "command": " ".join(["PYTHONPATH=. .venv/bin/python", "bench/canaries.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": load, "load_average_at_end": os.getloadavg(),
                    **environment(torch.device("cpu"), processor=True, with_commit=True)},
        "network": {"path": str(args.network), "sha256": hashlib.sha256(args.network.read_bytes()).hexdigest(),
                    "iterations": record["iterations"], "wall_seconds": record["wall_seconds"],
                    "canaries": {k: record["canaries"][k] for k in ("indices", "ids", "repeats", "seed")},
                    "base": record["canaries"]["base"]},
        "sampling": {"samples": args.samples, "seeds": f"{args.seed}..{args.seed + args.samples - 1}",
                     "sampler": args.sampler, "steps": args.steps},
        "trajectory_source": source.describe(),
        "replication": {"rule": f"d1 / d2 <= {args.replication:.4g}: pixel MSE to the nearest training image (or "
                                "its mirror) over that to the nearest other one (8-bit images)",
                        "groups": {g: int(np.sum(truth["group"] == g)) for g in GROUPS}, "per_canary": per_canary,
                        "novel_test_images": novel_rate(base, test_images[-2000:], args.replication,
                                                        args.near_replica)},
        "sources": rows, "sources_strict": strict, "verdict": verdicts, "verdict_calibration": calibration,
        "timings": timings,
        "samples": [{"seed": args.seed + i, "group": str(truth["group"][i]), "nearest_image": int(truth["image"][i]),
                     "mse": float(truth["mse"][i]), "ratio": float(truth["ratio"][i]),
                     "correlation": float(truth["correlation"][i]),
                     **{name: {"score": float(scored[name][i][0]), "top": int(scored[name][i][1][0]) % len(base)}
                        for name in SOURCES}} for i in range(len(images))],
    }


def report(result: dict) -> str:
    net, rep = result["network"], result["replication"]
    lines = ["# Planted canaries: memorisation by a network", "", f"Command: `{result['command']}`", "",
             f"Machine: {result['machine']['cpus']} CPUs, load average {result['machine']['load_average_at_start']} "
             f"at start and {result['machine']['load_average_at_end']} at end (shared machine); torch "
             f"{result['machine']['versions']['torch']}, pspc-auditor {result['machine']['versions']['pspc-auditor']}.",
             "", f"Network: `{net['path']}` (sha256 {net['sha256']}), {net['iterations']} iterations in "
             f"{net['wall_seconds']:.0f} s, on the first {net['base']['count']} Fashion-MNIST training images plus "
             f"{net['canaries']['repeats']} more copies of canaries {net['canaries']['indices']} (seed "
             f"{net['canaries']['seed']}).", "",
             f"Samples: {result['sampling']}. Replication: {rep['rule']}. Groups: {rep['groups']}; replicas per "
             f"canary: {rep['per_canary']}.", "",
             f"Novel images against the rule: {rep['novel_test_images']}.", "",
             "R@k, AUROC: all samples. @ cal: each half called with the threshold chosen on the other half's "
             "negatives at the target FPR (2-fold).", ""]
    for key, title in (("sources", "negatives: novel samples"),
                       ("sources_strict", "strict: near replicas counted as negatives too")):
        lines += [f"## Evidence sources ({title})", "", markdown_table(
            [{"family": r["source"], **r} for r in result[key]],
            ("family", "positives", "negatives", "R@1", "R@5", "AUROC", "TPR @ cal", "right @ cal", "FPR @ cal",
             "near replicas called", "thresholds (even, odd)")), ""]
    for title, rows in result["verdict"].items():
        lines += [f"## Verdict: {title}", "", markdown_table([{"family": r["group"], **r} for r in rows], (
            "family", "samples", "called copy", "of the right canary")), ""]
    for title, calibration in result["verdict_calibration"].items():
        lines += [f"## Verdict calibration: {title} (`auditor calibrate` on the base set, rule {calibration['rule']}, "
                  f"target FPR {calibration['target_fpr']})", "",
                  markdown_table(calibration["thresholds"], ("evidence", "call", "threshold", "tpr", "fpr", "test_tpr",
                                                             "test_fpr", "positives", "negatives")), "",
                  f"Held-out half, novel images called by any source: {calibration['test']['union']}", ""]
    lines += [f"Trajectory source: `{json.dumps(result['trajectory_source'])}`", "",
              "## Timings (s)", "", *[f"- {k}: {v:.1f}" for k, v in result["timings"].items()], ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    result = run(args)
    write_results(args.out, result, report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
