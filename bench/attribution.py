"""Benchmark: which attribution score predicts what a training image actually does to a PSPC sample.

    PYTHONPATH=. .venv/bin/python bench/attribution.py            # full: ~15 min on 2 idle CPU cores
    PYTHONPATH=. .venv/bin/python bench/attribution.py --quick --out out/attribution-quick   # CI-sized slice

PSPC's counterfactuals are exact: "this sample without these training images" is the same
PSPC run with those images (and their mirrors) masked out of the posterior
(`PSPCDenoiser.without`). Every candidate score of pspc.posterior.scores, and the baselines
(pixel similarity, the pixel-correlation descriptor), is measured against them:

1. Base set: 100 Fashion-MNIST training images per class (1,000), with x-flips; PSPC-Square
   with the default s(t) schedule, 18 Euler steps, weights kept as the product keeps them
   (top 16 per patch, mass 0.99). Queries: Q samples from seeds seed + i on the full base set,
   split into a tuning half (even i) and a test half (odd i).
2. LDS (as in D-TRAK): M random 50% subsets (fixed seed). For each query and subset the exact
   output with the complement removed: (a) minus the denoising error of the query sample at
   fixed noise draws, t in --lds-times (one eps per query and t), and (b) minus the MSE between
   the sample re-run from the same initial noise and the original. Per query, the Spearman
   correlation over the subsets between the summed scores of the members and the output;
   mean, s.e. and a bootstrap 95% CI over the test queries. Two scores are tuned on the tuning
   queries by LDS (b): the informative-share discount (family: pspc.posterior.scores.DISCOUNTS
   x --exponents) and the step-weighted-share's step weights (each step's weight is the LDS
   of that step's share alone). This LDS is a self-consistency measure against PSPC itself
   (exact counterfactuals), not against retrained networks.
3. Removal curves: per test query, remove the top-k images by each score and re-run from the
   same initial noise; against k random images (--random-seeds draws, one set per draw shared
   by the queries). The pixel-similarity row is the k pixel-nearest neighbours. The change is
   the pixel MSE to the original sample and the pixel-correlation descriptor similarity.
4. Cost of one counterfactual: the masked re-run's time over its parent run's (same process,
   one sample, weights kept).
5. PSPC vs the network (--network, unless --skip-network): the network samples
   --network-samples images (Euler, 18 steps); at every step PSPC-Square over the FULL 60k
   training set with flips denoises the network's own z_t; per image r^2 = 1 - SS_res / SS_tot
   of PSPC's D against the network's D, median and quartiles, beside the MSE; and PSPC's own
   samples from the same initial noise against the network's samples (the ELS comparison).

Writes OUT/attribution.md (the exact command, versions, dataset fingerprints, seeds, sizes,
load average, timings, the tables) and OUT/attribution.json (every number); prints the tables.
Finished LDS subsets and removal re-runs are kept in --cache as they complete, so a run that
is stopped (the machine is shared) resumes with identical numbers; --no-cache keeps nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from auditor.similarity.descriptors import PixelCorrelationDescriptor  # noqa: E402
from pspc.data.loaders import load_fashion_mnist  # noqa: E402
from pspc.denoisers import pspc_square  # noqa: E402
from pspc.evaluation.attribution import lds, random_subsets, summarise, top_k  # noqa: E402
from pspc.posterior.scores import (  # noqa: E402
    DISCOUNTS, SCORES, EvidenceRecorder, change_weighted_share, compute_scores, informative_share, pixel_similarity,
    step_shares, step_weighted_share,
)
from pspc.posterior.weights import WeightRequest  # noqa: E402
from pspc.record import environment, file_sha256  # noqa: E402
from pspc.samplers import SamplerConfig, initial_noise, sample  # noqa: E402

REQUEST = WeightRequest(top_k=16, mass=0.99)  # = auditor.workflows.options.SamplingOptions' defaults
CONFIG = SamplerConfig(method="euler", num_steps=18)  # = SamplingOptions' defaults
BASELINES = {
    "pixel-similarity": "Minus the squared pixel distance between the sample and the image (or its mirror); its "
                        "top k are the sample's k pixel-nearest neighbours.",
    "descriptor": "Cosine similarity of the pixel-correlation descriptor (not SSCD) of the sample and the image "
                  "(or its mirror).",
    "random": "A random number per image (the LDS of no information: about 0).",
}
CHANGE_WEIGHTED = "change-weighted-share"
VARIANTS = {CHANGE_WEIGHTED: "A step-weighted candidate (pspc.posterior.scores.change_weighted_share): each step's "
                             "pixel weights weighted by how much that step changed each pixel of D (|D_i - D_i-1|)."}
QUICK = {"per_class": 20, "queries": 8, "subsets": 8, "ks": "1,5,10", "random_seeds": 2, "network_samples": 2,
         "exponents": "1,2"}
FULL = {"per_class": 100, "queries": 32, "subsets": 32, "ks": "1,5,10,50,100", "random_seeds": 3,
        "network_samples": 16, "exponents": "0.5,1,2,4"}


def parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"CI-sized slice: {QUICK}")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results",
                        help="folder for attribution.md and attribution.json [bench/results]")
    parser.add_argument("--per-class", type=int, help=f"base training images per class [{FULL['per_class']}]")
    parser.add_argument("--queries", type=int, help=f"query samples, half tuning, half test [{FULL['queries']}]")
    parser.add_argument("--subsets", type=int, help=f"random 50%% subsets for the LDS [{FULL['subsets']}]")
    parser.add_argument("--ks", help=f"removal sizes [{FULL['ks']}]")
    parser.add_argument("--random-seeds", type=int, help=f"random removal draws per k [{FULL['random_seeds']}]")
    parser.add_argument("--exponents", help=f"informative-share exponents tried per discount [{FULL['exponents']}]")
    parser.add_argument("--lds-times", default="0.5,1,2", help="noise levels of LDS output (a) [0.5,1,2]")
    parser.add_argument("--seed", type=int, default=0, help="query i starts from initial noise seed + i [0]")
    parser.add_argument("--subset-seed", type=int, default=1, help="seed of the LDS subsets [1]")
    parser.add_argument("--network", type=Path, default=REPO / "checkpoints" / "fmnist-unet.pt",
                        help="network for the PSPC-vs-network r^2 [checkpoints/fmnist-unet.pt]")
    parser.add_argument("--skip-network", action="store_true", help="skip the PSPC-vs-network r^2 (the costly part)")
    parser.add_argument("--network-samples", type=int, help=f"network samples [{FULL['network_samples']}]")
    parser.add_argument("--network-seed", type=int, default=1000, help="network sample i starts from seed + i [1000]")
    parser.add_argument("--threads", type=int, default=2, help="torch threads [2]")
    parser.add_argument("--cache", type=Path, default=REPO / "out" / "attribution-cache.json",
                        help="finished pieces are kept here, so a stopped run resumes [out/attribution-cache.json]")
    parser.add_argument("--no-cache", action="store_true", help="compute everything afresh, keep nothing")
    parser.add_argument("--report-from", type=Path, metavar="JSON",
                        help="only write OUT's tables again from a finished run's attribution.json")
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.ks = [int(k) for k in str(args.ks).split(",")]
    args.exponents = [float(a) for a in str(args.exponents).split(",")]
    args.lds_times = [float(t) for t in str(args.lds_times).split(",")]
    if args.queries < 4 or args.subsets < 2:
        parser.error("need at least 4 queries (2 tuning, 2 test) and 2 subsets")
    return args


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def base_set(full, per_class: int):
    """The first `per_class` training images of each class, in index order, with x-flips."""
    labels = np.array([row["label"] for row in full.metadata])
    chosen = np.sort(np.concatenate([np.nonzero(labels == c)[0][:per_class] for c in np.unique(labels)]))
    return full.subset(chosen.tolist()).with_xflip(), chosen


def informative_family(exponents) -> dict[str, tuple[str, float]]:
    """{row name: (discount, exponent)} of the informative-share candidates."""
    return {f"informative[{kind}^{a:g}]": (kind, a) for kind in DISCOUNTS for a in exponents}


TUNED = ("informative-share", "step-weighted-share")  # chosen on the tuning queries, computed after the LDS


def query_scores(recorder, samples, base, family) -> list[dict[str, np.ndarray]]:
    """Per query: the registered scores but the tuned ones, the informative family, each step's
    share alone ("step[i]", to measure the step weights), the change-weighted variant and the baselines."""
    descriptor = PixelCorrelationDescriptor()
    train = base.as_float()
    described = descriptor(train)
    described_flipped = descriptor(train.flip(-1))
    rng = np.random.default_rng(12345)
    out = []
    for q in range(len(samples)):
        steps = recorder.evidence(q)
        scores = compute_scores(steps, [name for name in SCORES if name not in TUNED])
        for name, (kind, exponent) in family.items():
            scores[name] = informative_share(steps, kind, exponent)
        scores.update({f"step[{step.step}]": step_shares(step) for step in steps})
        scores[CHANGE_WEIGHTED] = change_weighted_share(steps)
        scores["pixel-similarity"] = pixel_similarity(samples[q], train, xflip=True)
        query = descriptor(samples[q : q + 1])
        scores["descriptor"] = torch.maximum(described @ query[0], described_flipped @ query[0]).double().numpy()
        scores["random"] = rng.random(len(base))
        out.append(scores)
    return out


def measure_step_weights(values, tuning, times) -> list[tuple[float, float]]:
    """(t, weight) per step: the mean LDS (b) on the tuning queries of that step's share alone, negatives 0."""
    return [(float(times[i]), max(0.0, float(np.mean([values[f"step[{i}]"]["b"][q] for q in tuning]))))
            for i in range(len(times) - 1)]


def add_tuned(recorder, scores, values, subsets, outputs, family, tuning) -> dict:
    """The two tuned scores, from the tuning queries: informative-share (the family member with
    the best LDS (b)) and step-weighted-share (the measured step weights); their LDS added to values."""
    chosen, tuning_means = choose_informative(values, family, tuning)
    table = measure_step_weights(values, tuning, CONFIG.time_steps().tolist())
    for q, query in enumerate(scores):
        query["informative-share"] = query[chosen]
        query["step-weighted-share"] = step_weighted_share(recorder.evidence(q), table)
    values["informative-share"] = values[chosen]
    values.update(lds_values([{"step-weighted-share": q["step-weighted-share"]} for q in scores], subsets, outputs))
    return {"family": {name: list(v) for name, v in family.items()}, "chosen": chosen,
            "chosen_parameter": list(family[chosen]), "tuning_mean_lds_b": tuning_means, "step_weights": table}


class Cache:
    """The finished pieces of a run (JSON at `path`, for one configuration), so that a stopped
    run resumes where it stopped with identical numbers (only its timings then cover less)."""

    def __init__(self, path: Path | None, config: dict):
        self.path, self.config, self.entries, self.hits = path, json.loads(json.dumps(config)), {}, 0
        if path is not None and path.is_file():
            stored = json.loads(path.read_text())
            if stored.get("config") == self.config:
                self.entries = stored["entries"]
        self.earlier = set(self.entries)  # pieces of an earlier run (hits on them are counted as resumed)

    def get(self, key: str, compute):
        """The stored value of `key`, else compute() (JSON-able), stored at once."""
        if key in self.entries:
            if key in self.earlier:
                self.hits += 1
                self.earlier.discard(key)
            return self.entries[key]
        self.entries[key] = value = compute()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_suffix(".partial")
            partial.write_text(json.dumps({"config": self.config, "entries": self.entries}))
            partial.replace(self.path)
        return value


def lds_outputs(denoiser, subsets, samples, z0, times, seed, cache) -> tuple[np.ndarray, np.ndarray]:
    """Outputs [M, Q] under each subset: (a) -sum_t MSE(D(x + t eps, t), x), (b) -MSE(re-run, sample)."""
    num_queries = len(samples)
    eps = torch.stack([torch.randn((len(times), *samples.shape[1:]), generator=torch.Generator().manual_seed(
        seed + 10_000 + q)) for q in range(num_queries)])  # [Q, T, C, H, W]: fixed per query and t
    t = torch.tensor(times, dtype=torch.float64)
    clean = samples[:, None].expand_as(eps)
    noisy = (clean + t.to(eps.dtype)[None, :, None, None, None] * eps).flatten(0, 1)
    t_batch = t.repeat(num_queries)
    denoising, rerun = np.zeros((len(subsets), num_queries)), np.zeros((len(subsets), num_queries))

    @torch.no_grad()
    def outputs(subset):
        counterfactual = denoiser.without(np.nonzero(~subset)[0].tolist())
        error = (counterfactual(noisy, t_batch).view_as(eps) - clean).square().mean((2, 3, 4)).sum(1)
        moved = (sample(counterfactual, z0, CONFIG) - samples).square().mean((1, 2, 3))
        return [(-error.double()).tolist(), (-moved.double()).tolist()]

    for m, subset in enumerate(subsets):
        started = time.perf_counter()
        denoising[m], rerun[m] = cache.get(f"lds:{m}", lambda: outputs(subset))
        _log(f"LDS subset {m + 1}/{len(subsets)}: {time.perf_counter() - started:.1f} s")
    return denoising, rerun


def lds_values(scores, subsets, outputs) -> dict[str, dict[str, list[float]]]:
    """{score: {output: [LDS per query]}}."""
    names = scores[0].keys()
    return {name: {key: [lds(scores[q][name], subsets, value[:, q]) for q in range(len(scores))]
                   for key, value in outputs.items()} for name in names}


def choose_informative(values, family, tuning) -> tuple[str, dict]:
    """The family member with the highest mean LDS (b) on the tuning queries (ties: listed first)."""
    means = {name: float(np.mean([values[name]["b"][q] for q in tuning])) for name in family}
    means["trajectory-share (exponent 0)"] = float(np.mean([values["trajectory-share"]["b"][q] for q in tuning]))
    best = max(family, key=lambda name: means[name])
    return best, means


def _change(rerun: torch.Tensor, original: torch.Tensor, descriptor) -> tuple[np.ndarray, np.ndarray]:
    """(pixel MSE [B], descriptor similarity [B]) between re-runs and the original samples."""
    mse = (rerun - original).square().mean((1, 2, 3)).double().numpy()
    similarity = (descriptor(rerun) * descriptor(original)).sum(1).double().numpy()
    return mse, similarity


def removal_curves(denoiser, scores, samples, z0, queries, names, ks, random_seeds, cache) -> dict:
    """{row: {k: {"mse": [per query], "similarity": [...]}}}: remove the top k by each score (per
    query) or k random images (one draw per seed, shared by the queries) and re-run."""
    descriptor = PixelCorrelationDescriptor()
    curves = {name: {k: {"mse": [], "similarity": []} for k in ks} for name in (*names, "random")}
    @torch.no_grad()
    def change(index, removed):
        return [v.tolist() for v in _change(sample(denoiser.without(list(removed)), z0[index], CONFIG), samples[index],
                                             descriptor)]

    for done, q in enumerate(queries):
        started, removals = time.perf_counter(), set()  # scores that agree on the top k share one re-run
        for name in names:
            for k in ks:
                removed = sorted(top_k(scores[q][name], k).tolist())
                removals.add(tuple(removed))
                mse, similarity = cache.get(f"removal:{q}:{removed}", lambda: change([q], removed))
                curves[name][k]["mse"] += mse
                curves[name][k]["similarity"] += similarity
        _log(f"removal query {done + 1}/{len(queries)}: {len(removals)} re-runs, {time.perf_counter() - started:.1f} s")
    num_images = len(denoiser.training_set)
    for seed in range(random_seeds):
        rng = np.random.default_rng(seed)
        for k in ks:
            removed = rng.choice(num_images, k, replace=False).tolist()
            mse, similarity = cache.get(f"random:{list(queries)}:{removed}", lambda: change(list(queries), removed))
            curves["random"][k]["mse"] += mse
            curves["random"][k]["similarity"] += similarity
    return curves


def counterfactual_cost(denoiser, scores, z0, name: str, k: int = 10, repeats: int = 3) -> dict:
    """Time of the masked re-run over its parent run (one sample, weights kept as the product
    keeps them), alternated in the same process; the median ratio of `repeats` pairs."""
    ratios, parents, reruns = [], [], []
    for repeat in range(repeats):
        started = time.perf_counter()
        sample(denoiser, z0[repeat : repeat + 1], CONFIG, callback=lambda *a: None, request=REQUEST)
        parents.append(time.perf_counter() - started)
        counterfactual = denoiser.without(top_k(scores[repeat][name], k).tolist())
        started = time.perf_counter()
        sample(counterfactual, z0[repeat : repeat + 1], CONFIG, callback=lambda *a: None, request=REQUEST)
        reruns.append(time.perf_counter() - started)
        ratios.append(reruns[-1] / parents[-1])
    return {"removed": k, "by": name, "parent_s": parents, "counterfactual_s": reruns,
            "ratio_median": float(np.median(ratios)), "ratios": ratios}


def _r2(reference: torch.Tensor, estimate: torch.Tensor) -> np.ndarray:
    """Per image 1 - SS_res / SS_tot of estimate against reference [B, C, H, W]."""
    residual = (reference - estimate).double().square().flatten(1).sum(1)
    total = (reference - reference.mean((1, 2, 3), keepdim=True)).double().square().flatten(1).sum(1)
    return (1 - residual / total).numpy()


def _quartiles(values) -> dict:
    q1, median, q3 = np.quantile(np.asarray(values, dtype=np.float64), [0.25, 0.5, 0.75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3)}


def network_r2(full, path: Path, num_samples: int, seed: int) -> dict:
    """PSPC-Square over the full training set (flips) against the network: per step on the
    network's own Euler trajectory (PSPC's D of the network's z_t; the last step's D is the
    network's sample), and PSPC's own sample from the same initial noise (the ELS paper's
    comparison); per image r^2 and MSE against the network."""
    from pspc.networks import load_network

    network = load_network(path, full)
    explainer = pspc_square(full.with_xflip())
    noise, states = initial_noise(num_samples, full.image_shape, seed), []
    with torch.no_grad():
        network_samples = sample(network, noise, CONFIG, callback=lambda step, t, z, denoised, weights: states.append(
            (step, t, z.clone(), denoised.clone())))
    per_step, started = [], time.perf_counter()
    for step, t, z, reference in states:
        with torch.no_grad():
            per_step.append({"step": step, "t": t, **_agreement(reference, explainer(z, t))})
        _log(f"network step {step}: t={t:.3g}, median r^2 {per_step[-1]['r2_quartiles']['median']:.3f} "
             f"({time.perf_counter() - started:.0f} s)")
    seconds = (time.perf_counter() - started) / (len(states) * num_samples)
    with torch.no_grad():
        own = _agreement(network_samples, sample(explainer, noise, CONFIG))
    _log(f"PSPC's own samples: median r^2 {own['r2_quartiles']['median']:.3f}")
    return {"network": str(path.relative_to(REPO) if path.is_relative_to(REPO) else path),
            "network_sha256": file_sha256(path), "samples": num_samples, "seed": seed,
            "training_images": len(full), "entries": full.with_xflip().num_entries, "final_step": per_step[-1],
            "steps": per_step, "own_samples": own, "seconds_per_image_call": seconds}


def _agreement(reference: torch.Tensor, estimate: torch.Tensor) -> dict:
    r2, mse = _r2(reference, estimate), (reference - estimate).double().square().mean((1, 2, 3)).numpy()
    return {"r2": r2.tolist(), "mse": mse.tolist(), "r2_quartiles": _quartiles(r2), "mse_quartiles": _quartiles(mse)}


def _timed(timings: dict, name: str, function, *args):
    started = time.perf_counter()
    value = function(*args)
    timings[name] = time.perf_counter() - started
    _log(f"{name}: {timings[name]:.1f} s")
    return value


def _lds_tables(values, rows, tuning, test) -> dict:
    """Per row: LDS (a) and (b) summaries on the test queries; and the best row's paired
    differences (test queries) against every other row, by LDS (b)."""
    table = {name: {key: summarise([values[name][key][q] for q in test]).to_dict() for key in ("a", "b")}
             for name in rows}
    best = max(rows, key=lambda name: table[name]["b"]["mean"])
    paired = {name: {key: summarise([values[best][key][q] - values[name][key][q] for q in test]).to_dict()
                     for key in ("a", "b")} for name in rows if name != best}
    return {"test": table, "best_by_b": best, "best_minus_other": paired,
            "tuning": {name: {key: float(np.mean([values[name][key][q] for q in tuning])) for key in ("a", "b")}
                       for name in values}}


HEADLINE_RULE = ("the headline is the score with the best LDS (b) on the test queries, unless a score without "
                 "fitted parameters is not significantly worse (its paired difference with the best has a 95% "
                 "bootstrap CI that contains 0): then the best of those, since tuned parameters (step weights, a "
                 "discount) were fitted on this data set and schedule and would be borrowed by every other")


def choose_headline(lds: dict) -> str:
    """The headline score by HEADLINE_RULE, from _lds_tables' output (registered scores only)."""
    best = lds["best_by_b"]
    untuned = [name for name in SCORES if name not in TUNED and (
        name == best or lds["best_minus_other"][name]["b"]["ci95"][0] <= 0)]
    return max(untuned, key=lambda name: lds["test"][name]["b"]["mean"]) if untuned else best


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    started, load_start, timings = time.perf_counter(), os.getloadavg(), {}
    full = load_fashion_mnist("train")
    base, chosen = base_set(full, args.per_class)
    denoiser = pspc_square(base)
    z0 = initial_noise(args.queries, base.image_shape, args.seed)
    recorder = EvidenceRecorder(CONFIG.time_steps(), base.num_entries)
    with torch.no_grad():
        samples = _timed(timings, "queries (one batch, weights kept)", sample, denoiser, z0, CONFIG, recorder, REQUEST)
    family = informative_family(args.exponents)
    cache = Cache(None if args.no_cache else args.cache, {
        "base": base.fingerprint, "denoiser": denoiser.describe(), "queries": args.queries, "seed": args.seed,
        "subsets": args.subsets, "subset_seed": args.subset_seed, "lds_times": args.lds_times})
    scores = _timed(timings, "scores (all queries)", query_scores, recorder, samples, base, family)
    subsets = random_subsets(len(base), args.subsets, 0.5, args.subset_seed)
    outputs = dict(zip("ab", _timed(timings, "LDS outputs (all subsets)", lds_outputs, denoiser, subsets, samples, z0,
                                    args.lds_times, args.seed, cache)))
    values = lds_values(scores, subsets, outputs)
    tuning, test = list(range(0, args.queries, 2)), list(range(1, args.queries, 2))
    tuned = add_tuned(recorder, scores, values, subsets, outputs, family, tuning)
    rows = [*SCORES, CHANGE_WEIGHTED, "pixel-similarity", "descriptor", "random"]
    tables = _lds_tables(values, rows, tuning, test)
    tables["headline"] = choose_headline(tables)
    removal_names = [*SCORES, CHANGE_WEIGHTED, "pixel-similarity", "descriptor"]
    curves = _timed(timings, "removal curves", removal_curves, denoiser, scores, samples, z0, test, removal_names,
                    args.ks, args.random_seeds, cache)
    cost = _timed(timings, "counterfactual cost", counterfactual_cost, denoiser, scores, z0, tables["best_by_b"])
    result = {
        "command": " ".join(["PYTHONPATH=. .venv/bin/python", "bench/attribution.py", *sys.argv[1:]]),
        "note": "LDS here is a self-consistency measure against PSPC itself (exact counterfactuals), not against "
                "retrained networks: expect it far above the literature's CIFAR-2 figures (about 5% raw pixels, "
                "16% NDA, 26% D-TRAK).",
        "sizes": {"base_images": len(base), "per_class": args.per_class, "entries": base.num_entries,
                  "queries": args.queries, "tuning_queries": tuning, "test_queries": test, "subsets": args.subsets,
                  "subset_fraction": 0.5, "ks": args.ks, "random_seeds": args.random_seeds,
                  "lds_times": args.lds_times, "exponents": args.exponents, "removal_queries": test},
        "seeds": {"queries": f"initial noise seed {args.seed} + i", "subsets": args.subset_seed,
                  "lds_eps": f"{args.seed} + 10000 + query", "random_removal": list(range(args.random_seeds)),
                  "random_score": 12345, "network": f"{args.network_seed} + i"},
        "data": {"base": base.describe(), "base_indices_sha256": _sha256(chosen), "full": full.describe()},
        "denoiser": denoiser.describe(), "sampler": {"method": CONFIG.method, "steps": CONFIG.num_steps},
        "weights": {"top_k": REQUEST.top_k, "mass": REQUEST.mass},
        "meanings": {**{name: s.meaning for name, s in SCORES.items()}, **VARIANTS, **BASELINES},
        "tuned": tuned,
        "lds": tables, "lds_per_query": values, "removal": curves, "counterfactual_cost": cost,
    }
    if not args.skip_network:
        result["network_r2"] = _timed(timings, "network r^2", network_r2, full, args.network, args.network_samples,
                                      args.network_seed)
    result["timings_s"] = {**timings, "total": time.perf_counter() - started}
    result["resumed"] = {"cache": None if args.no_cache else str(args.cache), "pieces_from_cache": cache.hits,
                         "note": "pieces computed by an earlier, stopped run of the same configuration (their time "
                                 "is not in the timings)"}
    result["machine"] = {"cpus": os.cpu_count(), "load_average_at_start": load_start,
                         "load_average_at_end": os.getloadavg(), "shared": True,
                         "environment": environment(torch.device("cpu"), with_commit=True)}
    return result


def _sha256(indices: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.asarray(indices, dtype="<i8").tobytes()).hexdigest()


def _summary_text(summary: dict) -> str:
    low, high = summary["ci95"]
    return f"{summary['mean']:.3f} ± {summary['se']:.3f} [{low:.3f}, {high:.3f}]"


def _curve_cell(curves, name, k, key, scale=1.0) -> str:
    values = curves.get(name, {}).get(k, {}).get(key)
    return f"{np.mean(values) * scale:.3g}" if values else "-"


def main_table(result) -> list[str]:
    """One row per score: LDS (a) and (b) on the test queries, removal MSE and descriptor similarity per k."""
    ks, curves, table = result["sizes"]["ks"], result["removal"], result["lds"]["test"]
    head = ["score", "LDS (a) denoising", "LDS (b) re-run", *[f"MSE k={k}" for k in ks],
            *[f"sim k={k}" for k in ks]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in table:
        cells = [name, _summary_text(table[name]["a"]), _summary_text(table[name]["b"]),
                 *[_curve_cell(curves, name, k, "mse") for k in ks],
                 *[_curve_cell(curves, name, k, "similarity") for k in ks]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def network_lines(network) -> list[str]:
    lines = [f"## PSPC vs the network ({network['network']}, sha256 {network['network_sha256'][:12]}...)", "",
             f"{network['samples']} network samples (Euler, 18 steps, seeds {network['seed']} + i); PSPC-Square over "
             f"all {network['training_images']} training images ({network['entries']} entries with flips) denoises "
             f"the network's own z_t. r^2 = 1 - SS_res / SS_tot per image (the ELS paper reports a median 0.94 "
             f"between its patch model and networks on Fashion-MNIST).", "",
             "| step | t | r^2 median [q1, q3] | MSE median [q1, q3] |", "|---:|---:|---|---|"]
    for row in network["steps"]:
        r2, mse = row["r2_quartiles"], row["mse_quartiles"]
        lines.append(f"| {row['step']} | {row['t']:.3g} | {r2['median']:.3f} [{r2['q1']:.3f}, {r2['q3']:.3f}] | "
                     f"{mse['median']:.4f} [{mse['q1']:.4f}, {mse['q3']:.4f}] |")
    final, own = network["final_step"]["r2_quartiles"], network["own_samples"]
    lines += ["", f"Last step (the network's sample against PSPC's D of the network's last state): median r^2 "
              f"{final['median']:.3f} [{final['q1']:.3f}, {final['q3']:.3f}] (at t = 0.002 both return nearly "
              f"z itself, so this is close to 1 by construction).", "",
              f"**PSPC's own samples from the same initial noise against the network's samples** (the ELS "
              f"comparison): median r^2 {own['r2_quartiles']['median']:.3f} [{own['r2_quartiles']['q1']:.3f}, "
              f"{own['r2_quartiles']['q3']:.3f}], median MSE {own['mse_quartiles']['median']:.4f} "
              f"[{own['mse_quartiles']['q1']:.4f}, {own['mse_quartiles']['q3']:.4f}].", "",
              f"{network['seconds_per_image_call']:.2f} s per image per PSPC call over "
              f"{network['entries']} entries.", ""]
    return lines


def resumed_text(resumed) -> str:
    hits = resumed["pieces_from_cache"]
    return f" ({hits} pieces resumed from {resumed['cache']}, their time not counted)" if hits else ""


def tuned_lines(result) -> list[str]:
    """The two scores tuned on the tuning queries: the informative discount and the step weights."""
    tuned, values, test = result["tuned"], result["lds_per_query"], result["sizes"]["test_queries"]
    means = tuned["tuning_mean_lds_b"]
    lines = ["## Tuned on the tuning queries (LDS (b)), reported on the test queries above", "",
             f"informative-share: patch weight g_k from {len(tuned['family'])} candidates (discount^exponent, "
             f"pspc.posterior.scores.patch_discount); chosen **{tuned['chosen']}** (mean tuning LDS (b) "
             f"{means[tuned['chosen']]:.3f}).", "", "| candidate | mean tuning LDS (b) |", "|---|---:|",
             *[f"| {name} | {value:.3f} |" for name, value in means.items()], "",
             "step-weighted-share: each step's weight is the mean tuning LDS (b) of that step's share alone "
             "(negatives 0); the test column is the same on the test queries.", "",
             "| step | t | weight (tuning) | test LDS (b) |", "|---:|---:|---:|---:|"]
    for step, (t, weight) in enumerate(tuned["step_weights"]):
        lines.append(f"| {step} | {t:.3g} | {weight:.3f} | {np.mean([values[f'step[{step}]']['b'][q] for q in test]):.3f} |")
    return [*lines, ""]


def report(result) -> str:
    sizes, machine, cost = result["sizes"], result["machine"], result["counterfactual_cost"]
    best = result["lds"]["best_by_b"]
    lines = ["# Attribution benchmark: scores against exact PSPC counterfactuals", "",
             f"Command: `{result['command']}`", "", f"**{result['note']}**", "",
             f"Sizes: {sizes['base_images']} base images ({sizes['per_class']} per class, {sizes['entries']} entries "
             f"with x-flips), {sizes['queries']} queries ({len(sizes['test_queries'])} test), {sizes['subsets']} "
             f"subsets of 50%, LDS (a) at t = {sizes['lds_times']}, removal k = {sizes['ks']} on the test queries, "
             f"{sizes['random_seeds']} random draws per k.", "",
             f"Seeds: {result['seeds']}", "",
             f"Data: base fingerprint {result['data']['base']['fingerprint']}, full set fingerprint "
             f"{result['data']['full']['fingerprint']}; denoiser {json.dumps(result['denoiser']['schedule'])}, "
             f"{result['sampler']}, weights kept {result['weights']}.", "",
             f"Machine (shared with other work): {machine['cpus']} CPUs, load average {machine['load_average_at_start']} "
             f"at start, {machine['load_average_at_end']} at end; versions {machine['environment']['versions']}; "
             f"total {result['timings_s']['total']:.0f} s"
             f"{resumed_text(result['resumed'])}.", "",
             "## Scores (LDS on the test queries: mean ± s.e. [bootstrap 95% CI]; removal: mean over test queries)", "",
             "(a): minus the denoising error at fixed noise; (b): minus the MSE of the re-run sample. MSE k: pixel "
             "MSE of the re-run without the top k to the original; sim k: its pixel-correlation descriptor "
             "similarity to the original (1 = unchanged). random: k random images.", "",
             *main_table(result), "",
             f"Best by LDS (b): **{best}**; paired difference best - other on the test queries (LDS (b)):", "",
             *[f"- {best} - {name}: {_summary_text(d['b'])}" for name, d in result["lds"]["best_minus_other"].items()],
             "", f"Headline: **{result['lds']['headline']}** ({HEADLINE_RULE}).", "", *tuned_lines(result),
             "## Meanings", "", *[f"- **{name}**: {text}" for name, text in result["meanings"].items()], "",
             "## Cost of one counterfactual", "",
             f"Masked re-run / parent run (one sample, 18 steps, weights kept, top {cost['removed']} by {cost['by']} "
             f"removed): median ratio {cost['ratio_median']:.2f} (pairs: {[round(r, 2) for r in cost['ratios']]}; "
             f"parent {[round(s, 2) for s in cost['parent_s']]} s).", ""]
    if "network_r2" in result:
        lines += network_lines(result["network_r2"])
    lines += ["## Timings (s)", "", *[f"- {k}: {v:.1f}" for k, v in result["timings_s"].items()], ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.report_from is not None:  # the tables again from a finished run's JSON (no computation)
        result = json.loads(args.report_from.read_text())
        result["lds"]["headline"] = choose_headline(result["lds"])
        (args.out / "attribution.md").write_text(report(result))
        (args.out / "attribution.json").write_text(json.dumps(result, indent=1, default=float))
        return 0
    _log(f"start; load average {os.getloadavg()} (shared machine); sizes: {args.per_class} images per class, "
         f"{args.queries} queries, {args.subsets} subsets, k = {args.ks}, {args.random_seeds} random draws, "
         f"network: {'skipped' if args.skip_network else f'{args.network_samples} samples'}")
    result = run(args)
    text = report(result)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "attribution.md").write_text(text)
    (args.out / "attribution.json").write_text(json.dumps(result, indent=1, default=float))
    _log(f"end; load average {os.getloadavg()}; wrote {args.out / 'attribution.md'} and attribution.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
