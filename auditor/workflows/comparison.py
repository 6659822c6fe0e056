"""Network comparisons: a network and PSPC sampling from shared noise, with PSPC's posterior
weights on every state of the network's trajectory as the network sample's attribution.

`record_comparison` writes, in the provenance store:

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
   auditor.workflows.sampling.record_sampling_run (kind 'pspc', every step recorded); denoisers without
   posterior weights (gaussian, cfdm) as 'samples-only' runs (final images only);
4. similarity_scores: descriptor similarity of sample i of every pair of runs (the paper's
   Fig. 9), and copy_matches: the nearest training images of every sample, each score with
   the descriptor's name, preprocessing and thresholds;
5. the comparison 'complete'. A failure marks the run in progress 'failed' (auditor.workflows.sampling)
   and the comparison 'failed' with the error, and re-raises.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import torch

from pspc.denoisers import DENOISER_KINDS, Denoiser, NetworkDenoiser, build_denoiser
from pspc.evaluation.fidelity import SensitivityMaps, network_flex
from pspc.posterior.weights import WeightRequest
from pspc.samplers import SamplerConfig, _denoise, initial_noise, sample
from pspc.schedules import Schedule, read_schedule_file
from pspc.data.training_set import TrainingSet

from auditor.store import database, datasets, schema as models
from auditor.similarity.copy_detection import (
    DEFAULT_THRESHOLDS, CopyDetectionIndex, check_thresholds, flag, similarity_matrix
)
from auditor.store.database import NotFoundError, StoreError, json_value
from auditor.similarity.descriptors import Descriptor, load_descriptor
from auditor.store.recorder import ProvenanceRecorder, _blobs, _insert, from_blob, utcnow
from auditor.workflows.sampling import (
    RECORDABLE_KINDS, _advance, _error_text, _mark_failed, _sampler_record, create_run, record_sampling_run,
    versions
)

__all__ = ["ComparisonResult", "ExplainedRecorder", "agreement_table", "build_pspc", "comparison_summary",
           "explain_trajectory", "schedule_kinds",
           "load_comparison_network", "network_fingerprint", "record_comparison", "record_copy_matches",
           "record_explained_run", "record_similarities", "register_descriptor", "register_network",
           "run_final_images", "sample_counterpart"]

NETWORK_ROLE = "network"


# ---------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------
def _module_sha256(module: torch.nn.Module) -> str:
    """sha256 of an in-memory module: its class and every tensor (name, dtype, shape, bytes)."""
    digest = hashlib.sha256(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    for name, tensor in sorted(module.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def network_fingerprint(network: NetworkDenoiser) -> tuple[str, str]:
    """(fingerprint, sha256): sha256 of the file (or of an in-memory module's tensors), and
    the fingerprint over it, the image shape and any conversion (a VP epsilon-prediction
    model's timestep rule): what determines the network's D(z, t)."""
    record = network.record or {}
    sha256 = record.get("sha256") or _module_sha256(network.net)
    identity = {"sha256": sha256, "image_shape": list(network.image_shape),
                **{k: record[k] for k in ("conversion", "timestep", "schedule_steps") if k in record}}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest(), sha256


def load_comparison_network(network, training_set: TrainingSet, device="cpu") -> NetworkDenoiser:
    """A NetworkDenoiser from a NetworkDenoiser, an nn.Module with net(z, sigma) or a path
    (pspc.networks.unet.load_network: checked against the training set's shape)."""
    from pspc.networks.unet import load_network

    if isinstance(network, NetworkDenoiser):
        if tuple(network.image_shape) != tuple(training_set.image_shape):
            raise ValueError(f"the network takes images {tuple(network.image_shape)}, the training set has "
                             f"{tuple(training_set.image_shape)}")
        return network.to(device)
    return load_network(network, training_set, device=device)


def register_network(db_path, network: NetworkDenoiser, *, timeout: float = database.DEFAULT_TIMEOUT) -> int:
    """The network's id in the store (table networks), inserting it if new (by fingerprint)."""
    fingerprint, sha256 = network_fingerprint(network)
    record = network.describe()
    c, h, w = network.image_shape
    with database.connect(db_path, timeout=timeout) as conn:
        found = conn.execute("SELECT id FROM networks WHERE fingerprint = ?", [fingerprint]).fetchone()
        if found:
            return int(found[0])
        return int(conn.execute(
            "INSERT INTO networks (fingerprint, sha256, name, kind, source, channels, height, width, config, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            [fingerprint, sha256, network.name, (network.record or {}).get("kind", "module"),
             (network.record or {}).get("path"), c, h, w, json.dumps(record, default=str), utcnow()]).fetchone()[0])


# ---------------------------------------------------------------------------------------
# Network-explained runs
# ---------------------------------------------------------------------------------------
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
        raise ValueError(f"a recorded denoiser must give posterior weights ({', '.join(RECORDABLE_KINDS)}), got {kind!r}")
    if schedule is not None and kind == "empirical":
        raise ValueError("a schedule file applies to pspc-square and pspc-flex, not empirical")
    if kind == "pspc-flex" and network is not None:
        if patch_size is not None:
            raise ValueError("--patch-size applies to pspc-square, not pspc-flex")
        if sensitivity_draws < 1:
            raise ValueError(f"sensitivity_draws must be >= 1, got {sensitivity_draws}")
        _, height, width = training_set.image_shape
        lambdas = Schedule.load(schedule, "lambda", (height, width)) if schedule is not None else None
        sensitivity = SensitivityMaps(network, training_set, sensitivity_draws, seed)
        return network_flex(training_set, sensitivity, lambdas)
    return build_denoiser(kind, training_set, patch_size=patch_size, schedule=schedule)


class ExplainedRecorder(ProvenanceRecorder):
    """A ProvenanceRecorder that also writes, in each step's transaction, the network's
    D(z_t) and its distance to PSPC's (step_agreement), staged with `stage` before the step
    is recorded. The final images are `final` when given (an audit: the audited image),
    else the network's output at the last step (the network's sample); `complete_details`
    (network final images -> dict) updates runs.details in the completing transaction."""

    def __init__(self, *args, final: torch.Tensor | None = None,
                 complete_details: Callable[[torch.Tensor], dict] | None = None, details: dict | None = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.final = final
        self.complete_details = complete_details
        self.details = dict(details or {})
        self._staged: tuple[int, pa.Table] | None = None
        self._network_last: torch.Tensor | None = None

    def stage(self, step: int, t: float, network_denoised: torch.Tensor, pspc_denoised: torch.Tensor) -> None:
        """The step's agreement rows: mse and max |error| over pixels, computed in float64."""
        diff = network_denoised.detach().cpu().to(torch.float64) - pspc_denoised.detach().cpu().to(torch.float64)
        batch = diff.shape[0]
        self._staged = (int(step), pa.table({
            "run_id": np.full(batch, self.run_id, np.int64),
            "sample_index": np.arange(batch, dtype=np.int32),
            "step": np.full(batch, step, np.int16),
            "t": np.full(batch, float(t)),
            "network_denoised": _blobs(network_denoised),
            "mse": diff.square().flatten(1).mean(1).numpy(),
            "max_abs_error": diff.abs().flatten(1).amax(1).numpy(),
        }))
        self._network_last = network_denoised.detach()

    def _write_extras(self, conn, step: int) -> None:
        if self._staged is None:
            return
        staged_step, rows = self._staged
        if staged_step != step:
            raise ValueError(f"agreement staged for step {staged_step}, recording step {step}")
        _insert(conn, "step_agreement", rows)
        self._staged = None

    def _complete(self, conn, final: torch.Tensor, started: float) -> None:
        if self.final is not None:
            final = self.final
        elif self._network_last is not None:
            final = self._network_last
        if self.complete_details is not None:
            self.details.update(self.complete_details(self._network_last))
            conn.execute("UPDATE runs SET details = ? WHERE id = ?", [json.dumps(self.details), self.run_id])
        super()._complete(conn, final, started)


def explain_trajectory(network: NetworkDenoiser, explainer, z: torch.Tensor, config: SamplerConfig,
                       recorder: ExplainedRecorder, request: WeightRequest,
                       progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Integrate the network's PF-ODE from z at t_0 (pspc.samplers.sample's arithmetic, with
    the network as denoiser) and record at every step PSPC's posterior on the network's z_t
    and the agreement of the two denoisers. Returns the network's final sample."""
    times = config.time_steps().tolist()
    z = z.to(network.device)
    for step, (t, t_next) in enumerate(zip(times[:-1], times[1:])):
        t_batch = torch.full((z.shape[0],), t, dtype=torch.float64, device=z.device)
        network_denoised = network(z, t_batch)
        pspc_denoised, weights = _denoise(explainer, z, t, request)
        recorder.stage(step, t, network_denoised, pspc_denoised)
        recorder(step, t, z, pspc_denoised, weights)
        z = _advance(network, config, z, network_denoised, t, t_next)
        if progress is not None:
            progress(1)
    return z


def record_explained_run(db_path, training_set: TrainingSet, network: NetworkDenoiser, network_id: int,
                         z: torch.Tensor, config: SamplerConfig, *, explainer_kind: str = "pspc-square",
                         patch_size: int | None = None, schedule=None, sensitivity_draws: int = 4, seed: int,
                         top_k: int, mass: float, kind: str, details: dict | None = None, comparison: tuple[int, str] | None = None,
                         final: torch.Tensor | None = None,
                         complete_details: Callable[[torch.Tensor], dict] | None = None,
                         command: list[str] | None = None, progress: Callable[[int], None] | None = None,
                         timeout: float = database.DEFAULT_TIMEOUT) -> int:
    """Record the network's trajectory from z (batch row i = sample i) with PSPC attribution
    at every step (kind 'network-explained', or 'external-audit' for a replay); returns the
    run id. Same lifecycle as a PSPC run: 'running', one transaction per step, the last one
    completes it; any exception marks it 'failed' and is re-raised. The explainer is
    `build_pspc(explainer_kind, ...)`: pspc-flex takes its masks from this network."""
    request = WeightRequest(top_k=top_k, mass=mass)
    explainer = build_pspc(explainer_kind, training_set, network, patch_size=patch_size, schedule=schedule,
                           sensitivity_draws=sensitivity_draws, seed=seed).to(network.device)
    dataset_id, _ = datasets.ingest(db_path, training_set, timeout=timeout)
    run_id = create_run(db_path, dataset_id, denoiser=explainer.describe(), sampler=_sampler_record(config),
                        seed=seed, num_samples=z.shape[0], top_k=top_k, mass=mass, command=command, kind=kind,
                        network_id=network_id, details=details, comparison=comparison, timeout=timeout)
    try:
        recorder = ExplainedRecorder(db_path, run_id, len(training_set), config.time_steps().tolist(),
                                     timeout=timeout, final=final, complete_details=complete_details,
                                     details=details)
        explain_trajectory(network, explainer, z, config, recorder, request, progress)
    except BaseException as exc:
        _mark_failed(db_path, run_id, exc, timeout)
        raise
    return run_id


def _record_samples_only(db_path, training_set: TrainingSet, kind: str, config: SamplerConfig, *, seed: int,
                         num_samples: int, top_k: int, mass: float, comparison: tuple[int, str], device,
                         command, progress, timeout: float) -> int:
    """A denoiser without posterior weights (gaussian, cfdm): its samples from the shared
    noise, stored as a 'samples-only' run (final images, no steps)."""
    dataset_id, _ = datasets.ingest(db_path, training_set, timeout=timeout)
    denoiser = build_denoiser(kind, training_set, seed=seed).to(device)
    run_id = create_run(db_path, dataset_id, denoiser=denoiser.describe(), sampler=_sampler_record(config), seed=seed,
                        num_samples=num_samples, top_k=top_k, mass=mass, command=command, kind="samples-only",
                        details={"comparison_id": comparison[0], "role": comparison[1],
                                 "note": "no posterior weights: final images only"},
                        comparison=comparison, timeout=timeout)
    started = time.perf_counter()
    try:
        z = initial_noise(num_samples, training_set.image_shape, seed, config.t_max, device)
        final = sample(denoiser, z, config, progress=progress)
        images = pa.table({"sample_index": np.arange(num_samples, dtype=np.int32), "final_image": _blobs(final)})
        with database.connect(db_path, timeout=timeout) as conn:
            conn.register("_arrow_final", images)
            try:
                conn.execute("UPDATE samples SET final_image = f.final_image FROM _arrow_final AS f "
                             "WHERE samples.run_id = ? AND samples.sample_index = f.sample_index", [run_id])
            finally:
                conn.unregister("_arrow_final")
            total = time.perf_counter() - started
            conn.execute("UPDATE runs SET status = 'complete', finished_at = ?, timings = ?, error = NULL "
                         "WHERE id = ? AND status = 'running'",
                         [utcnow(), json.dumps({"total": total, "sampling": total, "recording": 0.0}), run_id])
    except BaseException as exc:
        _mark_failed(db_path, run_id, exc, timeout)
        raise
    return run_id


# ---------------------------------------------------------------------------------------
# Stored samples: similarity and copy detection
# ---------------------------------------------------------------------------------------
def register_descriptor(conn, descriptor: Descriptor) -> str:
    """Insert the descriptor's record (if new) inside an open transaction; returns its fingerprint."""
    record = descriptor.describe()
    fingerprint = record["fingerprint"]
    if not conn.execute("SELECT 1 FROM descriptors WHERE fingerprint = ?", [fingerprint]).fetchone():
        conn.execute("INSERT INTO descriptors (fingerprint, name, kind, dimension, preprocessing, record, created_at) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?)",
                     [fingerprint, record["name"], record["kind"], int(record["dimension"]),
                      json.dumps(record["preprocessing"], sort_keys=True), json.dumps(record, default=str), utcnow()])
    return fingerprint


def _run_info(conn, db_path, run_id: int) -> dict:
    row = conn.execute("SELECT r.status, r.num_samples, r.seed, r.dataset_id, d.fingerprint, d.channels, d.height, "
                       "d.width, r.kind FROM runs r JOIN datasets d ON d.id = r.dataset_id WHERE r.id = ?",
                       [int(run_id)]).fetchone()
    if row is None:
        raise NotFoundError(f"{db_path}: no run {run_id}")
    keys = ("status", "num_samples", "seed", "dataset_id", "fingerprint", "channels", "height", "width", "kind")
    info = dict(zip(keys, row))
    info["shape"] = (info["channels"], info["height"], info["width"])
    return info


def run_final_images(db_path, run_id: int, *, timeout: float = database.DEFAULT_TIMEOUT) -> torch.Tensor:
    """The final images [B, C, H, W] (float32, [-1, 1] plus overshoot) of a complete run."""
    with database.connect(db_path, read_only=True, timeout=timeout) as conn:
        info = _run_info(conn, db_path, run_id)
        rows = conn.execute("SELECT sample_index, final_image FROM samples WHERE run_id = ? ORDER BY sample_index",
                            [int(run_id)]).fetchall()
    if info["status"] != "complete" or any(blob is None for _, blob in rows):
        raise StoreError(f"{db_path}: run {run_id} is {info['status']}: its final images are not all stored")
    return torch.stack([from_blob(blob, info["shape"]) for _, blob in rows])


def record_similarities(db_path, runs_by_role: dict[str, int], descriptor: Descriptor, *,
                        thresholds: Sequence[float] = DEFAULT_THRESHOLDS, comparison_id: int | None = None,
                        timeout: float = database.DEFAULT_TIMEOUT):
    """Descriptor similarity of sample i of every pair of runs (the paper's Fig. 9), stored in
    similarity_scores (run_a < run_b; a run recorded again with the same descriptor replaces
    its rows). The runs must share the dataset, the number of samples and the seed (the same
    initial noises). Returns the copy_detection.SimilarityMatrix (rows in the roles' order)."""
    thresholds = check_thresholds(thresholds)
    if len(runs_by_role) < 2:
        raise ValueError("similarities need at least two runs")
    with database.connect(db_path, read_only=True, timeout=timeout) as conn:
        infos = {role: _run_info(conn, db_path, run_id) for role, run_id in runs_by_role.items()}
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
    with database.connect(db_path, timeout=timeout) as conn:
        register_descriptor(conn, descriptor)
        for run_a, run_b in {(r[0], r[1]) for r in rows}:
            conn.execute("DELETE FROM similarity_scores WHERE run_a = ? AND run_b = ? AND descriptor_fingerprint = ?",
                         [run_a, run_b, record["fingerprint"]])
        conn.executemany("INSERT INTO similarity_scores (run_a, run_b, sample_index, descriptor_fingerprint, "
                         "comparison_id, descriptor, preprocessing, score, thresholds, flag, flagged) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    return matrix


def record_copy_matches(db_path, run_ids: Sequence[int], training_set: TrainingSet, descriptor: Descriptor, *,
                        k: int = 5, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                        index: CopyDetectionIndex | None = None, samples: dict[int, torch.Tensor] | None = None,
                        timeout: float = database.DEFAULT_TIMEOUT) -> dict[int, "object"]:
    """The k nearest training images of every final image of the runs (auditor.similarity.copy_detection,
    faiss), stored in copy_matches with the descriptor, preprocessing, thresholds and index;
    recording a run again with the same descriptor replaces its rows. The training set must
    be the runs' (same fingerprint). `index`: one built earlier with this descriptor on this
    set; `samples`: run id -> images to use instead of the stored final images. Returns
    run id -> CopyDetectionResult."""
    thresholds = check_thresholds(thresholds)
    if int(k) < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    with database.connect(db_path, read_only=True, timeout=timeout) as conn:
        infos = {run_id: _run_info(conn, db_path, run_id) for run_id in run_ids}
    for run_id, info in infos.items():
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
                  preprocessing, json.dumps(list(thresholds)), m.flag, m.score >= thresholds[0], search)
                 for m in result.matches]
    with database.connect(db_path, timeout=timeout) as conn:
        register_descriptor(conn, descriptor)
        for run_id in run_ids:
            conn.execute("DELETE FROM copy_matches WHERE run_id = ? AND descriptor_fingerprint = ?",
                         [run_id, record["fingerprint"]])
        if rows:
            conn.executemany("INSERT INTO copy_matches (run_id, sample_index, descriptor_fingerprint, rank, "
                             "image_index, flip, score, descriptor, preprocessing, thresholds, flag, flagged, search) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
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


def _check_denoisers(denoisers: Sequence[str]) -> list[str]:
    kinds = [str(d).strip() for d in denoisers]
    unknown = [d for d in kinds if d not in DENOISER_KINDS]
    if unknown:
        raise ValueError(f"unknown denoiser(s) {unknown}; choose from {', '.join(DENOISER_KINDS)}")
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"denoisers repeat: {kinds}")
    return kinds


def _set_comparison_status(db_path, comparison_id: int, status: str, timeout: float, error: str | None = None):
    with database.connect(db_path, timeout=timeout) as conn:
        conn.execute("UPDATE comparisons SET status = ?, finished_at = ?, error = ? "
                     "WHERE id = ? AND status = 'running'", [status, utcnow(), error, comparison_id])


def record_comparison(db_path, training_set: TrainingSet, network, *, num_samples: int = 16, steps: int = 18,
                      seed: int = 0, sampler: str = "euler", top_k: int = 16, mass: float = 0.99,
                      denoisers: Sequence[str] = ("pspc-square",), explainer: str = "pspc-square",
                      patch_size: int | None = None, schedule=None, sensitivity_draws: int = 4,
                      descriptor: Descriptor | str | None = None,
                      thresholds: Sequence[float] = DEFAULT_THRESHOLDS, copy_k: int = 5,
                      command: list[str] | None = None, progress: Callable[[int], None] | None = None,
                      device: str | torch.device = "cpu",
                      timeout: float = database.DEFAULT_TIMEOUT) -> ComparisonResult:
    """Compare `network` with PSPC (and `denoisers`) from shared initial noise; see the module
    docstring. network: a NetworkDenoiser, an nn.Module with net(z, sigma) or a network file
    (pspc.networks.unet.load_network). explainer (and patch_size): the PSPC denoiser whose
    posterior on the network's z_t is recorded as the network sample's attribution.
    schedule (a tuned schedule file) and sensitivity_draws go to `build_pspc` for the
    explainer and the PSPC runs: pspc-flex takes its masks from the network's Eq. 8 maps.
    descriptor: an auditor.similarity.descriptors spec or Descriptor (None: SSCD when configured, else
    the pixel-correlation fallback); copy_k = 0 skips copy detection. progress(1) after
    every sampling step of every run. Everything is validated before anything is written."""
    if num_samples < 1 or steps < 1:
        raise ValueError(f"need num_samples >= 1 and steps >= 1, got {num_samples} and {steps}")
    if copy_k < 0:
        raise ValueError(f"copy_k must be >= 0, got {copy_k}")
    kinds = _check_denoisers(denoisers)
    if not kinds:
        raise ValueError("name at least one denoiser to compare the network with")
    if explainer not in RECORDABLE_KINDS:
        raise ValueError(f"the explaining denoiser must give posterior weights ({', '.join(RECORDABLE_KINDS)}), "
                         f"got {explainer!r}")
    WeightRequest(top_k=top_k, mass=mass)  # validates
    thresholds = check_thresholds(thresholds)
    config = SamplerConfig(method=sampler, num_steps=steps)
    database.require_current(db_path, timeout)
    network = load_comparison_network(network, training_set, device)
    descriptor = load_descriptor(descriptor, device=device)
    dataset_id, _ = datasets.ingest(db_path, training_set, timeout=timeout)
    network_id = register_network(db_path, network, timeout=timeout)
    scheduled = schedule_kinds(schedule, training_set)  # a bad file fails before anything is written
    if schedule is not None and explainer not in scheduled:
        raise ValueError(f"{schedule}: the schedule file has no {SCHEDULED_QUANTITY.get(explainer, 'column')!r} "
                         f"for the explainer {explainer}")
    settings = {"denoisers": kinds, "explainer": {"kind": explainer, "patch_size": patch_size},
                "schedule": str(schedule) if schedule is not None else None, "sensitivity_draws": sensitivity_draws,
                "top_k": top_k,
                "mass": mass, "descriptor": descriptor.describe(), "thresholds": list(thresholds), "copy_k": copy_k,
                "xflip": training_set.xflip}
    with database.session(db_path, timeout=timeout) as s:
        comparison = models.Comparison(dataset_id=dataset_id, network_id=network_id, status="running", seed=seed,
                                       num_samples=num_samples, sampler=_sampler_record(config), config=settings,
                                       versions=versions(), command=list(command) if command else None,
                                       created_at=utcnow())
        s.add(comparison)
        s.flush()
        comparison_id = int(comparison.id)
    try:
        z = initial_noise(num_samples, training_set.image_shape, seed, config.t_max, device)
        details = {"comparison_id": comparison_id, "role": NETWORK_ROLE,
                   "network": {"id": network_id, "name": network.name},
                   "explained_by": explainer,
                   "note": "steps.z is the network's z_t; steps.denoised is PSPC's D(z_t), which the stored weights "
                           "compose; the network's D(z_t) is in step_agreement; the final image is the network's"}
        network_run = record_explained_run(
            db_path, training_set, network, network_id, z, config, explainer_kind=explainer, patch_size=patch_size,
            schedule=schedule, sensitivity_draws=sensitivity_draws, seed=seed, top_k=top_k, mass=mass,
            kind="network-explained", details=details,
            comparison=(comparison_id, NETWORK_ROLE), command=command, progress=progress, timeout=timeout)
        run_ids = {NETWORK_ROLE: network_run}
        for kind in kinds:
            if kind in RECORDABLE_KINDS:
                denoiser = build_pspc(kind, training_set, network, patch_size=patch_size if kind == "pspc-square"
                                      else None, schedule=schedule if kind in scheduled else None,
                                      sensitivity_draws=sensitivity_draws, seed=seed)
                run_ids[kind] = record_sampling_run(
                    db_path, training_set, denoiser_kind=kind, denoiser=denoiser,
                    num_samples=num_samples, steps=steps, sampler=sampler, seed=seed, top_k=top_k, mass=mass,
                    command=command, progress=progress, device=device, timeout=timeout,
                    run_options={"comparison": (comparison_id, kind),
                                 "details": {"comparison_id": comparison_id, "role": kind}})
            else:
                run_ids[kind] = _record_samples_only(
                    db_path, training_set, kind, config, seed=seed, num_samples=num_samples, top_k=top_k, mass=mass,
                    comparison=(comparison_id, kind), device=device, command=command, progress=progress,
                    timeout=timeout)
        similarity = record_similarities(db_path, run_ids, descriptor, thresholds=thresholds,
                                         comparison_id=comparison_id, timeout=timeout)
        copies = {}
        if copy_k:
            copies = record_copy_matches(db_path, list(run_ids.values()), training_set, descriptor, k=copy_k,
                                         thresholds=thresholds, timeout=timeout)
        _set_comparison_status(db_path, comparison_id, "complete", timeout)
    except BaseException as exc:
        try:
            _set_comparison_status(db_path, comparison_id, "failed", timeout, _error_text(exc))
        except Exception as inner:  # noqa: BLE001 - the original error matters more
            exc.add_note(f"(could not mark comparison {comparison_id} failed: {inner})")
        raise
    return ComparisonResult(comparison_id, network_id, network_run, run_ids,
                            agreement_table(db_path, network_run, timeout=timeout), similarity, copies)


# ---------------------------------------------------------------------------------------
# Reading it back
# ---------------------------------------------------------------------------------------
def agreement_table(db_path, run_id: int, *, timeout: float = database.DEFAULT_TIMEOUT) -> list[dict]:
    """Per step of a network-explained (or audit replay) run: t, the mean and largest MSE
    between the network's and PSPC's D(z_t) over samples, the largest |error|, and the mean
    captured posterior mass of the stored weights."""
    with database.connect(db_path, read_only=True, timeout=timeout) as conn:
        _run_info(conn, db_path, run_id)
        rows = conn.execute("""
            SELECT a.step, a.t, avg(a.mse), max(a.mse), max(a.max_abs_error), avg(m.mass)
            FROM step_agreement a
            LEFT JOIN (SELECT sample_index, step, avg(mass) AS mass FROM patch_stats WHERE run_id = ?
                       GROUP BY sample_index, step) m ON m.sample_index = a.sample_index AND m.step = a.step
            WHERE a.run_id = ?
            GROUP BY a.step, a.t ORDER BY a.step""", [int(run_id), int(run_id)]).fetchall()
    keys = ("step", "t", "mse", "max_mse", "max_abs_error", "mass")
    return [dict(zip(keys, r)) for r in rows]


def comparison_summary(db_path, comparison_id: int, *, timeout: float = database.DEFAULT_TIMEOUT) -> dict:
    """A comparison as stored: its row, network, runs by role (status, kind), mean similarity
    per pair and descriptor, and the flagged copy matches per run."""
    with database.connect(db_path, read_only=True, timeout=timeout) as conn:
        row = conn.execute("SELECT id, dataset_id, network_id, status, seed, num_samples, sampler, config, created_at, "
                           "finished_at, error FROM comparisons WHERE id = ?", [int(comparison_id)]).fetchone()
        if row is None:
            raise NotFoundError(f"{db_path}: no comparison {comparison_id}")
        keys = ("id", "dataset_id", "network_id", "status", "seed", "num_samples", "sampler", "config", "created_at",
                "finished_at", "error")
        summary = dict(zip(keys, row))
        summary["sampler"], summary["config"] = json_value(summary["sampler"]), json_value(summary["config"])
        net = conn.execute("SELECT id, name, kind, sha256, source FROM networks WHERE id = ?",
                           [summary["network_id"]]).fetchone()
        summary["network"] = dict(zip(("id", "name", "kind", "sha256", "source"), net))
        summary["runs"] = {role: {"run_id": run_id, "status": status, "kind": kind}
                           for role, run_id, status, kind in conn.execute(
                               "SELECT c.role, c.run_id, r.status, r.kind FROM comparison_runs c JOIN runs r "
                               "ON r.id = c.run_id WHERE c.comparison_id = ? ORDER BY c.run_id",
                               [int(comparison_id)]).fetchall()}
        summary["similarity"] = [dict(zip(("run_a", "run_b", "descriptor", "mean", "min", "max", "flagged", "count",
                                           "thresholds"), r)) for r in conn.execute("""
            SELECT run_a, run_b, descriptor, avg(score), min(score), max(score), count(*) FILTER (WHERE flagged),
                   count(*), any_value(thresholds)
            FROM similarity_scores WHERE comparison_id = ?
            GROUP BY run_a, run_b, descriptor ORDER BY run_a, run_b""", [int(comparison_id)]).fetchall()]
        run_ids = [r["run_id"] for r in summary["runs"].values()]
        summary["copies"] = []
        if run_ids:
            summary["copies"] = [dict(zip(("run_id", "sample_index", "image_index", "image_id", "flip", "score",
                                           "flag", "descriptor"), r)) for r in conn.execute(f"""
                SELECT m.run_id, m.sample_index, m.image_index, i.image_id, m.flip, m.score, m.flag, m.descriptor
                FROM copy_matches m JOIN runs r ON r.id = m.run_id
                JOIN training_images i ON i.dataset_id = r.dataset_id AND i.image_index = m.image_index
                WHERE m.run_id IN ({", ".join("?" * len(run_ids))}) AND m.rank = 0
                ORDER BY m.run_id, m.sample_index""", run_ids).fetchall()]
    for pair in summary["similarity"]:
        pair["thresholds"] = json_value(pair["thresholds"])
    return summary


def sample_counterpart(db_path, run_id: int, sample_index: int, *,
                       timeout: float = database.DEFAULT_TIMEOUT) -> dict | None:
    """For a sample of a run that belongs to a comparison: its counterpart from the same noise
    (the network's sample for a denoiser run; the first PSPC run's for the network run), with
    the network record, the counterpart image (float32 [C, H, W], None until stored), the
    similarity rows of the pair (one per descriptor: score, descriptor, preprocessing,
    thresholds, flag) and the network run's per-step agreement for this sample. None when the
    run is in no comparison. What a sample report's network section shows."""
    with database.connect(db_path, read_only=True, timeout=timeout) as conn:
        info = _run_info(conn, db_path, run_id)
        if not 0 <= int(sample_index) < info["num_samples"]:
            raise NotFoundError(f"{db_path}: run {run_id} has no sample {sample_index}")
        link = conn.execute("SELECT comparison_id, role FROM comparison_runs WHERE run_id = ?",
                            [int(run_id)]).fetchone()
        if link is None:
            return None
        comparison_id, role = link
        members = conn.execute("SELECT c.role, c.run_id, r.kind FROM comparison_runs c JOIN runs r ON r.id = c.run_id "
                               "WHERE c.comparison_id = ? ORDER BY c.run_id", [comparison_id]).fetchall()
        network_run = next((r for role_, r, _ in members if role_ == NETWORK_ROLE), None)
        if role == NETWORK_ROLE:
            others = [m for m in members if m[0] != NETWORK_ROLE]
            preferred = [m for m in others if m[2] == "pspc"] or others
            if not preferred:
                return None
            other_role, other_run = preferred[0][0], preferred[0][1]
        else:
            other_role, other_run = NETWORK_ROLE, network_run
        net = conn.execute("SELECT n.id, n.name, n.kind, n.sha256, n.source, n.config FROM comparisons c "
                           "JOIN networks n ON n.id = c.network_id WHERE c.id = ?", [comparison_id]).fetchone()
        image = conn.execute("SELECT final_image FROM samples WHERE run_id = ? AND sample_index = ?",
                             [other_run, int(sample_index)]).fetchone()
        scores = conn.execute("""
            SELECT s.score, s.descriptor, s.descriptor_fingerprint, s.preprocessing, s.thresholds, s.flag, s.flagged,
                   d.record
            FROM similarity_scores s JOIN descriptors d ON d.fingerprint = s.descriptor_fingerprint
            WHERE s.run_a = ? AND s.run_b = ? AND s.sample_index = ? ORDER BY s.descriptor""",
                              [min(run_id, other_run), max(run_id, other_run), int(sample_index)]).fetchall()
        steps = conn.execute("SELECT step, t, mse, max_abs_error FROM step_agreement WHERE run_id = ? AND "
                             "sample_index = ? ORDER BY step", [network_run, int(sample_index)]).fetchall()
    return {
        "comparison_id": int(comparison_id), "role": role, "counterpart_run_id": int(other_run),
        "counterpart_role": other_role, "network_run_id": int(network_run),
        "network": {**dict(zip(("id", "name", "kind", "sha256", "source"), net[:5])), "record": json_value(net[5])},
        "image": from_blob(image[0], info["shape"]) if image and image[0] is not None else None,
        "similarity": [{"score": s, "descriptor": d, "descriptor_fingerprint": f, "preprocessing": json_value(p),
                        "thresholds": json_value(th), "flag": fl, "flagged": fd, "descriptor_record": json_value(rec)}
                       for s, d, f, p, th, fl, fd, rec in scores],
        "steps": [{"step": s, "t": t, "mse": m, "max_abs_error": e} for s, t, m, e in steps],
    }
