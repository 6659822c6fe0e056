"""Benchmark: which attribution score predicts what a training image actually does to a PSPC sample.

    PYTHONPATH=. .venv/bin/python bench/attribution.py                   # full: ~15 min on 2 CPU cores
    PYTHONPATH=. .venv/bin/python bench/attribution.py --quick --out out/attribution-quick   # CI-sized, ~2 min

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
   mean, s.e. and a bootstrap 95% CI over the test queries. The informative-share discount
   (family: pspc.posterior.scores.DISCOUNTS x --exponents) is chosen by LDS (b) on the tuning
   queries. This LDS is a self-consistency measure against PSPC itself (exact
   counterfactuals), not against retrained networks.
3. Removal curves: per test query, remove the top-k images by each score and re-run from the
   same initial noise; against k random images (--random-seeds draws, one set per draw shared
   by the queries). The pixel-similarity row is the k pixel-nearest neighbours. The change is
   the pixel MSE to the original sample and the pixel-correlation descriptor similarity.
4. Cost of one counterfactual: the masked re-run's time over its parent run's (same process,
   one sample, weights kept).
5. PSPC vs the network (--network, unless --skip-network): the network samples
   --network-samples images (Euler, 18 steps); at every step PSPC-Square over the FULL 60k
   training set with flips denoises the network's own z_t; per image r^2 = 1 - SS_res / SS_tot
   of PSPC's D against the network's D (the last step is the final sample), median and quartiles,
   beside the MSE.

Writes OUT/attribution.md (the exact command, versions, dataset fingerprints, seeds, sizes,
load average, timings, the tables) and OUT/attribution.json (every number); prints the tables.
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
    DISCOUNTS, INFORMATIVE_DEFAULT, SCORES, EvidenceRecorder, compute_scores, informative_share, pixel_similarity,
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


def query_scores(recorder, samples, base, family) -> list[dict[str, np.ndarray]]:
    """Per query: every registered score, the informative family, and the baselines."""
    descriptor = PixelCorrelationDescriptor()
    train = base.as_float()
    described = descriptor(train)
    described_flipped = descriptor(train.flip(-1))
    rng = np.random.default_rng(12345)
    out = []
    for q in range(len(samples)):
        steps = recorder.evidence(q)
        scores = compute_scores(steps)
        for name, (kind, exponent) in family.items():
            scores[name] = informative_share(steps, kind, exponent)
        scores["pixel-similarity"] = pixel_similarity(samples[q], train, xflip=True)
        query = descriptor(samples[q : q + 1])
        scores["descriptor"] = torch.maximum(described @ query[0], described_flipped @ query[0]).double().numpy()
        scores["random"] = rng.random(len(base))
        out.append(scores)
    return out


def lds_outputs(denoiser, subsets, samples, z0, times, seed) -> tuple[np.ndarray, np.ndarray]:
    """Outputs [M, Q] under each subset: (a) -sum_t MSE(D(x + t eps, t), x), (b) -MSE(re-run, sample)."""
    num_queries = len(samples)
    eps = torch.stack([torch.randn((len(times), *samples.shape[1:]), generator=torch.Generator().manual_seed(
        seed + 10_000 + q)) for q in range(num_queries)])  # [Q, T, C, H, W]: fixed per query and t
    t = torch.tensor(times, dtype=torch.float64)
    clean = samples[:, None].expand_as(eps)
    noisy = (clean + t.to(eps.dtype)[None, :, None, None, None] * eps).flatten(0, 1)
    t_batch = t.repeat(num_queries)
    denoising, rerun = np.zeros((len(subsets), num_queries)), np.zeros((len(subsets), num_queries))
    for m, subset in enumerate(subsets):
        started = time.perf_counter()
        counterfactual = denoiser.without(np.nonzero(~subset)[0].tolist())
        with torch.no_grad():
            error = (counterfactual(noisy, t_batch).view_as(eps) - clean).square().mean((2, 3, 4)).sum(1)
            denoising[m] = -error.double().numpy()
            rerun[m] = -(sample(counterfactual, z0, CONFIG) - samples).square().mean((1, 2, 3)).double().numpy()
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


def removal_curves(denoiser, scores, samples, z0, queries, names, ks, random_seeds) -> dict:
    """{row: {k: {"mse": [per query], "similarity": [...]}}}: remove the top k by each score (per
    query) or k random images (one draw per seed, shared by the queries) and re-run."""
    descriptor = PixelCorrelationDescriptor()
    curves = {name: {k: {"mse": [], "similarity": []} for k in ks} for name in (*names, "random")}
    for done, q in enumerate(queries):
        started, changes = time.perf_counter(), {}  # scores that agree on the top k share one re-run
        for name in names:
            for k in ks:
                removed = tuple(sorted(top_k(scores[q][name], k).tolist()))
                if removed not in changes:
                    with torch.no_grad():
                        rerun = sample(denoiser.without(list(removed)), z0[q : q + 1], CONFIG)
                    changes[removed] = [float(v[0]) for v in _change(rerun, samples[q : q + 1], descriptor)]
                curves[name][k]["mse"].append(changes[removed][0])
                curves[name][k]["similarity"].append(changes[removed][1])
        _log(f"removal query {done + 1}/{len(queries)}: {len(changes)} re-runs, {time.perf_counter() - started:.1f} s")
    index = torch.tensor(list(queries))
    num_images = len(denoiser.training_set)
    for seed in range(random_seeds):
        rng = np.random.default_rng(seed)
        for k in ks:
            counterfactual = denoiser.without(rng.choice(num_images, k, replace=False).tolist())
            with torch.no_grad():
                rerun = sample(counterfactual, z0[index], CONFIG)
            mse, similarity = _change(rerun, samples[index], descriptor)
            curves["random"][k]["mse"] += mse.tolist()
            curves["random"][k]["similarity"] += similarity.tolist()
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
    """PSPC-Square over the full training set (flips) on the network's own Euler trajectory:
    per step and for the final sample (the last step's D), r^2 and MSE against the network."""
    from pspc.networks import load_network

    network = load_network(path, full)
    explainer = pspc_square(full.with_xflip())
    states = []
    with torch.no_grad():
        sample(network, initial_noise(num_samples, full.image_shape, seed), CONFIG,
               callback=lambda step, t, z, denoised, weights: states.append((step, t, z.clone(), denoised.clone())))
    per_step, started = [], time.perf_counter()
    for step, t, z, reference in states:
        with torch.no_grad():
            estimate = explainer(z, t)
        r2, mse = _r2(reference, estimate), (reference - estimate).double().square().mean((1, 2, 3)).numpy()
        per_step.append({"step": step, "t": t, "r2": r2.tolist(), "mse": mse.tolist(), "r2_quartiles": _quartiles(r2),
                         "mse_quartiles": _quartiles(mse)})
        _log(f"network step {step}: t={t:.3g}, median r^2 {np.median(r2):.3f} ({time.perf_counter() - started:.0f} s)")
    return {"network": str(path.relative_to(REPO) if path.is_relative_to(REPO) else path),
            "network_sha256": file_sha256(path), "samples": num_samples, "seed": seed,
            "training_images": len(full), "entries": full.with_xflip().num_entries,
            "final": per_step[-1], "steps": per_step, "seconds_per_image_call": (time.perf_counter() - started) / (
                len(states) * num_samples)}


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
    scores = _timed(timings, "scores (all queries)", query_scores, recorder, samples, base, family)
    subsets = random_subsets(len(base), args.subsets, 0.5, args.subset_seed)
    a, b = _timed(timings, "LDS outputs (all subsets)", lds_outputs, denoiser, subsets, samples, z0, args.lds_times,
                  args.seed)
    values = lds_values(scores, subsets, {"a": a, "b": b})
    tuning, test = list(range(0, args.queries, 2)), list(range(1, args.queries, 2))
    chosen_member, tuning_means = choose_informative(values, family, tuning)
    for q in range(args.queries):
        scores[q]["informative-share"] = scores[q][chosen_member]
    values["informative-share"] = values[chosen_member]
    rows = [*SCORES, "pixel-similarity", "descriptor", "random"]
    tables = _lds_tables(values, rows, tuning, test)
    removal_names = [*SCORES, "pixel-similarity", "descriptor"]
    curves = _timed(timings, "removal curves", removal_curves, denoiser, scores, samples, z0, test, removal_names,
                    args.ks, args.random_seeds)
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
        "meanings": {**{name: s.meaning for name, s in SCORES.items()}, **BASELINES},
        "informative": {"family": {name: list(v) for name, v in family.items()}, "chosen": chosen_member,
                        "chosen_parameter": list(family[chosen_member]), "code_default": list(INFORMATIVE_DEFAULT),
                        "tuning_mean_lds_b": tuning_means},
        "lds": tables, "lds_per_query": values, "removal": curves, "counterfactual_cost": cost,
    }
    if not args.skip_network:
        result["network_r2"] = _timed(timings, "network r^2", network_r2, full, args.network, args.network_samples,
                                      args.network_seed)
    result["timings_s"] = {**timings, "total": time.perf_counter() - started}
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
    final = network["final"]
    lines += ["", f"Final sample (last step): median r^2 {final['r2_quartiles']['median']:.3f} "
              f"[{final['r2_quartiles']['q1']:.3f}, {final['r2_quartiles']['q3']:.3f}], median MSE "
              f"{final['mse_quartiles']['median']:.4f}; {network['seconds_per_image_call']:.2f} s per image per "
              f"PSPC call.", ""]
    return lines


def report(result) -> str:
    sizes, machine, info, cost = result["sizes"], result["machine"], result["informative"], result["counterfactual_cost"]
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
             f"total {result['timings_s']['total']:.0f} s.", "",
             "## Scores (LDS on the test queries: mean ± s.e. [bootstrap 95% CI]; removal: mean over test queries)", "",
             "(a): minus the denoising error at fixed noise; (b): minus the MSE of the re-run sample. MSE k: pixel "
             "MSE of the re-run without the top k to the original; sim k: its pixel-correlation descriptor "
             "similarity to the original (1 = unchanged). random: k random images.", "",
             *main_table(result), "",
             f"Best by LDS (b): **{best}**; paired difference best - other on the test queries (LDS (b)):", "",
             *[f"- {best} - {name}: {_summary_text(d['b'])}" for name, d in result["lds"]["best_minus_other"].items()],
             "", "## informative-share: the discount chosen on the tuning queries", "",
             f"Family: patch weight g_k in {list(info['family'])}; chosen **{info['chosen']}** (mean tuning LDS (b) "
             f"{info['tuning_mean_lds_b'][info['chosen']]:.3f}); the code default is {info['code_default']}.", "",
             *[f"- {name}: {value:.3f}" for name, value in info["tuning_mean_lds_b"].items()], "",
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
    _log(f"start; load average {os.getloadavg()} (shared machine)")
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
