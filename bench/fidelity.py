"""Benchmark: how closely PSPC reproduces the project's network (paper Figs. 2, 3, 4, 7, 9).

    PYTHONPATH=. .venv/bin/python bench/fidelity.py --quick --out out/fidelity-quick   # ~15 min, 2 CPU cores
    PYTHONPATH=. .venv/bin/python bench/fidelity.py --out out/fidelity                 # full (hours on a CPU)
    PYTHONPATH=. .venv/bin/python bench/fidelity.py --quick --tune --out out/tuned      # + Appendix B tuning

On Fashion-MNIST with the network in --network (default checkpoints/fmnist-unet.pt):
1. Gradient sensitivity G(x, y, t) of the network (Eq. 8) on held-out images, and the
   gradient-concentration table (Fig. 3): the side of the centred square holding 50 / 75 /
   95 % of G per t. PSPC-Flex uses masks built from these maps (Eq. 12).
2. MSE against the network per t for empirical, Gaussian, CFDM, PSPC-Square and PSPC-Flex
   on the forward process (held-out test images, z = x + t eps at --ts) and on the reverse
   process (every step of the network's own Euler trajectories from seeded noise) (Figs. 4, 7).
3. Samples from shared initial noise with every denoiser (Euler, EDM schedule) and their
   mean descriptor similarity to the network's samples (Fig. 9). The descriptor is SSCD when
   $PSPC_SSCD_CHECKPOINT names a checkpoint, else the clearly named pixel-correlation fallback.
4. With --tune: per step, s(t) and lambda(t) chosen by the MSE against the network on
   separate states (other seeds), saved as schedule.json, and evaluated as two more rows.

Everything goes to --out: fidelity.json (every number and the record: command, dataset
fingerprints, network sha256, denoiser schedules, seeds, descriptor, versions, timings),
summary.md (the tables and the verdict on the paper's finding) and PNG plots.

A full Jacobian of the network costs H x W = 784 backward passes per draw (about 30-100 s
on 2 CPU cores), so G is computed on a grid of noise levels (--sensitivity-grid, also the
rows of the concentration table) and PSPC-Flex at any other t uses the grid level nearest
in log t. Where lambda(t) = 1 Flex is the whole image and needs no G.

The quick preset (--quick) uses 5,000 training images (10,000 with x-flips), 8 test images,
6 forward noise levels, 8 trajectories / samples of 18 steps, and G from 1 draw at
t = 0.3, 1, 3; explicit options override it. The full configuration uses all 60,000
training images, 64 test images, 8 noise levels (0.01 ... 30), 64 trajectories / samples
and G from 16 draws at each of the 8 levels.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import warnings
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

DEFAULT_NETWORK = "checkpoints/fmnist-unet.pt"
KINDS = ("empirical", "gaussian", "cfdm", "pspc-square", "pspc-flex")
FULL = {"limit": None, "test_images": 64, "samples": 64, "steps": 18, "ts": "0.01,0.03,0.1,0.3,1,3,10,30",
        "sensitivity_grid": "0.01,0.03,0.1,0.3,1,3,10,30", "sensitivity_samples": 16, "tune_states": 16}
QUICK = {"limit": 5000, "test_images": 8, "samples": 8, "steps": 18, "ts": "0.03,0.1,0.3,1,3,10",
         "sensitivity_grid": "0.3,1,3", "sensitivity_samples": 1, "tune_states": 4}
FINDING_RANGE = (0.3, 3.0)  # the paper's t range for "PSPC is closer to the network"


def _floats(text: str, option: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"fidelity: error: {option} takes comma-separated numbers, got {text!r}") from None
    if not values:
        raise SystemExit(f"fidelity: error: {option} is empty")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Defaults in brackets are the "
                                     "full configuration; --quick changes them to the quick one.")
    parser.add_argument("--network", default=DEFAULT_NETWORK, help="network file (pspc.networks.load_network) [%(default)s]")
    parser.add_argument("--data", default="fashion-mnist", help="training set spec [%(default)s]")
    parser.add_argument("--limit", type=int, help="first N training images [all]")
    parser.add_argument("--no-xflip", action="store_true", help="no mirrored training entries")
    parser.add_argument("--test-data", default="fashion-mnist:test", help="held-out images [%(default)s]")
    parser.add_argument("--test-images", type=int, help="forward-process images [64]")
    parser.add_argument("--samples", type=int, help="reverse-process trajectories and samples for similarity [64]")
    parser.add_argument("--steps", type=int, help="EDM sampling steps [18]")
    parser.add_argument("--ts", help="forward-process noise levels [0.01,...,30]")
    parser.add_argument("--sensitivity-samples", type=int, help="forward-process draws per G(t) [16]")
    parser.add_argument("--sensitivity-grid", help="levels where G is computed (and the concentration table); "
                        "other t use the nearest in log t [0.01,...,30]")
    parser.add_argument("--denoisers", default=",".join(KINDS), help="comma-separated subset of %(default)s")
    parser.add_argument("--schedule", type=Path, help="schedule file: s(t) for pspc-square, lambda(t) for pspc-flex")
    parser.add_argument("--tune", action="store_true", help="tune s(t) and lambda(t) on the network (Appendix B)")
    parser.add_argument("--tune-process", choices=("reverse", "forward", "both"), default="reverse")
    parser.add_argument("--tune-states", type=int, help="states per step for tuning (per process) [16]")
    parser.add_argument("--tune-sizes", help="candidate patch sizes [odd sizes from 3, and the whole side]")
    parser.add_argument("--tune-lambdas", help="candidate lambdas [0.1,...,1.0]")
    parser.add_argument("--descriptor", default="auto", help="auditor.descriptors.load_descriptor spec [%(default)s]")
    parser.add_argument("--no-sampling", action="store_true", help="skip the samples and their similarity")
    parser.add_argument("--seed", type=int, default=0, help="seed of every draw (tuning uses seed + 1000) [0]")
    parser.add_argument("--batch", type=int, default=64, help="denoiser batch size [64]")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="the quick preset (minutes on 2 CPU cores)")
    parser.add_argument("--out", type=Path, help="output folder [out/fidelity-<timestamp>]")
    return parser


def resolve(args) -> argparse.Namespace:
    """Fill unset options from the preset (--quick or full) and check them."""
    preset = QUICK if args.quick else FULL
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("test_images", "samples", "steps", "sensitivity_samples", "tune_states", "batch"):
        if getattr(args, key) < 1:
            raise SystemExit(f"fidelity: error: --{key.replace('_', '-')} must be >= 1")
    if args.limit is not None and args.limit < 1:
        raise SystemExit("fidelity: error: --limit must be >= 1")
    args.times = _floats(args.ts, "--ts")
    args.grid = _floats(args.sensitivity_grid, "--sensitivity-grid")
    args.kinds = [k.strip() for k in args.denoisers.split(",") if k.strip()]
    unknown = sorted(set(args.kinds) - set(KINDS))
    if unknown or not args.kinds:
        raise SystemExit(f"fidelity: error: unknown denoiser(s) {unknown}; choose from {', '.join(KINDS)}")
    if args.schedule is not None and not args.schedule.is_file():
        raise SystemExit(f"fidelity: error: no schedule file at {args.schedule}")
    args.out = args.out or REPO / "out" / f"fidelity-{datetime.now():%Y%m%d-%H%M%S}"
    return args


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# Plots (matplotlib, Agg)
# ---------------------------------------------------------------------------------------
def plot_curves(curves, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    t = np.array(curves.times)
    for d, name in enumerate(curves.names):
        mse, err = curves.mse[d], curves.stderr[d]
        ax.plot(t, mse, marker="o", ms=3, label=name)
        ax.fill_between(t, np.clip(mse - err, 1e-12, None), mse + err, alpha=0.15)
    ax.axvspan(*FINDING_RANGE, color="grey", alpha=0.1, lw=0)
    ax.set(xscale="log", yscale="log", xlabel="noise level t", ylabel="MSE against the network", title=title)
    ax.grid(True, which="both", alpha=0.2)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_concentration(table, sensitivity, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    times = table.times
    fig = plt.figure(figsize=(2.0 * len(times) + 1, 5.6))
    grid = fig.add_gridspec(2, len(times), height_ratios=(1.4, 1))
    ax = fig.add_subplot(grid[0, :])
    for j, f in enumerate(table.fractions):
        ax.plot(times, table.mean_side[:, j], marker="o", label=f"{round(100 * f)}% of G")
    ax.set(xscale="log", xlabel="noise level t", ylabel="side of the centred square (pixels)",
           title="Gradient concentration (mean over output pixels)")
    ax.set_xticks(times, [f"{t:g}" for t in times])
    ax.minorticks_off()
    ax.grid(True, which="both", alpha=0.2)
    ax.legend(fontsize=8)
    for k, t in enumerate(times):
        g = sensitivity(t)
        h, w = g.shape[:2]
        sub = fig.add_subplot(grid[1, k])
        centre = g[h // 2, w // 2].numpy()
        sub.imshow(centre, cmap="magma", norm=LogNorm(vmin=max(centre.max(), 1e-30) * 1e-4, vmax=max(centre.max(), 1e-30)))
        sub.set_title(f"G(centre, t={t:g}), log", fontsize=8)
        sub.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_samples(sets: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(sets)
    count = next(iter(sets.values())).shape[0]
    fig, axes = plt.subplots(len(names), count, figsize=(max(0.9 * count + 1.6, 5.0), 0.95 * len(names) + 0.4),
                             squeeze=False)
    for r, name in enumerate(names):
        for c in range(count):
            ax = axes[r, c]
            ax.imshow(sets[name][c, 0].clamp(-1, 1).numpy(), cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle("samples from shared initial noise (one column per noise)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_similarity(matrix, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean = matrix.mean
    fig, ax = plt.subplots(figsize=(1.0 * len(matrix.names) + 2, 0.9 * len(matrix.names) + 1.5))
    image = ax.imshow(mean, cmap="viridis", vmin=min(0.0, float(mean.min())), vmax=1)
    ax.set_xticks(range(len(matrix.names)), matrix.names, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(matrix.names)), matrix.names, fontsize=8)
    for i in range(len(matrix.names)):
        for j in range(len(matrix.names)):
            ax.text(j, i, f"{mean[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if mean[i, j] < 0.6 else "black")
    ax.set_title(f"mean similarity ({matrix.descriptor['name']})", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------
# Verdict on the paper's finding
# ---------------------------------------------------------------------------------------
def verdict(curves: dict, similarity: dict | None) -> list[str]:
    """Whether PSPC-Flex, then Square, are closer to the network than the other denoisers
    for t in [0.3, 3] (per process), and whether PSPC samples are more similar to the network's."""
    lines = []
    others = [k for k in ("empirical", "gaussian", "cfdm")]
    for process, c in curves.items():
        means = c.mean_over(*FINDING_RANGE)
        inside = [k for k, t in enumerate(c.times) if FINDING_RANGE[0] <= t <= FINDING_RANGE[1]]
        if not inside:
            lines.append(f"- {process}: no evaluated level in t = {FINDING_RANGE}")
            continue
        order = sorted(means, key=means.get)
        text = ", ".join(f"{n} {means[n]:.3e}" for n in order)
        present_others = [n for n in others if n in means]
        claims = []
        for pspc in ("pspc-flex", "pspc-square"):
            if pspc in means and present_others:
                beaten = all(means[pspc] < means[o] for o in present_others)
                levels = sum(all(c.mse[c.names.index(pspc), k] < c.mse[c.names.index(o), k] for o in present_others)
                             for k in inside)
                claims.append(f"{pspc} closer than {'/'.join(present_others)} on average: {'yes' if beaten else 'NO'} "
                              f"(at {levels} of {len(inside)} levels)")
        if "pspc-flex" in means and "pspc-square" in means:
            claims.append(f"flex closer than square: {'yes' if means['pspc-flex'] < means['pspc-square'] else 'NO'}")
        lines.append(f"- {process} process, mean MSE over t in [{FINDING_RANGE[0]:g}, {FINDING_RANGE[1]:g}] "
                     f"({len(inside)} levels), closest first: {text}")
        lines += [f"  - {claim}" for claim in claims]
    if similarity:
        order = sorted(similarity, key=similarity.get, reverse=True)
        lines.append("- mean similarity to the network's samples, highest first: "
                     + ", ".join(f"{n} {similarity[n]:.3f}" for n in order))
        if "empirical" in similarity:
            for pspc in ("pspc-flex", "pspc-square"):
                if pspc in similarity:
                    lines.append(f"  - {pspc} samples more similar to the network's than the optimal (empirical) "
                                 f"denoiser's: {'yes' if similarity[pspc] > similarity['empirical'] else 'NO'}")
    return lines


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------
def main(argv=None) -> int:
    args = resolve(build_parser().parse_args(argv))
    network_path = Path(args.network)
    if not network_path.is_absolute() and not network_path.exists():
        network_path = REPO / network_path
    if not network_path.is_file():
        print(f"fidelity: error: no network at {args.network}. Train the project's network first "
              f"(`auditor train-network --data fashion-mnist --out {DEFAULT_NETWORK}`) or pass --network FILE "
              f"(a pspc checkpoint, a TorchScript net(z, sigma) or an EDM pickle).", file=sys.stderr)
        return 2

    from pspc.denoisers import build_denoiser
    from pspc.fidelity import (SensitivityMaps, compare_denoisers, concentration_table, forward_process_states,
                               network_flex, reverse_process_states)
    from pspc.loaders import load_training_set
    from pspc.networks import load_network
    from pspc.samplers import SamplerConfig, initial_noise, sample
    from pspc.schedules import Schedule
    from pspc.tuning import tune_schedule, tuning_states

    started = time.perf_counter()
    timings: dict[str, float] = {}
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)

    def phase(name: str, begin: float) -> None:
        timings[name] = round(time.perf_counter() - begin, 1)
        _log(f"{name}: {timings[name]} s")

    begin = time.perf_counter()
    training_set = load_training_set(args.data, limit=args.limit).with_xflip(not args.no_xflip)
    test_set = load_training_set(args.test_data)
    network = load_network(network_path, training_set, device=device)
    _, height, width = training_set.image_shape
    phase("load", begin)
    _log(f"training set {training_set.name}: {len(training_set)} images ({training_set.num_entries} entries), "
         f"network {network_path.name} sha256 {network.record.get('sha256', '?')[:12]}")

    # 1. Sensitivity (Eq. 8) and gradient concentration (Fig. 3)
    begin = time.perf_counter()
    sensitivity = SensitivityMaps(network, test_set, args.sensitivity_samples, args.seed, grid=args.grid)
    concentration = concentration_table(sensitivity, args.grid)
    phase("sensitivity", begin)
    print(concentration.table(), flush=True)

    # 2. States and errors against the network
    begin = time.perf_counter()
    config = SamplerConfig(method="euler", num_steps=args.steps)
    forward = forward_process_states(network, test_set, args.times, args.test_images, args.seed, args.batch)
    reverse = reverse_process_states(network, args.samples, args.seed, config)
    phase("states", begin)

    schedule_file = args.schedule
    tuned = None
    if args.tune:
        begin = time.perf_counter()
        levels, states_record = tuning_states(network, config, args.tune_process, images=test_set,
                                              num_images=args.tune_states, num_samples=args.tune_states,
                                              seed=args.seed + 1000)
        sizes = [int(v) for v in _floats(args.tune_sizes, "--tune-sizes")] if args.tune_sizes else None
        lambdas = _floats(args.tune_lambdas, "--tune-lambdas") if args.tune_lambdas else None
        tuned = tune_schedule(training_set, levels, sizes=sizes, lambdas=lambdas, sensitivity=sensitivity,
                              batch_size=args.batch, device=device, name=f"tuned-{network_path.stem}",
                              record={"network": network.describe(), "states": states_record})
        schedule_file = tuned.save(args.out / "schedule.json")
        phase("tuning", begin)
        print(tuned.table(), flush=True)

    def factory(kind: str, schedule_path=None):
        def make():
            if kind == "pspc-flex":
                lambdas = Schedule.load(schedule_path, "lambda", (height, width)) if schedule_path else None
                return network_flex(training_set, sensitivity, lambdas).to(device)
            return build_denoiser(kind, training_set, seed=args.seed, schedule=schedule_path).to(device)
        return make

    denoisers = {}
    for kind in args.kinds:
        uses_schedule = kind in ("pspc-square", "pspc-flex") and args.schedule is not None
        denoisers[kind] = factory(kind, args.schedule if uses_schedule else None)
    if tuned is not None:
        for kind in ("pspc-square", "pspc-flex"):
            if kind in args.kinds:
                denoisers[f"{kind} (tuned)"] = factory(kind, schedule_file)

    begin = time.perf_counter()
    curves = compare_denoisers(denoisers, [forward, reverse], args.batch)
    phase("errors", begin)
    for c in curves.values():
        print(c.table(), flush=True)

    # 3. Samples from shared noise and their similarity to the network's
    similarity_record, similarity_to_network = None, None
    if not args.no_sampling:
        from auditor.copy_detection import similarity_matrix
        from auditor.descriptors import load_descriptor

        begin = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            descriptor = load_descriptor(None if args.descriptor == "auto" else args.descriptor)
        for warning in caught:
            _log(f"warning: {warning.message}")
        sets = {"network": reverse.final}
        z0 = initial_noise(args.samples, training_set.image_shape, args.seed)
        for name, make in denoisers.items():
            denoiser = make()
            with torch.no_grad():
                sets[name] = sample(denoiser, z0, config).float().cpu().clamp(-1, 1)
            del denoiser
            _log(f"sampled {name}")
        matrix = similarity_matrix(sets, descriptor)
        similarity_to_network = {name: float(matrix.mean[0, j]) for j, name in enumerate(matrix.names) if j > 0}
        similarity_record = matrix.to_dict(include_scores=True)
        np.save(args.out / "samples.npy", np.stack([sets[n].numpy() for n in matrix.names]))
        plot_samples(sets, args.out / "samples.png")
        plot_similarity(matrix, args.out / "similarity.png")
        phase("sampling", begin)
        print(matrix.summary(), flush=True)

    # 4. Plots, tables, record
    plot_curves(curves["forward"], args.out / "mse_forward.png",
                f"forward process ({args.test_images} test images)")
    plot_curves(curves["reverse"], args.out / "mse_reverse.png",
                f"reverse process ({args.samples} network trajectories, {args.steps} Euler steps)")
    plot_concentration(concentration, sensitivity, args.out / "concentration.png")
    findings = verdict(curves, similarity_to_network)
    timings["total"] = round(time.perf_counter() - started, 1)

    record = {
        "command": [sys.executable, *sys.argv] if argv is None else ["bench/fidelity.py", *argv],
        "configuration": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "training_set": training_set.describe(), "test_set": test_set.describe(),
        "network": network.describe(),
        "sensitivity": sensitivity.describe(),
        "states": {"forward": forward.record, "reverse": reverse.record},
        "schedule_file": str(schedule_file) if schedule_file else None,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                     "pspc-auditor": _version("pspc-auditor"), "numba": _version("numba"),
                     "matplotlib": _version("matplotlib")},
        "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads(),
                    "cpus": os.cpu_count(), "device": str(device)},
        "timings_s": timings,
    }
    result = {"record": record, "curves": {p: c.to_dict() for p, c in curves.items()},
              "concentration": concentration.to_dict(), "similarity": similarity_record,
              "similarity_to_network": similarity_to_network,
              "tuned_schedule": tuned.rows() if tuned else None, "findings": findings}
    (args.out / "fidelity.json").write_text(json.dumps(result, indent=1, default=float))
    torch.save({t: g.float() for t, g in sensitivity.maps.items()}, args.out / "sensitivity.pt")

    summary = ["# Denoisers against the network", "",
               f"network `{network_path}` (sha256 {network.record.get('sha256', '?')}), training set "
               f"{training_set.name} {len(training_set)} images (x-flip {training_set.xflip}, fingerprint "
               f"{training_set.fingerprint[:16]}), held-out {test_set.name} ({test_set.fingerprint[:16]}); seed {args.seed}.",
               "", "```", concentration.table(), "```", ""]
    for c in curves.values():
        summary += ["```", c.table(), "```", ""]
    if similarity_record:
        summary += ["```", matrix.summary(), "```", ""]
    if tuned:
        summary += ["```", tuned.table(), "```", ""]
    summary += ["## The paper's finding on this data", "", *findings, "",
                f"timings (s): {json.dumps(timings)}", ""]
    (args.out / "summary.md").write_text("\n".join(summary))
    print("\n".join(findings))
    _log(f"wrote {args.out}: fidelity.json, summary.md, sensitivity.pt, "
         f"{', '.join(sorted(p.name for p in args.out.glob('*.png')))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
