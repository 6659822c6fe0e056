"""Counterfactuals on the sample report (template partial _counterfactual.html), built from
auditor.store.read_models.counterfactual.SampleCounterfactuals.

- `CounterfactualPanel`: on a counterfactual run's sample page, what it is, where it comes from,
  what was removed, the parent image, the counterfactual image and the change map side by side,
  the stored figures (MSE, max |change|, descriptor similarity, the divergence step with the
  per-step change of D(z_t)), both copy verdicts and the cost. A running or failed
  counterfactual has no stored outcome: the panel says so and shows no figures.
- `CounterfactualList`: on any other sample's page, its counterfactual runs, or how to run one.

Every figure is the stored outcome (auditor.store.counterfactuals) as it is; nothing is
recomputed here but the pictures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import numpy as np

from auditor.store.read_models.counterfactual import (REMOVED_SHOWN, CounterfactualChild, CounterfactualOrigin,
                                                      SampleCounterfactuals)
from auditor.store.run_kinds import run_kind
from reports import maps
from reports.pages.common import MAIN_SIZE, TINY_SIZE, Picture, training_thumbnail
from reports.pages.verdicts import VerdictBadge

__all__ = ["CHANGE_COLORMAP", "GREY_LEVELS_PER_UNIT", "CounterfactualList", "CounterfactualPanel", "CounterfactualRow",
           "RemovedImage", "StepChange", "change_picture", "counterfactual_list", "counterfactual_panel", "mode_sentence"]

CHANGE_COLORMAP = "RdBu_r"  # diverging: blue = darker without the images, white = unchanged, red = brighter
GREY_LEVELS_PER_UNIT = 127.5  # one 8-bit grey level is 2/255 in the model's [-1, 1] units


def mode_sentence(origin: CounterfactualOrigin, removed_count: int | None) -> str:
    """What the counterfactual is, in one sentence."""
    parent = f"sample {origin.parent_run_id}/{origin.parent_sample}"
    count = "some" if removed_count is None else f"{removed_count:,}"
    images = f"{count} training image{'' if removed_count == 1 else 's'}"
    if origin.mode == "replay":
        return (f"{parent} without {images}: the parent's recorded trajectory replayed (its states z_t kept, "
                f"PSPC's composite of them recomputed)")
    return f"{parent} re-run without {images}: same initial noise, denoiser, patch sets and sampler"


@dataclass(kw_only=True)
class RemovedImage:
    """A removed training image, linked to its page: id, owner and a tiny thumbnail."""

    image_index: int
    image_id: str
    owner: str | None = None
    thumbnail: Picture | None = None


@dataclass(kw_only=True)
class StepChange:
    """The change of D(z_t) at one step against the parent's: MSE and max |change| (in [-1, 1]
    units and in 8-bit grey levels); diverged: this is the divergence step."""

    step: int
    t: float
    mse: float
    max_abs: float
    grey_levels: float
    diverged: bool = False


@dataclass(kw_only=True)
class CounterfactualPanel:
    """A counterfactual run's panel. sentence: what it is; how: the selector in words; removed:
    the first REMOVED_SHOWN removed images (removed_more: how many more); parent_image /
    image / change: the two images it compares and their difference (counterfactual - parent,
    through CHANGE_COLORMAP on [-change_range, change_range]; change_colours: the scale's
    colours, low to high; change_note: what the map shows of a colour image); mse, max_abs,
    similarity (by `descriptor`), diverged_step (None: no step changed by more than one grey
    level) and steps (the per-step change of D(z_t)); verdict / parent_verdict: the stored copy
    verdicts (None: not assessed); seconds / parent_seconds: the counterfactual's compute and
    the parent's sampling per sample. missing: why there are no figures (running, failed);
    None when the outcome is there."""

    run_id: int
    status: str
    parent_run_id: int
    parent_sample: int
    mode: str
    sentence: str
    how: str
    selector: dict
    removed_count: int | None
    removed: list[RemovedImage] = field(default_factory=list)
    removed_more: int = 0
    parent_image: Picture | None = None
    parent_label: str = "Parent sample"
    image: Picture | None = None
    change: Picture | None = None
    change_range: float | None = None
    change_colours: list[str] = field(default_factory=list)
    change_note: str | None = None
    mse: float | None = None
    max_abs: float | None = None
    similarity: float | None = None
    descriptor: str | None = None
    diverged_step: int | None = None
    diverged_t: float | None = None
    steps: list[StepChange] = field(default_factory=list)
    verdict: VerdictBadge | None = None
    parent_verdict: VerdictBadge | None = None
    seconds: float | None = None
    parent_seconds: float | None = None
    missing: str | None = None

    @property
    def cost_ratio(self) -> float | None:
        if self.seconds is None or not self.parent_seconds:
            return None
        return self.seconds / self.parent_seconds

    @property
    def max_grey_levels(self) -> float | None:
        """max |change| in 8-bit grey levels."""
        return None if self.max_abs is None else self.max_abs * GREY_LEVELS_PER_UNIT

    @property
    def largest_step_change(self) -> float:
        return max((s.max_abs for s in self.steps), default=0.0)


def change_picture(change: np.ndarray, target: int = MAIN_SIZE, alt: str = "") -> tuple[Picture, float, str | None]:
    """(picture, range, note) of a change map float [C, H, W]: the signed change (the mean over
    the channels of a colour image, which `note` says) through CHANGE_COLORMAP on [-range,
    range], range = the largest |value| shown (one grey level when nothing changed, so an
    unchanged image is all white)."""
    change = np.asarray(change, dtype=np.float64)
    shown = change[0] if change.shape[0] == 1 else change.mean(axis=0)
    note = None if change.shape[0] == 1 else f"mean over the {change.shape[0]} channels"
    largest = float(np.abs(shown).max()) if shown.size else 0.0
    span = largest if largest > 0 else 1.0 / GREY_LEVELS_PER_UNIT
    rgb = maps.colormap(shown, CHANGE_COLORMAP, vmin=-span, vmax=span)
    return Picture.of_rgb(rgb, target, alt), largest, note


def _scale_colours(stops: int = 11) -> list[str]:
    table = maps.colormap_table(CHANGE_COLORMAP)
    return ["#%02x%02x%02x" % tuple(int(v) for v in table[round(k * 255 / (stops - 1))]) for k in range(stops)]


def _missing(run_id: int, status: str) -> str:
    if status == "failed":
        return (f"Run {run_id} failed: a counterfactual's change against its parent is stored only when it "
                "completes, so there are no figures (the error is in the reproducibility record).")
    return (f"Run {run_id} is {status}: a counterfactual's change against its parent is stored when it completes; "
            "no figures until then.")


def counterfactual_panel(found: SampleCounterfactuals, run: dict, dataset: dict, image, *,
                         verdict: VerdictBadge | None, parent_verdict: VerdictBadge | None) -> CounterfactualPanel | None:
    """The panel of a counterfactual run's sample (None for a sample of any other run, or a
    counterfactual whose record names no parent). image: the run's final image (float32
    [C, H, W] or None); verdict / parent_verdict: the badges of its own and the parent's
    stored verdicts (reports.pages.verdicts.verdict_badge)."""
    origin = found.origin
    if origin is None:
        return None
    run_id = int(run["id"])
    outcome = found.outcome
    count = outcome.row["removed_count"] if outcome is not None else origin.removed_count
    panel = CounterfactualPanel(run_id=run_id, status=run["status"], parent_run_id=origin.parent_run_id,
                                parent_sample=origin.parent_sample, mode=origin.mode,
                                sentence=mode_sentence(origin, count), how=origin.how, selector=origin.selector,
                                removed_count=count,
                                parent_label=("Parent: its last step's PSPC composite" if origin.mode == "replay"
                                              else "Parent sample"))
    if outcome is None:
        panel.missing = _missing(run_id, run["status"]) if run["status"] != "complete" else (
            f"Run {run_id} is complete but its change against the parent is not in the store.")
        return panel
    row = outcome.row
    panel.removed = [RemovedImage(image_index=m.image_index, image_id=m.image_id, owner=m.owner,
                                  thumbnail=training_thumbnail(dataset["fingerprint"], m, TINY_SIZE))
                     for m in outcome.removed[:REMOVED_SHOWN]]
    panel.removed_more = max(0, int(count) - len(panel.removed))
    parent = f"sample {origin.parent_run_id}/{origin.parent_sample}"
    if outcome.parent_image is not None:
        panel.parent_image = Picture.of(outcome.parent_image, MAIN_SIZE, f"the parent image ({parent})")
    if image is not None:
        panel.image = Picture.of(image, MAIN_SIZE, f"the counterfactual image of run {run_id}")
    panel.change, panel.change_range, panel.change_note = change_picture(
        row["change_map"], MAIN_SIZE, f"change map: counterfactual minus parent ({parent})")
    panel.change_colours = _scale_colours()
    panel.mse, panel.max_abs, panel.similarity, panel.descriptor = (row["mse"], row["max_abs"], row["similarity"],
                                                                    row["descriptor"])
    panel.diverged_step = row["diverged_step"]
    panel.steps = [StepChange(step=int(c["step"]), t=float(c["t"]), mse=float(c["mse"]), max_abs=float(c["max_abs"]),
                              grey_levels=float(c["max_abs"]) * GREY_LEVELS_PER_UNIT,
                              diverged=int(c["step"]) == row["diverged_step"]) for c in row["step_changes"] or []]
    panel.diverged_t = next((s.t for s in panel.steps if s.diverged), None)
    panel.verdict, panel.parent_verdict = verdict, parent_verdict
    panel.seconds, panel.parent_seconds = row["seconds"], row["parent_seconds"]
    return panel


@dataclass(kw_only=True)
class CounterfactualRow:
    """A counterfactual of the sample: its run and status, how its images were chosen, and the
    stored figures once complete (None before)."""

    run_id: int
    status: str
    mode: str
    how: str
    removed_count: int | None
    mse: float | None = None
    max_abs: float | None = None
    similarity: float | None = None
    descriptor: str | None = None
    diverged_step: int | None = None


@dataclass(kw_only=True)
class CounterfactualList:
    """A sample's counterfactual runs, oldest first. runnable: whether one can be run on it
    (a complete run with posterior weights, not itself a counterfactual); why_not: else, why;
    command / api_body: how to run one (`auditor counterfactual R/S --top 10`, and the body of
    POST /api/jobs/counterfactual)."""

    rows: list[CounterfactualRow]
    runnable: bool
    why_not: str | None
    command: str
    api_body: dict


def _row(child: CounterfactualChild) -> CounterfactualRow:
    row = child.row or {}
    return CounterfactualRow(run_id=child.run_id, status=child.status, mode=child.origin.mode, how=child.origin.how,
                             removed_count=row.get("removed_count", child.origin.removed_count), mse=row.get("mse"),
                             max_abs=row.get("max_abs"), similarity=row.get("similarity"),
                             descriptor=row.get("descriptor"), diverged_step=row.get("diverged_step"))


def counterfactual_list(found: SampleCounterfactuals, run: dict, sample_index: int) -> CounterfactualList | None:
    """The counterfactuals section of a sample that is not itself a counterfactual's (None for one)."""
    kind = run.get("kind") or "pspc"
    if kind == "counterfactual":
        return None
    why_not = None
    if not run_kind(kind).attributed:
        why_not = f"a {run_kind(kind).label} run has no posterior weights to re-run without some images"
    elif run["status"] != "complete":
        why_not = f"run {run['id']} is {run['status']}: a counterfactual re-runs a sample of a complete run"
    run_id = int(run["id"])
    return CounterfactualList(rows=[_row(c) for c in found.children], runnable=why_not is None, why_not=why_not,
                              command=f"auditor counterfactual {run_id}/{int(sample_index)} --top 10",
                              api_body={"dataset_id": int(run["dataset_id"]), "run_id": run_id,
                                        "sample_index": int(sample_index), "top": 10})
