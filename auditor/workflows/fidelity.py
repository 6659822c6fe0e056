"""Fidelity studies: how closely training-free denoisers reproduce a network, run and stored.

The paper's comparison (Sec. 5; Figs. 2, 3, 4, 7, 9; Appendix B) as one library call:
`run_study(options)` loads the training images, the held-out images and the network; computes
the network's gradient sensitivity G(t) (Eq. 8) and the gradient-concentration table
(Fig. 3); the MSE against the network of every denoiser per noise level on the forward and
the reverse process (Figs. 4, 7); optionally tunes s(t) and lambda(t) on the network
(Appendix B); and samples from shared initial noise with every denoiser, scoring the
samples' descriptor similarity to the network's (Fig. 9). `Study.result` is exactly what
bench/fidelity.py writes as fidelity.json; `verdict` is the paper's finding checked on it.

The options are ONE argparse definition (`add_study_options`), shared by bench/fidelity.py
and `auditor fidelity run`; `study_options(argv)` gives them resolved for library use.

In the provenance store (revision 0007): `store_study(db, result)` checks a result (a run's,
or an imported fidelity.json: a missing key, NaN or a wrong type is refused naming the
field) and writes it in one transaction as plain rows (fidelity_studies, fidelity_errors,
fidelity_concentration, fidelity_similarity, fidelity_schedule). `load_study(db, id)` reads it
back in the same shape, less what is not stored (the per-state errors and the per-sample
similarity scores); `list_studies(db)` lists the studies, newest first.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from auditor.store import database, schema as models
from auditor.store.database import NotFoundError, json_value

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from pspc.denoisers import NetworkDenoiser
    from pspc.evaluation.fidelity import ConcentrationTable, FidelityCurves, SensitivityMaps
    from pspc.data.training_set import TrainingSet
    from pspc.evaluation.tuning import TunedSchedule

    from auditor.similarity.copy_detection import SimilarityMatrix

__all__ = ["DEFAULT_NETWORK", "FINDING_RANGE", "FULL", "KINDS", "QUICK", "RESULT_KEYS", "Study", "StudyError",
           "add_study_options", "list_studies", "load_study", "network_path", "resolve_options", "run_study",
           "store_study", "study_options", "verdict"]

REPO = Path(__file__).resolve().parents[2]
DEFAULT_NETWORK = "checkpoints/fmnist-unet.pt"
KINDS = ("empirical", "gaussian", "cfdm", "pspc-square", "pspc-flex")
FULL = {"limit": None, "test_images": 64, "samples": 64, "steps": 18, "ts": "0.01,0.03,0.1,0.3,1,3,10,30",
        "sensitivity_grid": "0.01,0.03,0.1,0.3,1,3,10,30", "sensitivity_samples": 16, "tune_states": 16}
QUICK = {"limit": 5000, "test_images": 8, "samples": 8, "steps": 18, "ts": "0.03,0.1,0.3,1,3,10",
         "sensitivity_grid": "0.03,0.1,0.3,1,3,10", "sensitivity_samples": 8, "tune_states": 4}
FINDING_RANGE = (0.3, 3.0)  # the paper's t range for "PSPC is closer to the network"
RESULT_KEYS = ("record", "curves", "concentration", "similarity", "similarity_to_network", "tuned_schedule",
               "findings")


class StudyError(ValueError):
    """Bad study options, or a study result that cannot be stored; names the option or field."""


# ---------------------------------------------------------------------------------------
# Options (bench/fidelity.py and `auditor fidelity run`)
# ---------------------------------------------------------------------------------------
def add_study_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the study's options to `parser`. Defaults in brackets are the full configuration's;
    --quick changes them to QUICK's. Unset ones stay None until `resolve_options`."""
    parser.add_argument("--network", default=DEFAULT_NETWORK, help="network file (pspc.networks.unet.load_network) [%(default)s]")
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
    parser.add_argument("--descriptor", default="auto", help="auditor.similarity.descriptors.load_descriptor spec [%(default)s]")
    parser.add_argument("--no-sampling", action="store_true", help="skip the samples and their similarity")
    parser.add_argument("--seed", type=int, default=0, help="seed of every draw (tuning uses seed + 1000) [0]")
    parser.add_argument("--batch", type=int, default=64, help="denoiser batch size [64]")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="CPU threads of torch and of the PSPC kernels [all cores; 1 is "
                        "far faster on a busy machine]")
    parser.add_argument("--quick", action="store_true", help="the quick preset (minutes on 2 CPU cores)")
    return parser


@functools.lru_cache(maxsize=1)
def _option_keys() -> tuple[str, ...]:
    """The study options' names, in their order (what the record's configuration holds)."""
    parser = add_study_options(argparse.ArgumentParser(add_help=False))
    return tuple(action.dest for action in parser._actions)


def _floats(text: str, option: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise StudyError(f"{option} takes comma-separated numbers, got {text!r}") from None
    if not values:
        raise StudyError(f"{option} is empty")
    return values


def resolve_options(options: argparse.Namespace) -> argparse.Namespace:
    """Fill unset options from the preset (--quick or full) and check them; adds `times`,
    `grid` and `kinds` (the parsed --ts, --sensitivity-grid and --denoisers). In place."""
    preset = QUICK if options.quick else FULL
    for key, value in preset.items():
        if getattr(options, key) is None:
            setattr(options, key, value)
    for key in ("test_images", "samples", "steps", "sensitivity_samples", "tune_states", "batch"):
        if getattr(options, key) < 1:
            raise StudyError(f"--{key.replace('_', '-')} must be >= 1")
    if options.limit is not None and options.limit < 1:
        raise StudyError("--limit must be >= 1")
    if options.threads is not None and options.threads < 1:
        raise StudyError("--threads must be >= 1")
    options.times = _floats(options.ts, "--ts")
    options.grid = _floats(options.sensitivity_grid, "--sensitivity-grid")
    options.kinds = [k.strip() for k in options.denoisers.split(",") if k.strip()]
    unknown = sorted(set(options.kinds) - set(KINDS))
    if unknown or not options.kinds:
        raise StudyError(f"unknown denoiser(s) {unknown}; choose from {', '.join(KINDS)}")
    if options.schedule is not None and not Path(options.schedule).is_file():
        raise StudyError(f"no schedule file at {options.schedule}")
    return options


def study_options(argv: Sequence[str] = ()) -> argparse.Namespace:
    """Resolved options from command-line style arguments, e.g. study_options(["--quick", "--limit", "200"])."""
    parser = add_study_options(argparse.ArgumentParser(prog="fidelity", add_help=False))
    return resolve_options(parser.parse_args([str(a) for a in argv]))


def network_path(options: argparse.Namespace) -> Path:
    """The network file of `options` (a relative path also tried from the repository root)."""
    path = Path(options.network)
    if not path.is_absolute() and not path.exists():
        path = REPO / path
    if not path.is_file():
        raise StudyError(f"no network at {options.network}. Train the project's network first "
                         f"(`auditor train-network --data fashion-mnist --out {DEFAULT_NETWORK}`) or pass --network "
                         f"FILE (a pspc checkpoint, a TorchScript net(z, sigma) or an EDM pickle).")
    return path


# ---------------------------------------------------------------------------------------
# Running a study
# ---------------------------------------------------------------------------------------
@dataclass
class Study:
    """A finished study. `result` is fidelity.json; the rest is what the bench's files are drawn from."""

    result: dict
    curves: dict[str, FidelityCurves]  # process -> MSE curves
    concentration: ConcentrationTable
    sensitivity: SensitivityMaps  # G(t) at the grid levels
    matrix: SimilarityMatrix | None  # the samples' similarity (None with --no-sampling)
    samples: dict | None  # name -> samples [B, C, H, W] from shared noise, "network" first
    tuned: TunedSchedule | None
    network: NetworkDenoiser
    network_path: Path
    training_set: TrainingSet
    test_set: TrainingSet

    @property
    def findings(self) -> list[str]:
        return self.result["findings"]


def _versions() -> dict:
    import numpy as np
    import torch

    from auditor.workflows.sampling import _version

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            **{name: _version(name) or "not installed" for name in ("pspc-auditor", "numba", "matplotlib")}}


def run_study(options: argparse.Namespace, *, out: Path | None = None, command: Sequence[str] | None = None,
              log: Callable[[str], None] | None = None, show: Callable[[str], None] | None = None) -> Study:
    """Run the study of `options` (resolved: `study_options` or `resolve_options`).

    out: folder for the tuned schedule (schedule.json; created). With --tune and no `out`,
    the schedule file is temporary (the record's schedule_file is then None; the tuned rows
    are in the result either way). command: the record's command (default: this process's
    argv). log: progress lines; show: each table (text) as soon as it is computed."""
    import numpy as np
    import torch

    from pspc.denoisers import build_denoiser
    from pspc.evaluation.fidelity import (
        SensitivityMaps, compare_denoisers, concentration_table, forward_process_states, network_flex,
        reverse_process_states
    )
    from pspc.data.loaders import load_training_set
    from pspc.networks.unet import load_network
    from pspc.samplers import SamplerConfig, initial_noise, sample
    from pspc.schedules import Schedule
    from pspc.evaluation.tuning import tune_schedule, tuning_states

    log = log or (lambda message: None)
    show = show or (lambda text: None)
    path = network_path(options)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
    if options.threads is not None:
        import numba

        # both: numba's OpenMP kernels reset the thread count that torch reads
        torch.set_num_threads(options.threads)
        numba.set_num_threads(min(options.threads, numba.config.NUMBA_NUM_THREADS))
    started = time.perf_counter()
    timings: dict[str, float] = {}
    device = torch.device(options.device)

    def phase(name: str, begin: float) -> None:
        timings[name] = round(time.perf_counter() - begin, 1)
        log(f"{name}: {timings[name]} s")

    begin = time.perf_counter()
    training_set = load_training_set(options.data, limit=options.limit).with_xflip(not options.no_xflip)
    test_set = load_training_set(options.test_data)
    network = load_network(path, training_set, device=device)
    _, height, width = training_set.image_shape
    phase("load", begin)
    log(f"training set {training_set.name}: {len(training_set)} images ({training_set.num_entries} entries), "
        f"network {path.name} sha256 {network.record.get('sha256', '?')[:12]}")

    # 1. Sensitivity (Eq. 8) and gradient concentration (Fig. 3)
    begin = time.perf_counter()
    sensitivity = SensitivityMaps(network, test_set, options.sensitivity_samples, options.seed, grid=options.grid)
    concentration = concentration_table(sensitivity, options.grid)
    phase("sensitivity", begin)
    show(concentration.table())

    # 2. States and errors against the network
    begin = time.perf_counter()
    config = SamplerConfig(method="euler", num_steps=options.steps)
    forward = forward_process_states(network, test_set, options.times, options.test_images, options.seed,
                                     options.batch)
    reverse = reverse_process_states(network, options.samples, options.seed, config)
    phase("states", begin)

    with contextlib.ExitStack() as scratch:
        schedule_file = options.schedule
        tuned = None
        if options.tune:
            begin = time.perf_counter()
            levels, states_record = tuning_states(network, config, options.tune_process, images=test_set,
                                                  num_images=options.tune_states, num_samples=options.tune_states,
                                                  seed=options.seed + 1000)
            sizes = [int(v) for v in _floats(options.tune_sizes, "--tune-sizes")] if options.tune_sizes else None
            lambdas = _floats(options.tune_lambdas, "--tune-lambdas") if options.tune_lambdas else None
            tuned = tune_schedule(training_set, levels, sizes=sizes, lambdas=lambdas, sensitivity=sensitivity,
                                  batch_size=options.batch, device=device, name=f"tuned-{path.stem}",
                                  record={"network": network.describe(), "states": states_record})
            folder = out if out is not None else Path(scratch.enter_context(tempfile.TemporaryDirectory()))
            schedule_file = tuned.save(folder / "schedule.json")
            phase("tuning", begin)
            show(tuned.table())

        def factory(kind: str, schedule_path=None):
            def make():
                if kind == "pspc-flex":
                    lambdas = Schedule.load(schedule_path, "lambda", (height, width)) if schedule_path else None
                    return network_flex(training_set, sensitivity, lambdas).to(device)
                return build_denoiser(kind, training_set, seed=options.seed, schedule=schedule_path).to(device)
            return make

        denoisers = {}
        for kind in options.kinds:
            uses_schedule = kind in ("pspc-square", "pspc-flex") and options.schedule is not None
            denoisers[kind] = factory(kind, options.schedule if uses_schedule else None)
        if tuned is not None:
            for kind in ("pspc-square", "pspc-flex"):
                if kind in options.kinds:
                    denoisers[f"{kind} (tuned)"] = factory(kind, schedule_file)

        begin = time.perf_counter()
        curves = compare_denoisers(denoisers, [forward, reverse], options.batch)
        phase("errors", begin)
        for c in curves.values():
            show(c.table())

        # 3. Samples from shared noise and their similarity to the network's
        matrix, sets, similarity_to_network = None, None, None
        if not options.no_sampling:
            from auditor.similarity.copy_detection import similarity_matrix
            from auditor.similarity.descriptors import load_descriptor

            begin = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                descriptor = load_descriptor(None if options.descriptor == "auto" else options.descriptor)
            for warning in caught:
                log(f"warning: {warning.message}")
            sets = {"network": reverse.final}
            z0 = initial_noise(options.samples, training_set.image_shape, options.seed)
            for name, make in denoisers.items():
                denoiser = make()
                with torch.no_grad():
                    sets[name] = sample(denoiser, z0, config).float().cpu().clamp(-1, 1)
                del denoiser
                log(f"sampled {name}")
            matrix = similarity_matrix(sets, descriptor)
            similarity_to_network = {name: float(matrix.mean[0, j]) for j, name in enumerate(matrix.names) if j > 0}
            phase("sampling", begin)
            show(matrix.summary())
        if out is None and tuned is not None:
            schedule_file = None  # the temporary file is gone with the scratch folder

    findings = verdict(curves, similarity_to_network)
    timings["total"] = round(time.perf_counter() - started, 1)
    configuration = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(options).items()
                     if k in (*_option_keys(), "out", "times", "grid", "kinds")}
    record = {
        "command": list(command) if command is not None else [sys.executable, *sys.argv],
        "configuration": configuration,
        "training_set": training_set.describe(), "test_set": test_set.describe(),
        "network": network.describe(),
        "sensitivity": sensitivity.describe(),
        "states": {"forward": forward.record, "reverse": reverse.record},
        "schedule_file": str(schedule_file) if schedule_file else None,
        "versions": _versions(),
        "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads(),
                    "cpus": os.cpu_count(), "device": str(device)},
        "timings_s": timings,
    }
    result = {"record": record, "curves": {p: c.to_dict() for p, c in curves.items()},
              "concentration": concentration.to_dict(),
              "similarity": matrix.to_dict(include_scores=True) if matrix is not None else None,
              "similarity_to_network": similarity_to_network,
              "tuned_schedule": tuned.rows() if tuned else None, "findings": findings}
    return Study(result, curves, concentration, sensitivity, matrix, sets, tuned, network, path, training_set,
                 test_set)


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
# Checking a result before it is stored
# ---------------------------------------------------------------------------------------
def _fail(field: str, problem: str):
    raise StudyError(f"fidelity result: {field} {problem}")


def _kind(value) -> str:
    return "null" if value is None else type(value).__name__


def _object(value, field: str) -> dict:
    if not isinstance(value, dict):
        _fail(field, f"must be an object, got {_kind(value)}")
    return value


def _key(mapping: dict, key: str, field: str):
    if key not in mapping:
        _fail(f"{field}.{key}" if field else key, "is missing")
    return mapping[key]


def _text(value, field: str) -> str:
    if not isinstance(value, str) or not value:
        _fail(field, f"must be a non-empty string, got {_kind(value)}")
    return value


def _number(value, field: str, low: float | None = None, above: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(field, f"must be a number, got {_kind(value)}")
    value = float(value)
    if math.isnan(value):
        _fail(field, "is NaN")
    if math.isinf(value):
        _fail(field, "is infinite")
    if low is not None and (value <= low if above else value < low):
        _fail(field, f"must be {'>' if above else '>='} {low:g}, got {value:g}")
    return value


def _integer(value, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(field, f"must be an integer, got {_kind(value)}")
    return value


def _list(value, field: str, length: int | None = None) -> list:
    if not isinstance(value, list):
        _fail(field, f"must be a list, got {_kind(value)}")
    if length is not None and len(value) != length:
        _fail(field, f"must have {length} entries, got {len(value)}")
    return value


def _times(value, field: str) -> list[float]:
    times = [_number(t, f"{field}[{k}]", 0.0, above=True) for k, t in enumerate(_list(value, field))]
    if not times:
        _fail(field, "is empty")
    return times


def _names(value, field: str) -> list[str]:
    names = [_text(n, f"{field}[{k}]") for k, n in enumerate(_list(value, field))]
    if not names or len(set(names)) != len(names):
        _fail(field, f"must be distinct names, got {names}")
    return names


def _table(value, field: str, rows: int, columns: int) -> list[list[float]]:
    return [[_number(v, f"{field}[{i}][{j}]", 0.0) for j, v in enumerate(_list(row, f"{field}[{i}]", columns))]
            for i, row in enumerate(_list(value, field, rows))]


def _curve_rows(process: str, curve, field: str) -> tuple[list[dict], dict]:
    curve = _object(curve, field)
    if curve.get("process", process) != process:
        _fail(f"{field}.process", f"is {curve.get('process')!r}, its key says {process!r}")
    times = _times(_key(curve, "times", field), f"{field}.times")
    names = _names(_key(curve, "names", field), f"{field}.names")
    mse = _table(_key(curve, "mse", field), f"{field}.mse", len(names), len(times))
    stderr = _table(_key(curve, "stderr", field), f"{field}.stderr", len(names), len(times))
    states = None
    if curve.get("errors") is not None:  # [D, T, B] per-state errors: only their count is stored
        errors = _list(curve["errors"], f"{field}.errors", len(names))
        first = _list(_list(errors[0], f"{field}.errors[0]", len(times))[0], f"{field}.errors[0][0]")
        states = len(first)
    elif curve.get("states") is not None:
        states = _integer(curve["states"], f"{field}.states")
    denoisers = _object(curve.get("denoisers", {}), f"{field}.denoisers")
    rows = [{"process": process, "denoiser": name, "level": k, "position": d, "t": t, "mse": mse[d][k],
             "stderr": stderr[d][k], "states": states}
            for d, name in enumerate(names) for k, t in enumerate(times)]
    return rows, denoisers


def _checked(result) -> dict:
    """The rows and columns of a result dict (fidelity.json); StudyError naming the first bad field."""
    result = _object(result, "the result")
    for key in RESULT_KEYS:
        _key(result, key, "")
    try:  # plain JSON values, as in the file (numpy scalars from a fresh run become floats)
        result = json.loads(json.dumps({key: result[key] for key in RESULT_KEYS}, default=float))
    except (TypeError, ValueError) as exc:
        raise StudyError(f"fidelity result: not JSON data ({exc})") from None

    record = _object(result["record"], "record")
    training = _object(_key(record, "training_set", "record"), "record.training_set")
    network = _object(_key(record, "network", "record"), "record.network")
    loader = network.get("network") or {}
    sha256 = loader.get("sha256") if isinstance(loader, dict) else None
    if sha256 is not None:
        _text(sha256, "record.network.network.sha256")
    test = record.get("test_set")
    seed = (record.get("configuration") or {}).get("seed") if isinstance(record.get("configuration"), dict) else None
    study = {"network_name": network.get("name") if isinstance(network.get("name"), str) else None,
             "network_sha256": sha256, "network": network,
             "training_fingerprint": _text(_key(training, "fingerprint", "record.training_set"),
                                           "record.training_set.fingerprint"),
             "test_fingerprint": _text(test.get("fingerprint"), "record.test_set.fingerprint")
             if isinstance(test, dict) and "fingerprint" in test else None,
             "seed": _integer(seed, "record.configuration.seed") if seed is not None else None,
             "record": record}

    curves = _object(result["curves"], "curves")
    if not curves:
        _fail("curves", "is empty")
    errors, denoisers = [], {}
    for process, curve in curves.items():
        rows, denoisers[process] = _curve_rows(process, curve, f"curves.{process}")
        errors += rows
    study["denoisers"] = denoisers

    field = "concentration"
    concentration = _object(result["concentration"], field)
    times = _times(_key(concentration, "times", field), f"{field}.times")
    fractions = [_number(f, f"{field}.fractions[{j}]", 0.0, above=True)
                 for j, f in enumerate(_list(_key(concentration, "fractions", field), f"{field}.fractions"))]
    if len(set(fractions)) != len(fractions):
        _fail(f"{field}.fractions", f"repeat: {fractions}")
    mean_side = _table(_key(concentration, "mean_side", field), f"{field}.mean_side", len(times), len(fractions))
    median_side = _table(_key(concentration, "median_side", field), f"{field}.median_side", len(times), len(fractions))
    within = _object(concentration.get("within", {}), f"{field}.within")
    for side, shares in within.items():
        [_number(v, f"{field}.within.{side}[{k}]") for k, v in enumerate(_list(shares, f"{field}.within.{side}",
                                                                               len(times)))]
    study["concentration_record"] = {"within": within,
                                     "record": _object(concentration.get("record", {}), f"{field}.record")}
    concentration_rows = [{"level": k, "fraction": f, "t": t, "mean_side": mean_side[k][j],
                           "median_side": median_side[k][j]}
                          for k, t in enumerate(times) for j, f in enumerate(fractions)]

    similarity = result["similarity"]
    if similarity is not None:
        similarity = {k: v for k, v in _object(similarity, "similarity").items() if k != "scores"}
    study["similarity"] = similarity
    similarity_rows = []
    if result["similarity_to_network"] is not None:
        to_network = _object(result["similarity_to_network"], "similarity_to_network")
        if similarity is None:
            _fail("similarity", "is null, but similarity_to_network needs its descriptor")
        descriptor = _text(_object(_key(similarity, "descriptor", "similarity"), "similarity.descriptor").get("name"),
                           "similarity.descriptor.name")
        names = similarity.get("names") if isinstance(similarity.get("names"), list) else []
        std = similarity.get("std")
        for position, (name, value) in enumerate(to_network.items()):
            column = names.index(name) if name in names else None
            spread = None
            if column is not None and isinstance(std, list) and std and isinstance(std[0], list) \
                    and column < len(std[0]):
                spread = _number(std[0][column], f"similarity.std[0][{column}]")
            similarity_rows.append({"denoiser": name, "position": position,
                                    "similarity": _number(value, f"similarity_to_network.{name}"),
                                    "std": spread, "samples": _integer(similarity["count"], "similarity.count")
                                    if similarity.get("count") is not None else None,
                                    "descriptor": descriptor})

    schedule_rows = []
    if result["tuned_schedule"] is not None:
        for step, row in enumerate(_list(result["tuned_schedule"], "tuned_schedule")):
            where = f"tuned_schedule[{step}]"
            row = _object(row, where)
            size = row.get("patch_size")
            lam = row.get("lambda")
            schedule_rows.append({
                "step": step, "t": _number(_key(row, "t", where), f"{where}.t", 0.0, above=True),
                "patch_size": _integer(size, f"{where}.patch_size") if size is not None else None,
                "flex_lambda": _number(lam, f"{where}.lambda", 0.0, above=True) if lam is not None else None,
                "candidate_errors": _object(row["errors"], f"{where}.errors") if row.get("errors") is not None
                else None})

    findings = _list(result["findings"], "findings")
    for k, line in enumerate(findings):
        if not isinstance(line, str):
            _fail(f"findings[{k}]", f"must be a string, got {_kind(line)}")
    study["findings"] = findings
    return {"study": study, "errors": errors, "concentration": concentration_rows, "similarity": similarity_rows,
            "schedule": schedule_rows}


# ---------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------
def _default_name(study: dict) -> str:
    out = (study["record"].get("configuration") or {}).get("out")
    if isinstance(out, str) and out:
        return Path(out).name
    training = study["record"]["training_set"].get("name") or "training set"
    return f"{study['network_name'] or 'network'} on {training}"


def _insert(session: Session, checked: dict, name: str | None, source: str | None) -> int:
    from auditor.store.recorder import utcnow

    study = models.FidelityStudy(**checked["study"], name=name or _default_name(checked["study"]),
                                 source=source, created_at=utcnow())
    session.add(study)
    session.flush()
    study_id = int(study.id)
    for model, key in ((models.FidelityCurvePoint, "errors"), (models.FidelityConcentration, "concentration"),
                       (models.FidelitySimilarity, "similarity"), (models.FidelityScheduleStep, "schedule")):
        session.add_all([model(study_id=study_id, **row) for row in checked[key]])
    session.flush()
    return study_id


def store_study(target, result: dict, *, name: str | None = None, source: str | None = None,
                timeout: float = database.DEFAULT_TIMEOUT) -> int:
    """Store a study result (`Study.result`, or a fidelity.json read back); returns its id.

    target: the store's path (one transaction of its own) or an open SQLAlchemy Session (the
    caller's transaction). The result is checked first: a missing key, NaN, infinity or a
    value of the wrong type raises StudyError naming the field, and nothing is written.
    name: the study's label (default: the output folder's name, else network and data)."""
    from sqlalchemy.orm import Session

    checked = _checked(result)
    if isinstance(target, Session):
        return _insert(target, checked, name, source)
    database.require_current(target, timeout)
    with database.session(target, timeout=timeout) as session:
        return _insert(session, checked, name, source)



_STUDY_COLUMNS = ("id", "name", "created_at", "source", "network_name", "network_sha256", "training_fingerprint",
                  "test_fingerprint", "seed")


def load_study(db_path, study_id: int, *, timeout: float = database.DEFAULT_TIMEOUT) -> dict:
    """A stored study in the shape of fidelity.json (record, curves, concentration, similarity,
    similarity_to_network, tuned_schedule, findings) plus its id, name, created_at, source,
    network_sha256, training_fingerprint and the similarity descriptor's name. Curves carry
    `states` (their count) instead of the per-state `errors`; similarity has no per-sample
    `scores`. NotFoundError for an unknown id."""
    study_id = int(study_id)
    with database.connect(db_path, read_only=True, timeout=timeout, check_schema=True) as conn:
        row = conn.execute(f"SELECT {', '.join(_STUDY_COLUMNS)}, record, findings, denoisers, concentration_record, "
                           "similarity FROM fidelity_studies WHERE id = ?", [study_id]).fetchone()
        if row is None:
            raise NotFoundError(f"{db_path}: no fidelity study {study_id}")
        errors = conn.execute("SELECT process, denoiser, position, level, t, mse, stderr, states FROM fidelity_errors "
                              "WHERE study_id = ? ORDER BY process, position, level", [study_id]).fetchall()
        concentration = conn.execute("SELECT level, t, fraction, mean_side, median_side FROM fidelity_concentration "
                                     "WHERE study_id = ? ORDER BY level, fraction", [study_id]).fetchall()
        similarity = conn.execute("SELECT denoiser, similarity, descriptor FROM fidelity_similarity "
                                  "WHERE study_id = ? ORDER BY position", [study_id]).fetchall()
        schedule = conn.execute("SELECT t, patch_size, flex_lambda, candidate_errors FROM fidelity_schedule "
                                "WHERE study_id = ? ORDER BY step", [study_id]).fetchall()
    study = dict(zip(_STUDY_COLUMNS, row[:len(_STUDY_COLUMNS)]))
    record, findings, denoisers, concentration_record, matrix = (json_value(v) for v in row[len(_STUDY_COLUMNS):])

    curves = {}
    for process in denoisers:  # the stored order of the processes
        points = [e for e in errors if e[0] == process]
        names = list(dict.fromkeys(e[1] for e in points))
        times = [e[4] for e in points if e[1] == names[0]]
        table = {(e[1], e[3]): e for e in points}
        curves[process] = {"process": process, "times": times, "names": names,
                           "mse": [[table[(n, k)][5] for k in range(len(times))] for n in names],
                           "stderr": [[table[(n, k)][6] for k in range(len(times))] for n in names],
                           "denoisers": denoisers[process], "states": points[0][7] if points else None}
    times = list(dict.fromkeys((level, t) for level, t, *_ in concentration))
    fractions = sorted({fraction for _, _, fraction, _, _ in concentration})
    cells = {(level, fraction): (mean, median) for level, _, fraction, mean, median in concentration}
    tuned = None
    if schedule:
        tuned = []
        for t, size, lam, candidates in schedule:
            step = {"t": t}
            if size is not None:
                step["patch_size"] = int(size)
            if lam is not None:
                step["lambda"] = lam
            step["errors"] = json_value(candidates) if candidates is not None else {}
            tuned.append(step)
    return {**study, "record": record, "curves": curves,
            "concentration": {"times": [t for _, t in times], "fractions": fractions,
                              "mean_side": [[cells[(level, f)][0] for f in fractions] for level, _ in times],
                              "median_side": [[cells[(level, f)][1] for f in fractions] for level, _ in times],
                              **concentration_record},
            "similarity": matrix,
            "similarity_to_network": {name: value for name, value, _ in similarity} if similarity else None,
            "descriptor": similarity[0][2] if similarity else None,
            "tuned_schedule": tuned, "findings": findings}


def list_studies(db_path, *, timeout: float = database.DEFAULT_TIMEOUT) -> list[dict]:
    """Every stored study, newest first: id, name, created_at, source, network name and sha256,
    training set name and fingerprint, processes, denoisers, descriptor, tuned (bool)."""
    with database.connect(db_path, read_only=True, timeout=timeout, check_schema=True) as conn:
        rows = conn.execute(f"SELECT {', '.join(_STUDY_COLUMNS)}, "
                            "json_extract_string(record, '$.training_set.name') FROM fidelity_studies "
                            "ORDER BY created_at DESC, id DESC").fetchall()
        points = conn.execute("SELECT study_id, process, denoiser, min(position) AS position FROM fidelity_errors "
                              "GROUP BY ALL ORDER BY study_id, process, position").fetchall()
        descriptors = dict(conn.execute("SELECT study_id, any_value(descriptor) FROM fidelity_similarity "
                                        "GROUP BY study_id").fetchall())
        tuned = {r[0] for r in conn.execute("SELECT DISTINCT study_id FROM fidelity_schedule").fetchall()}
    studies = []
    for row in rows:
        study = {**dict(zip(_STUDY_COLUMNS, row)), "training_set": row[len(_STUDY_COLUMNS)]}
        mine = [p for p in points if p[0] == study["id"]]
        study.update(processes=list(dict.fromkeys(p[1] for p in mine)),
                     denoisers=list(dict.fromkeys(p[2] for p in sorted(mine, key=lambda p: p[3]))),
                     descriptor=descriptors.get(study["id"]), tuned=study["id"] in tuned)
        studies.append(study)
    return studies
