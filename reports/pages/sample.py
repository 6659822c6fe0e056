"""The report on one generated image (SampleReport, template sample.html), built from the
sample's read model (auditor.store.read_models.sample.SampleProvenance).

Numbers come from the store exactly as auditor.store.attribution computes them
(tests/reports/test_page_builders.py compares them). Shares use the KEPT posterior weights, so a
step's shares sum to its mean captured mass (at most 1).

Building takes two calls on the same options: `report_images(data, ...)` says which training
images the report shows (pass it as SampleProvenance.load's `images`, so one read fetches
them), then `build_sample_report(data, ...)`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from auditor.errors import UserError
from auditor.store.read_models.counterfactual import SampleCounterfactuals
from auditor.store.read_models.sample import SampleProvenance, Shares
from auditor.store.scores import HEADLINE_SCORE, SCORES, headline_trust
from reports import maps
from reports.pages.common import (MAIN_SIZE, MAX_TOP, THUMB_SIZE, TIMELINE_SIZE, TINY_SIZE, Context, PatchLocation,
                                  Picture, RunRecord, check_options, display_scale, meta_dict, run_record,
                                  training_thumbnail)
from reports.pages.counterfactual import (CounterfactualList, CounterfactualPanel, counterfactual_list,
                                          counterfactual_panel)
from reports.pages.glossary import SAMPLE_DEFINITIONS, Definition
from reports.pages.network import CopyMatch, NetworkComparison, copy_matches
from reports.pages.sample_views import StepAttribution, label_views, legend_images, step_attribution
from reports.pages.verdicts import NO_VERDICT, VerdictBadge, verdict_badge  # the badge's home; kept importable here

__all__ = ["NO_VERDICT", "FidelityLink", "SampleReport", "Source", "StepSource", "StepSummary", "VerdictBadge",
           "build_sample_report", "check_report_options", "report_images", "verdict_badge", "z_display"]


@dataclass(kw_only=True)
class Source:
    """A training image an output was built from, with its rights metadata and how much.

    share: fraction of the image built from it (mirrored copy included), flip_share: the
    mirrored copy's part; patches: its largest kept weights, outlined on `thumbnail`;
    colour: its colour in the dominant-source map (None if outside the legend);
    share_by_step: its share at every recorded step (aligned with the report's timeline);
    steps: for trajectory sources, in how many steps it kept weight."""

    image_index: int
    image_id: str
    label: int | None
    label_name: str | None
    source_uri: str | None
    owner: str | None
    license: str | None
    share: float
    flip_share: float
    patches: list[PatchLocation]
    thumbnail: Picture | None = None
    colour: str | None = None
    share_by_step: list[float] = field(default_factory=list)
    steps: int | None = None


@dataclass(kw_only=True)
class StepSource:
    """A top source of one step (timeline): id, label, share and mirrored part, small thumbnail."""

    image_index: int
    image_id: str
    label_name: str | None
    share: float
    flip_share: float
    thumbnail: Picture | None = None


@dataclass(kw_only=True)
class StepSummary:
    """One sampling step: t -> t_next, the patch set, z_t and D(z_t), its top sources and the
    patch_stats summaries over patch positions (captured mass of the kept weights; entropy
    in nats and effective sample size of the full posterior weight vector)."""

    step: int
    t: float
    t_next: float
    coefficient: float  # the step's weight in the trajectory attribution
    patch: str  # e.g. '7x7 windows (484 patches)'
    patch_size: int | None
    num_patches: int
    patch_set: dict
    z: Picture  # z_t / sqrt(1 + t^2), see z_display
    denoised: Picture
    top_sources: list[StepSource]
    captured: float  # sum of the step's shares = mean captured mass over pixels
    mass_mean: float | None = None
    mass_min: float | None = None
    entropy_mean: float | None = None
    entropy_max: float | None = None
    ess_mean: float | None = None
    ess_median: float | None = None
    kept_mean: float | None = None


@dataclass(kw_only=True)
class FidelityLink:
    """A fidelity study of how closely PSPC reproduces a network on the sample's training data:
    on the same images (same_images), or on `images` other images of the same source file (a
    subset, whose fingerprint differs)."""

    study_id: int
    name: str
    network: str | None
    images: int | None
    same_images: bool


@dataclass(kw_only=True)
class SampleReport(Context):
    """The report on one generated image (template sample.html).

    image: the final image (None until the run completes); record: the run's
    reproducibility record with this sample's seed; sources: the final image's top
    training sources; trajectory: the trajectory-aggregated sources (which images built it
    along the sampling path), the headline ranking (auditor.store.scores.HEADLINE_SCORE is the
    trajectory share: `headline` names it, says what it means and how far it can be trusted); step: the step the maps show; views: the attribution maps and
    drill-down of `step` (and of every step in an exported report); timeline: every
    recorded step; network: the network counterpart when the run belongs to a network
    comparison (else None); copy_matches: the nearest training images by descriptor, when
    copy detection ran on the sample; notes: things the reader must know (run still running,
    pixels not stored, ...); definitions: what each figure means (reports.pages.glossary);
    fidelity_studies: the fidelity studies of PSPC against a network on this training data;
    verdict: the stored copy verdict (VerdictBadge), None when no verdict is recorded;
    counterfactual: on a counterfactual run's sample, its panel (reports.pages.counterfactual);
    counterfactuals: on any other sample, its counterfactual runs (None when not read)."""

    documented_template: ClassVar[str] = "sample.html"

    run_id: int
    sample_index: int
    seed: int
    status: str
    complete: bool
    image: Picture | None
    image_shape: tuple[int, int, int]
    record: RunRecord
    sources: list[Source]
    sources_total: float  # sum of all sources' shares (captured mass of the final image)
    trajectory: list[Source]
    step: int
    final_step: int | None
    steps_recorded: int
    steps_planned: int | None
    views: list[StepAttribution]
    timeline: list[StepSummary]
    network: NetworkComparison | None = None
    copy_matches: list[CopyMatch] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    definitions: list[Definition] = field(default_factory=lambda: list(SAMPLE_DEFINITIONS))
    fidelity_studies: list[FidelityLink] = field(default_factory=list)
    verdict: VerdictBadge | None = None
    counterfactual: CounterfactualPanel | None = None
    counterfactuals: CounterfactualList | None = None
    headline: dict = field(default_factory=lambda: {"score": HEADLINE_SCORE, "meaning": SCORES[HEADLINE_SCORE].meaning,
                                                    "trust": headline_trust()})
    built_ms: float = 0.0

    @property
    def view(self) -> StepAttribution:
        """The attribution of the chosen step."""
        return next(v for v in self.views if v.step == self.step)

    @property
    def title(self) -> str:
        return f"Run {self.run_id} · sample {self.sample_index}"

    def timeline_step(self, step: int) -> StepSummary | None:
        return next((s for s in self.timeline if s.step == step), None)


def z_display(z: np.ndarray, t: float) -> np.ndarray:
    """z_t as shown: z_t / sqrt(1 + t^2) (the variance-preserving scaling), so a noisy
    state at large t is unit-variance noise and one at small t is the image itself."""
    return np.asarray(z, np.float32) / np.float32(math.sqrt(1.0 + float(t) ** 2))


def check_report_options(*, step=None, top: int = 10, step_top: int = 3, patches: int = 12, drilldown_top: int = 5,
                         all_steps: bool = False, concentration: str = "top1") -> None:
    """ValueError for options build_sample_report refuses (checked before anything is read)."""
    check_options(top=(top, 1, MAX_TOP), step_top=(step_top, 0, 50), patches=(patches, 0, 100),
                  drilldown_top=(drilldown_top, 1, 20))
    if concentration not in maps.CONCENTRATION_KINDS:
        raise UserError(f"unknown concentration kind {concentration!r}; "
                         f"choose from {', '.join(maps.CONCENTRATION_KINDS)}")


def _view_steps(data: SampleProvenance, step, all_steps: bool) -> tuple[int, list[int]]:
    chosen = data.resolve_step(step)  # NotFoundError before anything else is computed
    return chosen, [row.step for row in data.steps] if all_steps else [chosen]


def report_images(data: SampleProvenance, *, step: int | None = None, top: int = 10, step_top: int = 3,
                  patches: int = 12, drilldown_top: int = 5, all_steps: bool = False,
                  concentration: str = "top1") -> set[int]:
    """The training images the report shows (same options as build_sample_report): the final
    and trajectory sources, every step's top sources, the maps' legends, every image a
    drill-down lists, and the copy matches. NotFoundError for a step not recorded."""
    _, view_steps = _view_steps(data, step, all_steps)
    wanted = set()
    final = data.final_shares()
    if final is not None:
        wanted.update(final.image_index[:top].tolist())
    wanted.update(data.trajectory_shares().image_index[:top].tolist())
    for shares in data.all_step_shares().values():
        wanted.update(shares.image_index[:step_top].tolist())
    for s in view_steps:
        wanted.update(legend_images(data, s, top))
        wanted.update(int(i) for i in np.unique(data.pixel_sources(s, drilldown_top).image_index) if i >= 0)
    wanted.update(int(m.image_index) for m in data.copy_matches)
    return wanted


def _sources(data: SampleProvenance, shares: Shares, top: int, patches: int, steps, colours: dict[int, str],
             coefficients=None, with_steps: bool = False) -> list[Source]:
    chosen = shares.top(top)
    indices = chosen.image_index.tolist()
    located = data.top_patches(indices, steps, patches, coefficients)
    series = data.share_series(indices)
    out = []
    for k, image in enumerate(indices):
        meta = data.images.get(image)
        colour = colours.get(image)
        locations = [PatchLocation(**p) for p in located.get(image, [])]
        thumbnail = None
        if meta is not None and meta.pixels is not None:
            scale = display_scale(meta.pixels.shape[2], THUMB_SIZE)
            rgb = maps.outlined_thumbnail(meta.pixels, [p.box for p in locations], scale,
                                          colour or maps.OUTLINE_COLOUR, thickness=max(1, scale // 3),
                                          dash=max(2, scale // 2 + 1))
            thumbnail = Picture(rgb=rgb, scale=scale, display=1,
                                alt=f"training image {meta.image_id} with the patches it gave outlined")
        out.append(Source(**meta_dict(meta, image), share=float(chosen.share[k]),
                          flip_share=float(chosen.flip_share[k]), patches=locations, thumbnail=thumbnail,
                          colour=colour, share_by_step=series[image],
                          steps=int(chosen.steps[k]) if with_steps and chosen.steps is not None else None))
    return out


def _timeline(data: SampleProvenance, step_top: int, coefficients: dict[int, float]) -> list[StepSummary]:
    stats = data.stats_summary()
    all_shares = data.all_step_shares()
    timeline = []
    for row in data.steps:
        geometry = data.geometry[row.patch_set_id]
        shares = all_shares[row.step]
        top_step = []
        for image, share, flip in zip(shares.image_index[:step_top].tolist(), shares.share[:step_top].tolist(),
                                      shares.flip_share[:step_top].tolist()):
            meta = data.images.get(image)
            top_step.append(StepSource(image_index=image, image_id=meta.image_id if meta else str(image),
                                       label_name=meta.label_name if meta else None, share=share, flip_share=flip,
                                       thumbnail=training_thumbnail(data.dataset["fingerprint"], meta, TINY_SIZE)))
        timeline.append(StepSummary(
            step=row.step, t=row.t, t_next=row.t_next, coefficient=coefficients.get(row.step, 0.0),
            patch=geometry.label, patch_size=geometry.patch_size, num_patches=geometry.num_patches,
            patch_set=geometry.description,
            z=Picture.of(z_display(row.z, row.t), TIMELINE_SIZE, f"z_t at step {row.step} (t = {row.t:.4g})"),
            denoised=Picture.of(row.denoised, TIMELINE_SIZE, f"D(z_t) at step {row.step}"), top_sources=top_step,
            captured=float(shares.share.sum()), **stats.get(row.step, {})))
    return timeline


def _counterfactual_sections(data: SampleProvenance, found: SampleCounterfactuals | None
                             ) -> tuple[CounterfactualPanel | None, CounterfactualList | None]:
    """The counterfactual panel (a counterfactual's sample) and list (any other sample), kept
    apart from the sources: (None, None) when nothing was read."""
    if found is None:
        return None, None
    parent_verdict = found.outcome.parent_verdict if found.outcome is not None else None
    panel = counterfactual_panel(found, data.run, data.dataset, data.final_image, verdict=verdict_badge(data.verdict),
                                 parent_verdict=verdict_badge(parent_verdict))
    return panel, counterfactual_list(found, data.run, data.sample_index)


def build_sample_report(data: SampleProvenance, *, step: int | None = None, top: int = 10, step_top: int = 3,
                        patches: int = 12, drilldown_top: int = 5, all_steps: bool = False,
                        concentration: str = "top1", network: NetworkComparison | None = None,
                        counterfactuals: SampleCounterfactuals | None = None,
                        started: float | None = None) -> SampleReport:
    """The report on the sample `data` holds (read with `images=report_images(...)` of the same
    options, or its thumbnails and ids are missing).

    step: the step whose attribution maps and drill-down are shown (None: the final step,
    or the last recorded one while the run is not complete); top: sources listed (the first
    10 get palette colours in the maps); step_top: sources per timeline step; patches: patch
    locations per source; drilldown_top: training images listed per pixel; all_steps: build
    the maps and drill-down of every recorded step (the self-contained export, whose step
    selector works offline); concentration: 'top1' or 'entropy'; network: the network section
    (network_comparison of the sample's counterpart) or None; counterfactuals: what
    auditor.store.read_models.counterfactual.load_sample_counterfactuals read for the sample
    (None: the counterfactual sections are left out); started: time.perf_counter()
    when the request began (built_ms counts from it; default: now).

    NotFoundError for a step not recorded; ValueError for bad options."""
    started = time.perf_counter() if started is None else started
    check_report_options(top=top, step_top=step_top, patches=patches, drilldown_top=drilldown_top,
                         concentration=concentration)
    if network is not None and not isinstance(network, NetworkComparison):
        raise ValueError(f"network must be None or a NetworkComparison, got {network!r}")
    chosen, view_steps = _view_steps(data, step, all_steps)
    final_step, final = data.final_step, data.final_shares()
    colours = {}
    if final is not None:
        colours = {int(i): c for i, c in zip(final.image_index[:top].tolist(), maps.PALETTE)}
    views = [step_attribution(data, s, top, drilldown_top, concentration, colours) for s in view_steps]
    label_views(data, views)
    notes = []
    if final is not None:
        sources = _sources(data, final, top, patches, [final_step], colours)
        sources_total = float(final.share.sum())
    else:
        sources, sources_total = [], 0.0
        notes.append(f"Run {data.run['id']} is {data.run['status']}: {len(data.steps)} of "
                     f"{data.run['sampler'].get('num_steps', '?')} steps are recorded, so the final image and its "
                     "sources are not there yet; the maps show the last recorded step.")
    coefficients = data.coefficients()
    trajectory = _sources(data, data.trajectory_shares(), top, patches, None, colours, coefficients, with_steps=True)
    timeline = _timeline(data, step_top, coefficients)
    if any(meta.pixels is None for meta in data.images.values()):
        notes.append("The store holds no pixels for some training images (ingested before schema revision 0003): "
                     "their thumbnails are missing. Run `auditor ingest` on the same data again to add them.")
    record = run_record(data.run, data.dataset, data.seed)
    alt = f"{record.kind_info.image_label} of run {data.run['id']}, sample {data.sample_index}"
    image = Picture.of(data.final_image, MAIN_SIZE, alt) if data.final_image is not None else None
    panel, listed = _counterfactual_sections(data, counterfactuals)
    return SampleReport(
        run_id=int(data.run["id"]), sample_index=data.sample_index, seed=data.seed, status=data.run["status"],
        complete=data.complete, image=image, image_shape=data.shape,
        record=record,
        sources=sources, sources_total=sources_total, trajectory=trajectory, step=chosen, final_step=final_step,
        steps_recorded=len(data.steps), steps_planned=(data.run.get("sampler") or {}).get("num_steps"), views=views,
        timeline=timeline, network=network, copy_matches=copy_matches(data), notes=notes,
        fidelity_studies=[FidelityLink(study_id=s["id"], name=s["name"], network=s["network_name"], images=s["count"],
                                       same_images=s["same_images"]) for s in data.studies],
        verdict=verdict_badge(data.verdict), counterfactual=panel, counterfactuals=listed,
        built_ms=round((time.perf_counter() - started) * 1000, 1))
