"""Rendering the report pages: HTML (Jinja2, autoescaped), the self-contained export, JSON and CSV.

Every page is its context dataclass (reports.pages) through the template the class names
(`documented_template`), with `links` deciding where links go: `Links(root)` for the live
service, `Links(None)` for the exported single file (no links back to the server: only
in-page anchors). Images are inline data: URIs everywhere, so a page makes no request
beyond itself and the export is the same page with every step's maps embedded. The
per-pixel drill-down is a small inline script reading JSON embedded in the page
(`<script type="application/json">`, with <, > and & escaped so no data can end the
script element): each step's distinct pixels as integer rows (DrillDown.pixel_rows) and,
once for all steps, the listed images with thumbnails for those of largest weight within
reports.pages.sample_views.THUMBNAIL_BUDGET (the quickstart's exported report: 1.7 MB).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import threading
from collections import OrderedDict
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote, urlencode

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from auditor.errors import UserError
from reports import maps, plots
from reports.pages.common import Context, to_jsonable
from reports.pages.fidelity import FidelityPage
from reports.pages.sample import SampleReport
from reports.pages.training_image import TrainingImageExport

__all__ = ["CSV_COLUMNS", "CSV_SECTIONS", "USAGE_COLUMNS", "Links", "environment", "export_html", "fidelity_plots",
           "render_error", "render_fidelity", "render_login", "render_page", "render_sample", "report_csv",
           "report_json",
           "sample_plots", "script_json", "training_image_csv"]

TEMPLATES = Path(__file__).parent / "templates"


class Links:
    """Where a page's links point. root: the service's URL prefix ('' at the root); None in an
    exported file, where every method returns None and templates print plain text."""

    def __init__(self, root: str | None = ""):
        self.root = None if root is None else root.rstrip("/")

    @property
    def live(self) -> bool:
        return self.root is not None

    def _url(self, path: str, **params) -> str | None:
        if self.root is None:
            return None
        query = urlencode({k: v for k, v in params.items() if v is not None})
        return f"{self.root}{path}" + (f"?{query}" if query else "")

    def index(self, **params) -> str | None:
        return self._url("/", **params)

    def sql(self, **params) -> str | None:
        return self._url("/sql", **params)

    def login(self, **params) -> str | None:
        """The sign-in form (an API key in a form field, kept as a cookie: not in page URLs)."""
        return self._url("/login", **params)

    def run(self, run_id: int, **params) -> str | None:
        return self._url(f"/runs/{int(run_id)}", **params)

    def sample(self, run_id: int, sample_index: int, **params) -> str | None:
        return self._url(f"/runs/{int(run_id)}/samples/{int(sample_index)}", **params)

    def export(self, run_id: int, sample_index: int, fmt: str, **params) -> str | None:
        if fmt not in ("html", "json", "csv"):
            raise UserError(f"unknown export format {fmt!r}")
        return self._url(f"/runs/{int(run_id)}/samples/{int(sample_index)}/export.{fmt}", **params)

    def training_image(self, dataset_id: int, image_index: int, **params) -> str | None:
        return self._url(f"/datasets/{int(dataset_id)}/images/{int(image_index)}", **params)

    def training_image_export(self, dataset_id: int, image_index: int, fmt: str, **params) -> str | None:
        """The rights holder's export of a training image: every output that used it (csv or json)."""
        if fmt not in ("json", "csv"):
            raise UserError(f"unknown export format {fmt!r}")
        return self._url(f"/datasets/{int(dataset_id)}/images/{int(image_index)}/export.{fmt}", **params)

    def fidelity(self, study_id: int | None = None, **params) -> str | None:
        return self._url("/fidelity" if study_id is None else f"/fidelity/{int(study_id)}", **params)

    def api(self, path: str) -> str | None:
        return None if self.root is None else f"{self.root}/api/{quote(path.lstrip('/'))}"


# ---------------------------------------------------------------------------------------
# Jinja2
# ---------------------------------------------------------------------------------------
def script_json(value) -> Markup:
    """JSON safe inside <script type="application/json">: <, > and & as \\u escapes."""
    text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    return Markup(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def _percent(value, digits: int = 1) -> str:
    """A fraction as a percentage; values too small for `digits` decimals keep two significant figures."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    pct = 100.0 * float(value)
    if pct != 0 and abs(pct) < 0.5 * 10 ** -digits:
        return f"{pct:.2g}%"
    return f"{pct:.{digits}f}%"


def _number(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if abs(value) >= 10 ** digits:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def _when(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)


def _pretty(value) -> str:
    return json.dumps(to_jsonable(value, "none"), indent=2, sort_keys=True)


def _bar_width(value, scale) -> str:
    """CSS width of a share bar: value relative to `scale` (the largest share shown)."""
    if not value or not scale:
        return "0%"
    return f"{min(100.0, 100.0 * float(value) / float(scale)):.1f}%"


@lru_cache(maxsize=1)
def environment() -> Environment:
    """The Jinja2 environment over reports/templates (autoescape on for every template)."""
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(default=True,
                                                                                            default_for_string=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(percent=_percent, number=_number, when=_when, pretty=_pretty, bar_width=_bar_width,
                       script_json=script_json)
    env.globals.update(palette=maps.PALETTE, other_colour=maps.OTHER_COLOUR)
    return env


def render_page(context: Context, links: Links | None = None, **extra) -> str:
    """A page context through its documented template."""
    template = environment().get_template(context.documented_template)
    return template.render(page=context, links=links or Links(""), generated=_now(), **extra)


def render_error(status: int, message: str, links: Links | None = None, title: str | None = None,
                 login_next: str | None = None) -> str:
    """The error page (404 for unknown ids, 400 for bad parameters, ...); login_next: the page
    to return to after signing in, for a 401 (the page then holds the sign-in form)."""
    titles = {400: "Bad request", 401: "API key needed", 403: "Not allowed", 404: "Not found",
              500: "Something went wrong", 503: "Store busy"}
    return environment().get_template("error.html").render(
        status=int(status), message=message, title=title or titles.get(int(status), "Error"),
        links=links or Links(""), generated=_now(), login_next=login_next)


def render_login(next_path: str, message: str | None = None, links: Links | None = None) -> str:
    """The sign-in page: a form that posts an API key to /login, which keeps it in the HttpOnly
    auditor_key cookie and returns to `next_path`; `message`: why the last try failed."""
    return environment().get_template("login.html").render(
        title="Sign in", message=message, login_next=next_path, links=links or Links(""), generated=_now())


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# ---------------------------------------------------------------------------------------
# The sample report
# ---------------------------------------------------------------------------------------
_PLOTS: OrderedDict = OrderedDict()
_PLOTS_LOCK = threading.Lock()
_PLOT_CACHE_SIZE = 128


def _cached_plot(kind: str, key_data, draw) -> str | None:
    """A plot as a data: URI, cached on a digest of exactly the numbers it draws."""
    digest = hashlib.sha256(repr((kind, key_data)).encode()).hexdigest()
    with _PLOTS_LOCK:
        if digest in _PLOTS:
            _PLOTS.move_to_end(digest)
            return _PLOTS[digest]
    try:
        uri = maps.data_uri(draw())
    except ValueError:  # nothing to plot (no step recorded yet)
        uri = None
    with _PLOTS_LOCK:
        _PLOTS[digest] = uri
        while len(_PLOTS) > _PLOT_CACHE_SIZE:
            _PLOTS.popitem(last=False)
    return uri


def sample_plots(report: SampleReport) -> dict[str, str | None]:
    """The report's plots as data: URIs: 'stats' (captured mass, entropy, ESS per step),
    'shares' (top sources' share per step), 'network' (network-vs-PSPC error, if any)."""
    timeline = report.timeline
    stats_key = [(s.step, s.t, s.captured, s.mass_min, s.entropy_mean, s.ess_mean, s.ess_median) for s in timeline]
    sources = report.sources or report.trajectory
    shares_key = ([(s.step, s.t) for s in timeline],
                  [(s.image_id, s.colour, tuple(s.share_by_step)) for s in sources[:6]])
    out = {"stats": _cached_plot("stats", stats_key, lambda: plots.step_stats_plot(timeline)),
           "shares": _cached_plot("shares", shares_key, lambda: plots.source_share_plot(timeline, sources)),
           "network": None}
    if report.network is not None and report.network.steps:
        steps = report.network.steps
        out["network"] = _cached_plot("network", [(s.step, s.t, s.mse, s.max_abs_error) for s in steps],
                                      lambda: plots.network_error_plot(steps))
    return out


def fidelity_plots(page: FidelityPage) -> dict:
    """A fidelity study's plots as data: URIs: 'curves' (process -> MSE against the network
    per t and denoiser), 'concentration' (Fig. 3 line plot) and 'similarity' (the samples'
    similarity matrix, when the study sampled)."""
    study = page.study
    curves = {}
    for process, curve in study["curves"].items():
        title = f"{process} process ({curve.get('states') or '?'} states per level)"
        curves[process] = _cached_plot("fidelity-curves", (title, curve["times"], curve["names"], curve["mse"],
                                                           curve["stderr"], page.finding_range),
                                       lambda curve=curve, title=title: plots.fidelity_curves_plot(
                                           curve["times"], curve["names"], curve["mse"], curve["stderr"], title,
                                           band=page.finding_range))
    table = study["concentration"]
    out = {"curves": curves,
           "concentration": _cached_plot("concentration", (table["times"], table["fractions"], table["mean_side"]),
                                         lambda: plots.concentration_plot(table["times"], table["fractions"],
                                                                          table["mean_side"])),
           "similarity": None}
    matrix = study["similarity"]
    if matrix and matrix.get("names") and matrix.get("mean"):
        name = (matrix.get("descriptor") or {}).get("name", "descriptor")
        out["similarity"] = _cached_plot("similarity", (matrix["names"], matrix["mean"], name),
                                         lambda: plots.similarity_heatmap(matrix["names"], matrix["mean"], name))
    return out


def render_fidelity(page: FidelityPage, links: Links | None = None) -> str:
    """A fidelity study's page, its plots inline (data: URIs, as the sample report's)."""
    return render_page(page, links, plots=fidelity_plots(page))


_DRILLED = ("image_id", "label_name", "owner", "license", "thumbnail")  # what the drill-down shows of an image


def _view_data(report: SampleReport) -> dict:
    """What the page's script needs per step: map images, legend and the drill-down (as
    DrillDown.pixel_rows), and once for all steps what the drill-down shows of every image it
    lists (`images`, by image index: _DRILLED, fields without a value left out)."""
    steps, images = {}, {}
    for view in report.views:
        row = report.timeline_step(view.step)
        steps[str(view.step)] = {
            "step": view.step, "t": view.t, "patch": row.patch if row else None,
            "denoised": view.denoised.data_uri(), "dominant": view.dominant.data_uri(),
            "concentration": view.concentration.data_uri(), "concentration_kind": view.concentration_kind,
            "concentration_mean": view.concentration_mean,
            "legend": [to_jsonable(item, "none") for item in view.legend],
            "drilldown": view.drilldown.pixel_rows(),
        }
        for index, info in view.drilldown.images.items():
            images.setdefault(str(index), {k: info[k] for k in _DRILLED if info.get(k) is not None})
    return {"run_id": report.run_id, "sample_index": report.sample_index, "step": report.step,
            "final_step": report.final_step, "steps": steps, "images": images,
            "recorded_steps": [{"step": s.step, "t": s.t, "patch": s.patch} for s in report.timeline]}


def render_sample(report: SampleReport, links: Links | None = None, *, exported: bool = False) -> str:
    """The sample report page. exported=True: the self-contained single file (see export_html)."""
    links = Links(None) if exported else (links or Links(""))
    template = environment().get_template(report.documented_template)
    return template.render(page=report, links=links, exported=exported, plots=sample_plots(report),
                           view_data=_view_data(report), generated=_now())


def export_html(report: SampleReport) -> str:
    """The report as ONE self-contained HTML file: every image inline (data: URIs), styles and
    the drill-down script inline, no request to anything. Build the report with
    all_steps=True so its step selector works offline for every step."""
    return render_sample(report, exported=True)


def report_json(report: Context, images: str = "data-uri") -> str:
    """A page context's data as JSON (what the page shows; images as data: URIs or left out)."""
    return json.dumps(report.to_json(images), indent=1, allow_nan=False) + "\n"


CSV_COLUMNS = ("section", "step", "t", "rank", "image_index", "image_id", "label", "label_name", "source_uri", "owner",
               "license", "share", "flip_share", "patches", "captured", "lowest_patch_mass", "entropy", "ess_median",
               "ess_mean", "trajectory_weight", "descriptor", "score", "thresholds", "flagged", "mirrored",
               "counterpart_run_id", "mse", "max_abs_error", "verdict", "reason", "threshold", "tpr", "fpr",
               "calibration_id", "region")
CSV_SECTIONS = ("final", "trajectory", "step", "timeline", "copy", "similarity", "network-step", "verdict")


def _boxes(locations) -> str:
    return "; ".join(f"step {p.step} {p.height}x{p.width} at ({p.top},{p.left}){' mirrored' if p.flip else ''} "
                     f"w={p.weight:.4g}" for p in locations)


def _csv_value(value) -> str:
    """Floats in full (repr), booleans as true/false, None as empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _csv_rows(report: SampleReport):
    """Every number the report page shows, one dict per row, by section (CSV_SECTIONS)."""
    def source(section, step, t, rank, s, patches=""):
        return {"section": section, "step": step, "t": t, "rank": rank, "image_index": s.image_index,
                "image_id": s.image_id, "label": getattr(s, "label", None), "label_name": s.label_name,
                "source_uri": getattr(s, "source_uri", None), "owner": getattr(s, "owner", None),
                "license": getattr(s, "license", None), "share": float(s.share), "flip_share": float(s.flip_share),
                "patches": patches}

    final = report.timeline_step(report.final_step) if report.final_step is not None else None
    for rank, s in enumerate(report.sources, 1):
        yield source("final", report.final_step, final.t if final else None, rank, s, _boxes(s.patches))
    for rank, s in enumerate(report.trajectory, 1):
        yield source("trajectory", None, None, rank, s, _boxes(s.patches))
    for step in report.timeline:
        for rank, s in enumerate(step.top_sources, 1):
            yield source("step", step.step, step.t, rank, s)
    for step in report.timeline:
        yield {"section": "timeline", "step": step.step, "t": step.t, "patches": step.patch,
               "captured": step.captured, "lowest_patch_mass": step.mass_min, "entropy": step.entropy_mean,
               "ess_median": step.ess_median, "ess_mean": step.ess_mean, "trajectory_weight": step.coefficient}
    for c in report.copy_matches:
        yield {"section": "copy", "rank": c.rank, "image_index": c.image_index, "image_id": c.image_id,
               "descriptor": c.descriptor, "score": c.score, "thresholds": " ".join(map(repr, c.thresholds)),
               "flagged": c.flagged, "mirrored": c.flip}
    verdict = report.verdict
    if verdict is not None:
        region = verdict.region or {}
        yield {"section": "verdict", "verdict": verdict.verdict, "reason": verdict.reason,
               "descriptor": verdict.evidence, "score": verdict.score, "threshold": verdict.threshold,
               "tpr": verdict.tpr, "fpr": verdict.fpr, "calibration_id": verdict.calibration_id,
               "image_index": " ".join(str(s["image_index"]) for s in verdict.sources) or None,
               "image_id": " ".join(s["image_id"] for s in verdict.sources) or None,
               "mirrored": any(s.get("flip") for s in verdict.sources) if verdict.sources else None,
               "region": " ".join(map(str, region["box"])) if region.get("box") else None}
    network = report.network
    if network is not None:
        for score in network.scores:
            yield {"section": "similarity", "descriptor": score.descriptor, "score": score.score,
                   "thresholds": " ".join(map(repr, score.thresholds)), "flagged": score.flagged,
                   "counterpart_run_id": network.counterpart_run_id}
        for step in network.steps:
            yield {"section": "network-step", "step": step.step, "t": step.t, "mse": step.mse,
                   "max_abs_error": step.max_abs_error, "counterpart_run_id": network.counterpart_run_id}


def report_csv(report: SampleReport) -> str:
    """The report's numbers as CSV, one row per (section, step, item), the columns a section
    does not use empty: 'final' (the final image's sources, with their patch locations),
    'trajectory', 'step' (each timeline step's top sources), 'timeline' (each step's captured
    share, lowest patch mass, entropy, ESS and trajectory weight), 'copy' (copy detection:
    nearest training images by descriptor), 'similarity' (the network counterpart's scores) and
    'network-step' (network-vs-PSPC error per step) and 'verdict' (the stored copy verdict, when
    there is one: verdict, reason, evidence in `descriptor`, score, threshold, TPR, FPR, source
    ids, a partial copy's box top left height width in `region`)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in _csv_rows(report):
        writer.writerow([_csv_value(row.get(column)) for column in CSV_COLUMNS])
    return buffer.getvalue()


USAGE_COLUMNS = ("dataset_id", "image_index", "image_id", "label", "label_name", "source_uri", "owner", "license",
                 "sha256", "run_id", "sample_index", "run_status", "run_kind", "kind", "final_share", "max_share",
                 "max_share_step", "steps_using", "copy_descriptor", "copy_rank", "copy_score", "copy_flagged",
                 "copy_mirrored")


def training_image_csv(export: TrainingImageExport) -> str:
    """The rights holder's export as CSV: one row per output that used the image (per copy
    detection match naming it, when there are several), the image's identity on every row."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(USAGE_COLUMNS)
    image = {"dataset_id": export.dataset.id, "image_index": export.image_index, "image_id": export.image_id,
             "label": export.label, "label_name": export.label_name, "source_uri": export.source_uri,
             "owner": export.owner, "license": export.license, "sha256": export.sha256}
    for use in export.outputs:
        row = {**image, "run_id": use.run_id, "sample_index": use.sample_index, "run_status": use.run_status,
               "run_kind": use.run_kind, "kind": use.kind, "final_share": use.final_share,
               "max_share": float(use.max_share), "max_share_step": use.max_share_step, "steps_using": use.steps_using}
        for match in use.copy_matches or [{}]:
            copy = {"copy_descriptor": match.get("descriptor"), "copy_rank": match.get("rank"),
                    "copy_score": match.get("score"), "copy_flagged": match.get("flagged"),
                    "copy_mirrored": match.get("flip")}
            writer.writerow([_csv_value({**row, **copy}.get(column)) for column in USAGE_COLUMNS])
    return buffer.getvalue()
