"""Fidelity studies: how closely training-free denoisers reproduce a network, run and stored.

The paper's comparison (Sec. 5; Figs. 2, 3, 4, 7, 9; Appendix B) as one library call:
`run_study(options)` loads the training images, the held-out images and the network; computes
the network's gradient sensitivity G(t) (Eq. 8) and the gradient-concentration table
(Fig. 3); the MSE against the network of every denoiser per noise level on the forward and
the reverse process (Figs. 4, 7); optionally tunes s(t) and lambda(t) on the network
(Appendix B); and samples from shared initial noise with every denoiser, scoring the
samples' descriptor similarity to the network's (Fig. 9). `Study.result` is exactly what
bench/fidelity.py writes as fidelity.json; `verdict` is the paper's finding checked on it.

The options are a StudyOptions (auditor.workflows.options): bench/fidelity.py and `auditor
fidelity run` build it from the same command-line options (auditor.cli.fidelity).

The store's side (revision 0007) is auditor.store.studies: `store_study`, `load_study`,
`list_studies`.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from auditor.store.studies import StudyError
from auditor.workflows.options import DEFAULT_NETWORK, FULL, KINDS, QUICK, StudyOptions, parse_floats
from pspc.record import SOURCE_TREE

if TYPE_CHECKING:
    from pspc.data.training_set import TrainingSet
    from pspc.denoisers import NetworkDenoiser
    from pspc.evaluation.fidelity import ConcentrationTable, FidelityCurves
    from pspc.evaluation.tuning import TunedSchedule
    from pspc.posterior.sensitivity import SensitivityMaps

    from auditor.similarity.copy_detection import SimilarityMatrix

__all__ = ["DEFAULT_NETWORK", "FINDING_RANGE", "FULL", "KINDS", "QUICK", "Study", "StudyOptions", "network_path",
           "run_study", "verdict"]

FINDING_RANGE = (0.3, 3.0)  # the paper's t range for "PSPC is closer to the network"


def network_path(options: StudyOptions) -> Path:
    """The network file of `options` (a relative path also tried from the source checkout's root)."""
    path = Path(options.network)
    if not path.is_absolute() and not path.exists():
        path = SOURCE_TREE / path
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


class _Phases:
    """Each phase's wall time (timings_s of the record), logged as it ends."""

    def __init__(self, log: Callable[[str], None]):
        self.log = log
        self.started = time.perf_counter()
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        begin = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - begin, 1)
        self.log(f"{name}: {self.timings[name]} s")

    def total(self) -> dict[str, float]:
        self.timings["total"] = round(time.perf_counter() - self.started, 1)
        return self.timings


def _set_threads(threads: int | None) -> None:
    if threads is None:
        return
    import numba
    import torch

    # both: numba's OpenMP kernels reset the thread count that torch reads
    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


def _tune(network, config, sensitivity, training_set, test_set, options: StudyOptions, device, path: Path,
          folder: Path):
    """Appendix B: s(t) and lambda(t) tuned on the network, saved as folder/schedule.json."""
    from pspc.evaluation.tuning import tune_schedule, tuning_states

    levels, states_record = tuning_states(network, config, options.tune_process, images=test_set,
                                          num_images=options.tune_states, num_samples=options.tune_states,
                                          seed=options.seed + 1000)
    sizes = [int(v) for v in parse_floats(options.tune_sizes, "--tune-sizes")] if options.tune_sizes else None
    lambdas = parse_floats(options.tune_lambdas, "--tune-lambdas") if options.tune_lambdas else None
    tuned = tune_schedule(training_set, levels, sizes=sizes, lambdas=lambdas, sensitivity=sensitivity,
                          batch_size=options.batch, device=device, name=f"tuned-{path.stem}",
                          record={"network": network.describe(), "states": states_record})
    return tuned, tuned.save(folder / "schedule.json")


def _denoisers(training_set, sensitivity, options: StudyOptions, device, tuned_file) -> dict[str, Callable]:
    """name -> a function that builds the denoiser (each is built when needed, then dropped)."""
    from pspc.denoisers import build_denoiser
    from pspc.denoisers import network_flex
    from pspc.schedules import Schedule

    _, height, width = training_set.image_shape

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
    if tuned_file is not None:
        for kind in ("pspc-square", "pspc-flex"):
            if kind in options.kinds:
                denoisers[f"{kind} (tuned)"] = factory(kind, tuned_file)
    return denoisers


def _sample_similarity(denoisers: dict, network_samples, training_set, config, options: StudyOptions, log):
    """Samples of every denoiser from the network's initial noise, and their descriptor
    similarity: (matrix, samples by name, mean similarity to the network's by name)."""
    import torch

    from pspc.samplers import initial_noise, sample

    from auditor.similarity.copy_detection import similarity_matrix
    from auditor.similarity.descriptors import load_descriptor

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        descriptor = load_descriptor(None if options.descriptor == "auto" else options.descriptor)
    for warning in caught:
        log(f"warning: {warning.message}")
    sets = {"network": network_samples}
    z0 = initial_noise(options.samples, training_set.image_shape, options.seed)
    for name, make in denoisers.items():
        denoiser = make()
        with torch.no_grad():
            sets[name] = sample(denoiser, z0, config).float().cpu().clamp(-1, 1)
        del denoiser
        log(f"sampled {name}")
    matrix = similarity_matrix(sets, descriptor)
    return matrix, sets, {name: float(matrix.mean[0, j]) for j, name in enumerate(matrix.names) if j > 0}


def _machine(device) -> dict:
    import torch

    return {"platform": platform.platform(), "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "device": str(device)}


def _result(study: Study, options: StudyOptions, out: Path | None, command, states: dict, schedule_file, device,
            timings: dict, similarity_to_network: dict | None) -> dict:
    """Study.result: the record (command, configuration, data, network, versions, machine,
    timings), the tables and the findings; what bench/fidelity.py writes as fidelity.json."""
    from pspc.record import versions

    record = {
        "command": list(command) if command is not None else [sys.executable, *sys.argv],
        "configuration": options.configuration(out),
        "training_set": study.training_set.describe(), "test_set": study.test_set.describe(),
        "network": study.network.describe(), "sensitivity": study.sensitivity.describe(), "states": states,
        "schedule_file": str(schedule_file) if schedule_file else None,
        "versions": versions("pspc-auditor", "numba", "matplotlib"), "machine": _machine(device),
        "timings_s": timings,
    }
    matrix, tuned = study.matrix, study.tuned
    return {"record": record, "curves": {p: c.to_dict() for p, c in study.curves.items()},
            "concentration": study.concentration.to_dict(),
            "similarity": matrix.to_dict(include_scores=True) if matrix is not None else None,
            "similarity_to_network": similarity_to_network,
            "tuned_schedule": tuned.rows() if tuned else None,
            "findings": verdict(study.curves, similarity_to_network)}


def run_study(options: StudyOptions, *, out: Path | None = None, command: Sequence[str] | None = None,
              log: Callable[[str], None] | None = None, show: Callable[[str], None] | None = None) -> Study:
    """Run the study of `options` (resolved here: StudyOptions.resolved()).

    out: folder for the tuned schedule (schedule.json; created), kept in the record's
    configuration. With tune and no `out`, the schedule file is temporary (the record's
    schedule_file is then None; the tuned rows are in the result either way). command: the
    record's command (default: this process's argv). log: progress lines; show: each table
    (text) as soon as it is computed."""
    import torch

    from pspc.data.loaders import load_training_set
    from pspc.evaluation.fidelity import (
        compare_denoisers, concentration_table, forward_process_states, reverse_process_states
    )
    from pspc.posterior.sensitivity import SensitivityMaps
    from pspc.networks import load_network
    from pspc.samplers import SamplerConfig

    options = options.resolved()
    log, show = log or (lambda message: None), show or (lambda text: None)
    path = network_path(options)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
    _set_threads(options.threads)
    phase, device = _Phases(log), torch.device(options.device)
    with phase("load"):
        training_set = load_training_set(options.data, limit=options.limit).with_xflip(not options.no_xflip)
        test_set = load_training_set(options.test_data)
        network = load_network(path, training_set, device=device)
    log(f"training set {training_set.name}: {len(training_set)} images ({training_set.num_entries} entries), "
        f"network {path.name} sha256 {network.record.get('sha256', '?')[:12]}")
    with phase("sensitivity"):  # 1. Sensitivity (Eq. 8) and gradient concentration (Fig. 3)
        sensitivity = SensitivityMaps(network, test_set, options.sensitivity_samples, options.seed, grid=options.grid)
        concentration = concentration_table(sensitivity, options.grid)
    show(concentration.table())
    with phase("states"):  # 2. States and errors against the network
        config = SamplerConfig(method="euler", num_steps=options.steps)
        forward = forward_process_states(network, test_set, options.times, options.test_images, options.seed,
                                         options.batch)
        reverse = reverse_process_states(network, options.samples, options.seed, config)
    with contextlib.ExitStack() as scratch:
        schedule_file, tuned = options.schedule, None
        if options.tune:
            folder = out if out is not None else Path(scratch.enter_context(tempfile.TemporaryDirectory()))
            with phase("tuning"):
                tuned, schedule_file = _tune(network, config, sensitivity, training_set, test_set, options, device,
                                             path, folder)
            show(tuned.table())
        denoisers = _denoisers(training_set, sensitivity, options, device, schedule_file if tuned else None)
        with phase("errors"):
            curves = compare_denoisers(denoisers, [forward, reverse], options.batch)
        for c in curves.values():
            show(c.table())
        matrix, sets, similarity_to_network = None, None, None
        if not options.no_sampling:  # 3. Samples from shared noise and their similarity to the network's
            with phase("sampling"):
                matrix, sets, similarity_to_network = _sample_similarity(denoisers, reverse.final, training_set,
                                                                         config, options, log)
            show(matrix.summary())
        if out is None and tuned is not None:
            schedule_file = None  # the temporary file is gone with the scratch folder
    study = Study({}, curves, concentration, sensitivity, matrix, sets, tuned, network, path, training_set, test_set)
    study.result = _result(study, options, out, command, {"forward": forward.record, "reverse": reverse.record},
                           schedule_file, device, phase.total(), similarity_to_network)
    return study


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


