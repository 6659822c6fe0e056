"""Counterfactuals: what one recorded sample becomes without some training images, exactly.

PSPC's output is a weighted average of training pixels, so "this sample without these
training images" is one more PSPC run with their weights (and their mirrors') exactly zero:
`PSPCDenoiser.without`, a mask over entries (no copy of the data, no retraining, nothing
approximated). The counterfactual uses the parent's own patch sets, rebuilt from the store
(`PatchGeometry.patch_set`), and its own kept-weight settings, so only the removal differs:

- a PSPC sample ('pspc' run) is re-sampled from the same initial noise (seed + sample index)
  with the same sampler ("resample"): the trajectories part where the removal matters;
- a network's sample or an audited image ('network-explained', 'external-audit') is replayed:
  PSPC's posterior on the parent's recorded states z_t with the images removed ("replay":
  the network is not retrained, so its states stay; PSPC's composite of them changes).

The run (kind 'counterfactual', one sample) records every step's weights as any run does; the
transaction that completes it stores the change against the parent (auditor.store.counterfactuals):
the change map, MSE, max |change|, the descriptor similarity of the two images, the first step
whose D(z_t) differs by more than one grey level, and the compute time beside the parent's.
The counterfactual image then gets its copy verdict, compared with the parent's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from pspc.data.training_set import TrainingSet
from pspc.denoisers import PSPCDenoiser
from pspc.posterior.weights import WeightRequest
from pspc.samplers import initial_noise, sample

from auditor.errors import InternalError, StoreError, UserError
from auditor.similarity.calibration import CopyEvidence
from auditor.similarity.descriptors import load_descriptor
from auditor.store import calibrations, database, datasets
from auditor.store.counterfactuals import (CounterfactualRecorder, ParentSample, images_by_ids, images_by_owner,
                                           images_by_uri_prefix, load_counterfactual, load_parent_sample)
from auditor.store.jobs import job_of_this_process
from auditor.store.run_kinds import run_kind
from auditor.store.runs import create_run
from auditor.store.scores import HEADLINE_SCORE, score_sources
from auditor.workflows.options import CounterfactualOptions, Runtime
from auditor.workflows.sampling import fail_run, stored_sampler
from auditor.workflows.verdicts import judge, record_verdicts

__all__ = ["GREY_LEVEL", "CounterfactualResult", "parent_image", "record_counterfactual"]

GREY_LEVEL = 2 / 255  # one 8-bit grey level in the model's [-1, 1] units: what "visibly different" means
MODES = {"pspc": "resample", "network-explained": "replay", "external-audit": "replay"}


@dataclass
class CounterfactualResult:
    """What record_counterfactual wrote: the run, its stored outcome (auditor.store.counterfactuals
    row) and the copy verdicts before (the parent's; None if it has none) and after."""

    run_id: int
    outcome: dict
    verdict_before: dict | None
    verdict_after: dict | None

    @property
    def verdict_changed(self) -> bool | None:
        if self.verdict_before is None or self.verdict_after is None:
            return None
        return self.verdict_before["verdict"] != self.verdict_after["verdict"]


def _mode(run: dict) -> str:
    kind = run.get("kind") or "pspc"
    if kind not in MODES:
        reason = ("it has no posterior weights to re-run" if not run_kind(kind).attributed else
                  "re-run its parent with the union of the removals instead" if kind == "counterfactual" else
                  "this version cannot re-run it")
        raise UserError(f"run {run['id']} is a {run_kind(kind).label} run: {reason}")
    return MODES[kind]


def _training_set(db_path, parent: ParentSample, training_set: TrainingSet | None, timeout: float) -> TrainingSet:
    """The parent's training set (the store's pixels unless given), with its x-flip setting."""
    if training_set is None:
        training_set = datasets.stored_training_set(db_path, parent.run["dataset_id"], timeout=timeout)
    elif training_set.fingerprint != parent.dataset["fingerprint"]:
        raise UserError(f"run {parent.run['id']} was recorded on dataset {parent.run['dataset_id']} (fingerprint "
                        f"{parent.dataset['fingerprint'][:12]}...), not on the given training set "
                        f"({training_set.fingerprint[:12]}...)")
    xflip = (parent.run["denoiser"].get("dataset") or {}).get("xflip", training_set.xflip)
    return training_set.with_xflip(bool(xflip))


def _removed(db_path, parent: ParentSample, options: CounterfactualOptions, count: int, timeout: float) -> np.ndarray:
    """The sorted image indices the options select; UserError when that is none or every image."""
    dataset_id = parent.run["dataset_id"]
    if options.without:
        chosen = images_by_ids(db_path, dataset_id, options.without, timeout=timeout)
    elif options.owner:
        chosen = images_by_owner(db_path, dataset_id, options.owner, timeout=timeout)
    elif options.source_uri_prefix:
        chosen = images_by_uri_prefix(db_path, dataset_id, options.source_uri_prefix, timeout=timeout)
    elif options.top is not None:
        ranked = score_sources(db_path, parent.run["id"], parent.sample_index, score=HEADLINE_SCORE, top=options.top,
                               timeout=timeout)
        chosen = [int(r["image_index"]) for r in ranked]
    else:
        if options.random >= count:
            raise UserError(f"cannot remove {options.random} random images of a training set of {count}: at least "
                            f"one must remain")
        chosen = np.random.default_rng(options.seed).choice(count, options.random, replace=False).tolist()
    removed = np.unique(np.asarray(chosen, dtype=np.int64))
    if removed.size == 0:
        raise UserError(f"the selection removes no training image from sample {parent.run['id']}/{parent.sample_index}")
    if removed.size >= count:
        raise UserError(f"the selection removes all {count} training images: at least one must remain")
    return removed


def _stored_patch_sets(parent: ParentSample):
    """The lookup t -> the parent's patch set at that noise level, rebuilt from the store."""
    ids: dict[float, int] = {}
    for step in parent.steps:
        if ids.setdefault(step.t, step.patch_set_id) != step.patch_set_id:
            raise StoreError(f"run {parent.run['id']}: two patch sets at the same noise level t = {step.t:g}")
    by_t = {t: parent.geometry[ps_id].patch_set() for t, ps_id in ids.items()}

    def patch_set_at(t: float):
        for known, patch_set in by_t.items():
            if abs(known - t) <= 1e-12 * max(1.0, abs(t)):
                return patch_set
        raise InternalError(f"the counterfactual asked for t = {t:g}, at which the parent recorded no step")

    return patch_set_at


def _denoiser(parent: ParentSample, training_set: TrainingSet, removed: np.ndarray, device) -> PSPCDenoiser:
    stored = parent.run["denoiser"]
    full = PSPCDenoiser(training_set, _stored_patch_sets(parent), stored.get("kind", "pspc"),
                        stored.get("schedule") or {})
    return full.without(removed.tolist()).to(device)


class _Changes:
    """The sampler callback around the recorder: each step's change of D(z_t) against the
    parent's, and, before the last step is recorded, the outcome the recorder stores with it."""

    def __init__(self, recorder: CounterfactualRecorder, parent: ParentSample, mode: str, outcome: dict,
                 descriptor, started: float):
        self.recorder, self.parent, self.mode = recorder, parent, mode
        self.outcome, self.descriptor, self.started = outcome, descriptor, started
        self.changes: list[dict] = []
        self.image: torch.Tensor | None = None  # the counterfactual's image, once the last step is met

    def __call__(self, step, t, z, denoised, weights):
        ours = self.parent.steps[len(self.changes)]
        if ours.step != step:
            raise InternalError(f"counterfactual step {step} met parent step {ours.step}")
        diff = denoised[0].detach().cpu().to(torch.float64) - ours.denoised.to(torch.float64)
        self.changes.append({"step": int(step), "t": float(t), "mse": float(diff.square().mean()),
                             "max_abs": float(diff.abs().max())})
        if len(self.changes) == len(self.parent.steps):
            if self.mode == "replay":
                self.recorder.final = denoised.detach()  # the replay's image: PSPC's composite at the last step
                image = denoised[0]
            else:  # the sampler's last update, as the recorder stores it (t_next = 0: D itself)
                image = (z + (ours.t_next - t) * ((z - denoised) / t))[0]
            self.image = image.detach().cpu()
            self.recorder.stage_outcome(self._outcome(self.image, parent_image(self.parent, self.mode)))
        self.recorder(step, t, z, denoised, weights)

    def _outcome(self, image: torch.Tensor, before: torch.Tensor) -> dict:
        change = image.to(torch.float64) - before.to(torch.float64)
        pair = torch.stack([before, image]).to(torch.float32).clamp(-1, 1)
        vectors = self.descriptor(pair)
        diverged = next((c["step"] for c in self.changes if c["max_abs"] > GREY_LEVEL), None)
        compute = time.perf_counter() - self.started - sum(self.recorder.step_seconds)
        return {**self.outcome, "mse": float(change.square().mean()), "max_abs": float(change.abs().max()),
                "similarity": float(vectors[0] @ vectors[1]), "descriptor": self.descriptor.name,
                "diverged_step": diverged, "step_changes": self.changes, "seconds": compute,
                "change_map": change.to(torch.float32).numpy().astype("<f4").tobytes()}


def _parent_seconds(run: dict) -> float | None:
    """The parent's sampling seconds per sample (its batch's time over its samples), when recorded."""
    seconds = (run.get("timings") or {}).get("sampling")
    return float(seconds) / max(1, int(run["num_samples"])) if isinstance(seconds, (int, float)) else None


def record_counterfactual(db_path, run_id: int, sample_index: int, *,
                          options: CounterfactualOptions, runtime: Runtime | None = None,
                          training_set: TrainingSet | None = None,
                          distribute: Callable[[PSPCDenoiser], PSPCDenoiser] | None = None) -> CounterfactualResult:
    """Re-run sample `sample_index` of run `run_id` without the images `options` select; see the
    module docstring. Everything is checked before anything is written: an unknown run, sample,
    image id or owner, a run that is not complete or has no attribution, a removal of no image or
    of every image, a store without the training pixels (give `training_set` to use another copy
    of the same set). Returns the new run's id and stored outcome, and the verdicts. distribute:
    applied to the counterfactual's denoiser (auditor.workflows.distributed: its shard over ranks,
    rank 0 leading; the run's denoiser record then says how it was sharded)."""
    runtime = runtime or Runtime()
    database.require_current(db_path, runtime.timeout)
    parent = load_parent_sample(db_path, run_id, sample_index, timeout=runtime.timeout)
    mode = _mode(parent.run)
    training_set = _training_set(db_path, parent, training_set, runtime.timeout)
    removed = _removed(db_path, parent, options, len(training_set), runtime.timeout)
    denoiser = _denoiser(parent, training_set, removed, runtime.device)
    if distribute is not None:
        denoiser = distribute(denoiser).to(runtime.device)
    descriptor = load_descriptor(options.descriptor)
    run = parent.run
    if mode == "resample":
        config, times = stored_sampler(run)
        z = initial_noise(1, parent.shape, int(run["seed"]) + parent.sample_index, config.t_max, runtime.device)
        if (z[0].cpu() - parent.steps[0].z).abs().max() > 1e-5:
            raise StoreError(f"run {run['id']}: the initial noise this version draws from seed "
                             f"{run['seed'] + parent.sample_index} differs from the recorded one")
    else:
        times = [s.t for s in parent.steps] + [parent.steps[-1].t_next]
    if len(parent.steps) != len(times) - 1:
        raise StoreError(f"sample {run['id']}/{parent.sample_index} has {len(parent.steps)} recorded steps, its "
                         f"sampler {len(times) - 1}")
    details = {"parent_run_id": int(run["id"]), "parent_sample": parent.sample_index, "mode": mode,
               "selector": options.selector(), "removed_count": int(removed.size)}
    recorded = {k: v for k, v in run["denoiser"].items() if k != "distributed"}  # the parent's sharding is not ours
    recorded.update({k: v for k, v in denoiser.describe().items() if k == "distributed"})  # our own, if sharded
    new_id = create_run(db_path, run["dataset_id"], denoiser={**recorded, **_removal_record(denoiser)},
                        sampler=run["sampler"], seed=int(run["seed"]) + (parent.sample_index if mode == "resample"
                                                                          else 0),
                        num_samples=1, top_k=run["top_k"], mass=run["mass_threshold"], command=runtime.command,
                        kind="counterfactual", network_id=run.get("network_id"), details=details,
                        job_id=job_of_this_process(), timeout=runtime.timeout)
    started = time.perf_counter()
    try:
        recorder = CounterfactualRecorder(db_path, new_id, len(training_set), times, timeout=runtime.timeout,
                                          sampling_started=started, removed=removed)
        outcome = {"parent_run_id": int(run["id"]), "parent_sample": parent.sample_index, "mode": mode,
                   "selector": options.selector(), "parent_seconds": _parent_seconds(run)}
        callback = _Changes(recorder, parent, mode, outcome, descriptor, started)
        request = WeightRequest(top_k=int(run["top_k"]), mass=float(run["mass_threshold"]))
        if mode == "resample":
            sample(denoiser, z, config, callback=callback, request=request, progress=runtime.progress, times=times)
        else:
            for step in parent.steps:
                z_t = step.z[None].to(runtime.device)
                denoised, weights = denoiser.posterior(z_t, step.t, request)
                callback(step.step, step.t, z_t, denoised, weights)
                if runtime.progress is not None:
                    runtime.progress(1)
    except BaseException as exc:
        fail_run(db_path, new_id, exc, runtime.timeout)
    return _finish(db_path, new_id, parent, callback.image, training_set, options, runtime)


def _removal_record(denoiser: PSPCDenoiser) -> dict:
    removed = denoiser.describe().get("removed")
    if removed is None:
        raise InternalError("the counterfactual denoiser does not record its removal")
    return {"removed": removed, "patch_sets": "the parent run's, as stored"}


def parent_image(parent: ParentSample, mode: str) -> torch.Tensor:
    """The parent's image a counterfactual is compared with: its final image (resample) or its
    last step's PSPC composite (replay: a network's sample or an audited image is not PSPC's)."""
    return parent.final if mode == "resample" else parent.steps[-1].denoised


def _finish(db_path, new_id: int, parent: ParentSample, image: torch.Tensor, training_set: TrainingSet,
            options: CounterfactualOptions, runtime: Runtime) -> CounterfactualResult:
    """The stored outcome, and the copy verdicts of the counterfactual image (stored as the new
    run's) and of the parent's (its stored one, else judged now with the same evidence)."""
    outcome = load_counterfactual(db_path, new_id, timeout=runtime.timeout)
    if not options.verdict:
        return CounterfactualResult(new_id, outcome, None, None)
    evidence = CopyEvidence(training_set.images, xflip=training_set.xflip)
    dataset_id = parent.run["dataset_id"]
    after = record_verdicts(db_path, training_set, dataset_id, new_id, image[None], evidence=evidence,
                            timeout=runtime.timeout)[0].to_dict()
    before = calibrations.load_verdicts(db_path, parent.run["id"], timeout=runtime.timeout).get(parent.sample_index)
    if before is None:
        before = judge(db_path, training_set, dataset_id, parent_image(parent, outcome["mode"])[None],
                       evidence=evidence, timeout=runtime.timeout)[0].to_dict()
    return CounterfactualResult(new_id, outcome, before, after)
