"""Network comparisons: a network and PSPC sampling from shared noise, with PSPC's posterior
weights on every state of the network's trajectory as the network sample's attribution.

`record_comparison` writes, in the provenance store (auditor.store.comparisons):

1. the network (table networks, by fingerprint) and the comparison, as 'running';
2. the network-explained run (runs.kind 'network-explained', comparison role 'network'):
   the network integrates its own PF-ODE (Euler or Heun) from z_0 = t_max eps
   (pspc.samplers.initial_noise: sample i from seed + i). At every step PSPC's posterior on
   the network's z_t is recorded exactly as a PSPC run's step (steps, patch_weights,
   patch_stats, step_shares: every view and query works on it), with steps.denoised =
   PSPC's D(z_t), which the stored weights compose (Eq. 11); in the same transaction
   step_agreement holds the network's D(z_t) and the MSE and max |error| between the two:
   how far the attribution can be trusted at that step. Its final image is the network's
   sample (the last Euler step returns the network's D(z_t)).
3. one run per denoiser from the same noise: PSPC kinds through
   auditor.workflows.sampling.record_sampling_run (kind 'pspc', every step recorded); denoisers
   without posterior weights (gaussian, cfdm) as 'samples-only' runs (final images only);
4. similarity_scores: descriptor similarity of sample i of every pair of runs (the paper's
   Fig. 9), and copy_matches: the nearest training images of every sample, each score with
   the descriptor's name, preprocessing and thresholds;
5. the comparison 'complete'. A failure marks the run in progress 'failed' and the
   comparison 'failed' with the error, and re-raises.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from pspc.data.training_set import TrainingSet
from pspc.denoisers import Denoiser, NetworkDenoiser, build_denoiser
from pspc.denoisers import network_flex
from pspc.posterior.sensitivity import SensitivityMaps
from pspc.posterior.weights import WeightRequest
from pspc.samplers import SamplerConfig, denoise_step, initial_noise, sample
from pspc.schedules import Schedule, read_schedule_file

from auditor.errors import StoreError, UserError
from auditor.similarity.copy_detection import (
    DEFAULT_THRESHOLDS, CopyDetectionIndex, check_thresholds, flag, similarity_matrix
)
from auditor.similarity.calibration import CopyEvidence
from auditor.similarity.descriptors import Descriptor, load_descriptor
from auditor.store import database, datasets
from auditor.store.comparisons import (
    NETWORK_ROLE, agreement_table, create_comparison, run_final_images, run_infos, set_comparison_status,
    store_copy_matches, store_similarities
)
from auditor.store.networks import register_network
from auditor.store.recorder import ExplainedRecorder
from auditor.store.runs import complete_samples_only, create_run, error_text, mark_failed, versions
from auditor.workflows.options import (
    RECORDABLE_KINDS, ComparisonOptions, ExplainOptions, Runtime, SamplingOptions
)
from auditor.workflows.sampling import record_sampling_run, sampler_record
from auditor.workflows.verdicts import record_verdicts

__all__ = ["ComparisonOptions", "ComparisonResult", "ExplainOptions", "build_pspc", "explain_trajectory",
           "load_comparison_network", "record_comparison", "record_copy_matches", "record_explained_run",
           "record_similarities", "schedule_kinds"]


# ---------------------------------------------------------------------------------------
# The network and its explainer
# ---------------------------------------------------------------------------------------
def load_comparison_network(network, training_set: TrainingSet, device="cpu") -> NetworkDenoiser:
    """A NetworkDenoiser from a NetworkDenoiser, an nn.Module with net(z, sigma) or a path
    (pspc.networks.load_network: checked against the training set's shape)."""
    from pspc.networks import load_network

    if isinstance(network, NetworkDenoiser):
        if tuple(network.image_shape) != tuple(training_set.image_shape):
            raise UserError(f"the network takes images {tuple(network.image_shape)}, the training set has "
                            f"{tuple(training_set.image_shape)}")
        return network.to(device)
    return load_network(network, training_set, device=device)


SCHEDULED_QUANTITY = {"pspc-square": "patch_size", "pspc-flex": "lambda"}


def schedule_kinds(schedule, training_set: TrainingSet) -> set[str]:
    """The PSPC kinds a schedule file gives a schedule for (its patch_size and lambda
    columns), after checking the file against the training set's resolution."""
    if schedule is None:
        return set()
    steps = read_schedule_file(schedule, tuple(training_set.image_shape[1:]))["steps"]
    return {kind for kind, quantity in SCHEDULED_QUANTITY.items() if quantity in steps[0]}


def build_pspc(kind: str, training_set: TrainingSet, network: NetworkDenoiser | None = None, *,
               patch_size: int | None = None, schedule=None, sensitivity_draws: int = 4, seed: int = 0) -> Denoiser:
    """A recordable PSPC denoiser (pspc-square, pspc-flex, empirical) for a comparison or an audit.

    schedule: a schedule file (pspc.evaluation.tuning, e.g. bench/fidelity.py --tune): s(t) for
    pspc-square, lambda(t) for pspc-flex. pspc-flex with a network takes its masks from the
    network's own gradient sensitivity (Eq. 8: mean over `sensitivity_draws` forward-process
    draws from the training set, computed once per noise level where lambda(t) < 1), as the
    paper does; without a network, the isotropic stand-in of pspc.posterior.sensitivity."""
    if kind not in RECORDABLE_KINDS:
        raise UserError(f"a recorded denoiser must give posterior weights ({', '.join(RECORDABLE_KINDS)}), "
                        f"got {kind!r}")
    if schedule is not None and kind == "empirical":
        raise UserError("a schedule file applies to pspc-square and pspc-flex, not empirical")
    if kind == "pspc-flex" and network is not None:
        if patch_size is not None:
            raise UserError("--patch-size applies to pspc-square, not pspc-flex")
        if sensitivity_draws < 1:
            raise UserError(f"sensitivity_draws must be >= 1, got {sensitivity_draws}")
        _, height, width = training_set.image_shape
        lambdas = Schedule.load(schedule, "lambda", (height, width)) if schedule is not None else None
        sensitivity = SensitivityMaps(network, training_set, sensitivity_draws, seed)
        return network_flex(training_set, sensitivity, lambdas)
    return build_denoiser(kind, training_set, patch_size=patch_size, schedule=schedule)


# ---------------------------------------------------------------------------------------
# Network-explained runs
# ---------------------------------------------------------------------------------------
def explain_trajectory(network: NetworkDenoiser, explainer, z: torch.Tensor, config: SamplerConfig,
                       recorder: ExplainedRecorder, request: WeightRequest,
                       progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """The network's PF-ODE from z at t_0 (pspc.samplers.sample, the network as denoiser),
    recording at every step PSPC's posterior on the network's z_t and the agreement of the
    two denoisers. Returns the network's final sample."""

    def explain(step, t, z_t, network_denoised, _):
        pspc_denoised, weights = denoise_step(explainer, z_t, t, request)
        recorder.stage(step, t, network_denoised, pspc_denoised)
        recorder(step, t, z_t, pspc_denoised, weights)

    return sample(network, z, config, callback=explain, progress=progress)


def record_explained_run(db_path, training_set: TrainingSet, network: NetworkDenoiser, z: torch.Tensor, *,
                         network_id: int, config: SamplerConfig, options: ExplainOptions = ExplainOptions(),
                         kind: str = "network-explained", details: dict | None = None,
                         comparison: tuple[int, str] | None = None, final: torch.Tensor | None = None,
                         complete_details: Callable[[torch.Tensor], dict] | None = None,
                         runtime: Runtime = Runtime(), distribute: Callable[[Denoiser], Denoiser] | None = None) -> int:
    """Record the network's trajectory from z (batch row i = sample i) with PSPC attribution
    at every step (kind 'network-explained', or 'external-audit' for a replay); returns the
    run id. Same lifecycle as a PSPC run: 'running', one transaction per step, the last one
    completes it; any exception marks it 'failed' and is re-raised. The explainer is
    `build_pspc(options.explainer, ...)`: pspc-flex takes its masks from this network.
    final / complete_details: see auditor.store.recorder.ExplainedRecorder. distribute: applied
    to the explainer (auditor.workflows.distributed: its shard over ranks, rank 0 leading)."""
    request = WeightRequest(top_k=options.top_k, mass=options.mass)
    explainer = build_pspc(options.explainer, training_set, network, patch_size=options.patch_size,
                           schedule=options.schedule, sensitivity_draws=options.sensitivity_draws,
                           seed=options.seed)
    explainer = (explainer if distribute is None else distribute(explainer)).to(network.device)
    dataset_id, _ = datasets.ingest(db_path, training_set, timeout=runtime.timeout)
    run_id = create_run(db_path, dataset_id, denoiser=explainer.describe(), sampler=sampler_record(config),
                        seed=options.seed, num_samples=z.shape[0], top_k=options.top_k, mass=options.mass,
                        command=runtime.command, kind=kind, network_id=network_id, details=details,
                        comparison=comparison, timeout=runtime.timeout)
    try:
        recorder = ExplainedRecorder(db_path, run_id, len(training_set), config.time_steps().tolist(),
                                     timeout=runtime.timeout, final=final, complete_details=complete_details,
                                     details=details)
        explain_trajectory(network, explainer, z, config, recorder, request, runtime.progress)
    except BaseException as exc:
        mark_failed(db_path, run_id, exc, runtime.timeout)
        raise
    return run_id


def _record_samples_only(db_path, training_set: TrainingSet, kind: str, config: SamplerConfig,
                         options: ComparisonOptions, comparison: tuple[int, str], runtime: Runtime) -> int:
    """A denoiser without posterior weights (gaussian, cfdm): its samples from the shared
    noise, stored as a 'samples-only' run (final images, no steps)."""
    dataset_id, _ = datasets.ingest(db_path, training_set, timeout=runtime.timeout)
    denoiser = build_denoiser(kind, training_set, seed=options.seed).to(runtime.device)
    run_id = create_run(db_path, dataset_id, denoiser=denoiser.describe(), sampler=sampler_record(config),
                        seed=options.seed, num_samples=options.num_samples, top_k=options.top_k, mass=options.mass,
                        command=runtime.command, kind="samples-only",
                        details={"comparison_id": comparison[0], "role": comparison[1],
                                 "note": "no posterior weights: final images only"},
                        comparison=comparison, timeout=runtime.timeout)
    started = time.perf_counter()
    try:
        z = initial_noise(options.num_samples, training_set.image_shape, options.seed, config.t_max, runtime.device)
        final = sample(denoiser, z, config, progress=runtime.progress)
        complete_samples_only(db_path, run_id, final, time.perf_counter() - started, timeout=runtime.timeout)
    except BaseException as exc:
        mark_failed(db_path, run_id, exc, runtime.timeout)
        raise
    return run_id


# ---------------------------------------------------------------------------------------
# Stored samples: similarity and copy detection
# ---------------------------------------------------------------------------------------
def record_similarities(db_path, runs_by_role: dict[str, int], descriptor: Descriptor, *,
                        thresholds: Sequence[float] = DEFAULT_THRESHOLDS, comparison_id: int | None = None,
                        timeout: float = database.DEFAULT_TIMEOUT):
    """Descriptor similarity of sample i of every pair of runs (the paper's Fig. 9), stored in
    similarity_scores (run_a < run_b; a run recorded again with the same descriptor replaces
    its rows). The runs must share the dataset, the number of samples and the seed (the same
    initial noises). Returns the copy_detection.SimilarityMatrix (rows in the roles' order)."""
    thresholds = check_thresholds(thresholds)
    if len(runs_by_role) < 2:
        raise UserError("similarities need at least two runs")
    infos = run_infos(db_path, list(runs_by_role.values()), timeout=timeout)
    keys = {(i["dataset_id"], i["num_samples"], i["seed"]) for i in infos.values()}
    if len(keys) != 1:
        raise StoreError(f"runs {sorted(runs_by_role.values())} did not sample from the same noises "
                         f"(dataset, number of samples, seed differ: {sorted(keys)})")
    images = {role: run_final_images(db_path, run_id, timeout=timeout) for role, run_id in runs_by_role.items()}
    matrix = similarity_matrix(images, descriptor, thresholds)
    record = descriptor.describe()
    preprocessing = json.dumps(record["preprocessing"], sort_keys=True)
    roles = list(runs_by_role)
    rows = []
    for a in range(len(roles)):
        for b in range(a + 1, len(roles)):
            run_a, run_b = runs_by_role[roles[a]], runs_by_role[roles[b]]
            for sample_index in range(matrix.count):
                score = float(matrix.scores[a, b, sample_index])  # symmetric
                rows.append((min(run_a, run_b), max(run_a, run_b), sample_index, record["fingerprint"], comparison_id,
                             record["name"], preprocessing, score, json.dumps(list(thresholds)),
                             flag(score, thresholds), score >= thresholds[0]))
    store_similarities(db_path, record, rows, timeout=timeout)
    return matrix


def record_copy_matches(db_path, run_ids: Sequence[int], training_set: TrainingSet, descriptor: Descriptor, *,
                        k: int = 5, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                        index: CopyDetectionIndex | None = None, samples: dict[int, torch.Tensor] | None = None,
                        timeout: float = database.DEFAULT_TIMEOUT) -> dict[int, object]:
    """The k nearest training images of every final image of the runs (auditor.similarity.copy_detection,
    faiss), stored in copy_matches with the descriptor, preprocessing, thresholds and index;
    recording a run again with the same descriptor replaces its rows. The training set must
    be the runs' (same fingerprint). `index`: one built earlier with this descriptor on this
    set; `samples`: run id -> images to use instead of the stored final images. Returns
    run id -> CopyDetectionResult."""
    thresholds = check_thresholds(thresholds)
    if int(k) < 1:
        raise UserError(f"k must be at least 1, got {k}")
    for run_id, info in run_infos(db_path, run_ids, timeout=timeout).items():
        if info["fingerprint"] != training_set.fingerprint:
            raise StoreError(f"run {run_id} was recorded on dataset {info['dataset_id']} (fingerprint "
                             f"{info['fingerprint'][:12]}...), not on the given training set "
                             f"({training_set.fingerprint[:12]}...)")
    if index is None:
        index = CopyDetectionIndex.build(training_set, descriptor)
    results = {}
    record = descriptor.describe()
    preprocessing = json.dumps(record["preprocessing"], sort_keys=True)
    search = json.dumps({**index.describe()["config"], "num_entries": index.num_entries,
                         "include_flips": index.include_flips})
    rows = []
    for run_id in run_ids:
        images = (samples or {}).get(run_id)
        if images is None:
            images = run_final_images(db_path, run_id, timeout=timeout)
        result = index.detect(images, k=k, thresholds=thresholds, descriptor=descriptor)
        results[run_id] = result
        rows += [(run_id, m.sample, record["fingerprint"], m.rank, m.image_index, m.flip, m.score, record["name"],
                  preprocessing, json.dumps(list(thresholds)), m.flag, m.score >= thresholds[0],
                  search) for m in result.matches]
    store_copy_matches(db_path, record, run_ids, rows, timeout=timeout)
    return results


# ---------------------------------------------------------------------------------------
# The comparison
# ---------------------------------------------------------------------------------------
@dataclass
class ComparisonResult:
    """What record_comparison wrote: ids, and the numbers it printed from."""

    comparison_id: int
    network_id: int
    network_run_id: int
    run_ids: dict[str, int]  # role ('network', 'pspc-square', ...) -> run id
    agreement: list[dict] = field(default_factory=list)  # agreement_table of the network run
    similarity: object | None = None  # copy_detection.SimilarityMatrix
    copies: dict[int, object] = field(default_factory=dict)  # run id -> CopyDetectionResult
    verdicts: dict[int, dict] = field(default_factory=dict)  # run id -> sample index -> similarity.verdict.Verdict


def _network_details(comparison_id: int, network_id: int, network: NetworkDenoiser, explainer: str) -> dict:
    return {"comparison_id": comparison_id, "role": NETWORK_ROLE, "network": {"id": network_id, "name": network.name},
            "explained_by": explainer,
            "note": "steps.z is the network's z_t; steps.denoised is PSPC's D(z_t), which the stored weights "
                    "compose; the network's D(z_t) is in step_agreement; the final image is the network's"}


def _record_runs(db_path, training_set: TrainingSet, network: NetworkDenoiser, network_id: int, comparison_id: int,
                 kinds: list[str], scheduled: set[str], options: ComparisonOptions, runtime: Runtime,
                 distribute: Callable[[Denoiser], Denoiser] | None = None) -> dict[str, int]:
    """The network-explained run, then one run per denoiser from the same noise: role -> run id.
    distribute: applied to every PSPC denoiser (the explainer too); the others run as they are."""
    config = SamplerConfig(method=options.sampler, num_steps=options.steps)
    z = initial_noise(options.num_samples, training_set.image_shape, options.seed, config.t_max, runtime.device)
    run_ids = {NETWORK_ROLE: record_explained_run(
        db_path, training_set, network, z, network_id=network_id, config=config, options=options.explain(),
        details=_network_details(comparison_id, network_id, network, options.explainer),
        comparison=(comparison_id, NETWORK_ROLE), runtime=runtime, distribute=distribute)}
    for kind in kinds:
        if kind not in RECORDABLE_KINDS:
            run_ids[kind] = _record_samples_only(db_path, training_set, kind, config, options, (comparison_id, kind),
                                                 runtime)
            continue
        denoiser = build_pspc(kind, training_set, network,
                              patch_size=options.patch_size if kind == "pspc-square" else None,
                              schedule=options.schedule if kind in scheduled else None,
                              sensitivity_draws=options.sensitivity_draws, seed=options.seed)
        denoiser = denoiser if distribute is None else distribute(denoiser)
        sampling = SamplingOptions(denoiser_kind=kind, num_samples=options.num_samples, steps=options.steps,
                                   sampler=options.sampler, seed=options.seed, top_k=options.top_k, mass=options.mass)
        run_ids[kind] = record_sampling_run(db_path, training_set, options=sampling, runtime=runtime,
                                            denoiser=denoiser, comparison=(comparison_id, kind))
    return run_ids


def record_comparison(db_path, training_set: TrainingSet, network, *, options: ComparisonOptions | None = None,
                      runtime: Runtime | None = None,
                      distribute: Callable[[Denoiser], Denoiser] | None = None) -> ComparisonResult:
    """Compare `network` with PSPC (and `options.denoisers`) from shared initial noise; see the
    module docstring. network: a NetworkDenoiser, an nn.Module with net(z, sigma) or a network
    file (pspc.networks.load_network). options.explainer (and patch_size): the PSPC denoiser
    whose posterior on the network's z_t is recorded as the network sample's attribution.
    schedule (a tuned schedule file) and sensitivity_draws go to `build_pspc` for the
    explainer and the PSPC runs: pspc-flex takes its masks from the network's Eq. 8 maps.
    descriptor: an auditor.similarity.descriptors spec or Descriptor (None: SSCD when
    configured, else the pixel-correlation fallback); copy_k = 0 skips copy detection.
    runtime.progress(1) after every sampling step of every run. Everything is validated
    before anything is written. distribute: applied to every PSPC denoiser built (the
    explainer and the PSPC runs'; auditor.workflows.distributed shards them over ranks)."""
    options, runtime = options or ComparisonOptions(), runtime or Runtime()
    kinds = [str(kind).strip() for kind in options.denoisers]  # the options validated themselves when built
    thresholds = check_thresholds(options.thresholds)
    config = SamplerConfig(method=options.sampler, num_steps=options.steps)
    database.require_current(db_path, runtime.timeout)
    network = load_comparison_network(network, training_set, runtime.device)
    descriptor = load_descriptor(options.descriptor, device=runtime.device)
    dataset_id, _ = datasets.ingest(db_path, training_set, timeout=runtime.timeout)
    network_id = register_network(db_path, network, timeout=runtime.timeout)
    scheduled = schedule_kinds(options.schedule, training_set)  # a bad file fails before any run is written
    if options.schedule is not None and options.explainer not in scheduled:
        raise UserError(f"{options.schedule}: the schedule file has no "
                        f"{SCHEDULED_QUANTITY.get(options.explainer, 'column')!r} for the explainer {options.explainer}")
    recorded = {"denoisers": kinds, "explainer": {"kind": options.explainer, "patch_size": options.patch_size},
                "schedule": str(options.schedule) if options.schedule is not None else None,
                "sensitivity_draws": options.sensitivity_draws, "top_k": options.top_k, "mass": options.mass,
                "descriptor": descriptor.describe(), "thresholds": list(thresholds), "copy_k": options.copy_k,
                "xflip": training_set.xflip}
    comparison_id = create_comparison(db_path, dataset_id=dataset_id, network_id=network_id, seed=options.seed,
                                      num_samples=options.num_samples, sampler=sampler_record(config),
                                      config=recorded, versions=versions(), command=runtime.command,
                                      timeout=runtime.timeout)
    try:
        run_ids = _record_runs(db_path, training_set, network, network_id, comparison_id, kinds, scheduled, options,
                               runtime, distribute)
        similarity = record_similarities(db_path, run_ids, descriptor, thresholds=thresholds,
                                         comparison_id=comparison_id, timeout=runtime.timeout)
        copies = {}
        if options.copy_k:
            copies = record_copy_matches(db_path, list(run_ids.values()), training_set, descriptor, k=options.copy_k,
                                         thresholds=thresholds, timeout=runtime.timeout)
        evidence = CopyEvidence(training_set.images, xflip=training_set.xflip, descriptor=options.verdict_descriptor)
        verdicts = {run_id: record_verdicts(db_path, training_set, dataset_id, run_id,
                                            run_final_images(db_path, run_id, timeout=runtime.timeout),
                                            evidence=evidence, timeout=runtime.timeout)
                    for run_id in run_ids.values()}
        set_comparison_status(db_path, comparison_id, "complete", timeout=runtime.timeout)
    except BaseException as exc:
        try:
            set_comparison_status(db_path, comparison_id, "failed", error_text(exc), timeout=runtime.timeout)
        except Exception as inner:  # noqa: BLE001 - the original error matters more
            exc.add_note(f"(could not mark comparison {comparison_id} failed: {inner})")
        raise
    network_run = run_ids[NETWORK_ROLE]
    return ComparisonResult(comparison_id, network_id, network_run, run_ids,
                            agreement_table(db_path, network_run, timeout=runtime.timeout), similarity, copies,
                            verdicts)
