"""Server-side plots of a sample report (matplotlib, Agg), as PNG or SVG bytes.

- `step_stats_plot`: per step, the captured mass of the kept weights (mean and minimum over
  patch positions), the entropy (nats) and the effective sample size of the full posterior
  weight vector (mean and median): how sharply each step's composite is attributed.
- `source_share_plot`: the share of each of the final image's top sources at every step,
  in the sources' legend colours, with the step's total captured mass.
- `network_error_plot`: the per-step MSE between the network's and PSPC's denoiser
  outputs (network comparison), when the report has one.

Each takes plain sequences (the report's dataclasses) and draws on a fresh `Figure` (no
pyplot global state, so it is safe in a threaded server). The x axis is the sampling step
(evenly spaced, as sampling proceeds) labelled with its noise level t; linear axes and a
fixed layout keep a plot at about 0.1 s.
"""

from __future__ import annotations

import io
from typing import Sequence

__all__ = ["FORMATS", "network_error_plot", "source_share_plot", "step_stats_plot"]

FORMATS = ("png", "svg")
_TEXT = "#1f2933"
_GRID = "#e4e7eb"


def _figure(rows: int, height: float):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.2, height), dpi=100)
    figure.subplots_adjust(left=0.1, right=0.98, top=1 - 0.12 / height, bottom=0.5 / height, hspace=0.12)
    axes = figure.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    for ax in axes:
        ax.grid(True, color=_GRID, linewidth=0.8)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        for side in ("left", "bottom"):
            ax.spines[side].set_color("#9aa5b1")
        ax.tick_params(colors=_TEXT, labelsize=8)
    return figure, axes


def _t_label(t: float) -> str:
    return f"{t:.2g}" if t < 10 else f"{t:.0f}"


def _finish(figure, axes, steps: Sequence[int], times: Sequence[float], fmt: str) -> bytes:
    if fmt not in FORMATS:
        raise ValueError(f"unknown plot format {fmt!r}; choose from {', '.join(FORMATS)}")
    every = max(1, -(-len(steps) // 12))  # at most about 12 labels
    ax = axes[-1]
    ax.set_xticks(list(steps)[::every], [_t_label(t) for t in list(times)[::every]])
    ax.set_xlim(min(steps) - 0.5, max(steps) + 0.5)
    ax.set_xlabel("noise level t at each step (sampling proceeds to the right)", fontsize=8, color=_TEXT)
    buffer = io.BytesIO()
    metadata = {"Software": None} if fmt == "png" else {"Creator": None, "Date": None}
    figure.savefig(buffer, format=fmt, metadata=metadata, facecolor="white")
    return buffer.getvalue()


def _ylabel(ax, text: str) -> None:
    ax.set_ylabel(text, fontsize=8, color=_TEXT)


def step_stats_plot(timeline: Sequence, fmt: str = "png") -> bytes:
    """Captured mass, entropy and ESS per step from StepSummary rows (t, mass_mean, mass_min,
    entropy_mean, ess_mean, ess_median)."""
    rows = [s for s in timeline if getattr(s, "mass_mean", None) is not None and s.t > 0]
    if not rows:
        raise ValueError("no recorded step has patch statistics to plot")
    t = [s.step for s in rows]
    figure, (mass, entropy, ess) = _figure(3, 4.6)
    mass.plot(t, [s.mass_mean for s in rows], "o-", color="#4e79a7", markersize=3, linewidth=1.5, label="mean")
    mass.plot(t, [s.mass_min for s in rows], "o--", color="#9aa5b1", markersize=2.5, linewidth=1, label="min")
    mass.set_ylim(0, 1.05)
    _ylabel(mass, "captured mass")
    mass.legend(fontsize=7, frameon=False, loc="best")
    entropy.plot(t, [s.entropy_mean for s in rows], "o-", color="#f28e2b", markersize=3, linewidth=1.5)
    entropy.set_ylim(bottom=0)
    _ylabel(entropy, "entropy (nats)")
    ess.plot(t, [s.ess_mean for s in rows], "o-", color="#59a14f", markersize=3, linewidth=1.5, label="mean")
    ess.plot(t, [s.ess_median for s in rows], "o--", color="#9aa5b1", markersize=2.5, linewidth=1, label="median")
    ess.set_ylim(bottom=0)
    _ylabel(ess, "ESS")
    ess.legend(fontsize=7, frameon=False, loc="best")
    return _finish(figure, [mass, entropy, ess], t, [s.t for s in rows], fmt)


def source_share_plot(timeline: Sequence, sources: Sequence, fmt: str = "png", top: int = 6) -> bytes:
    """Share of each top source (Source.share_by_step, aligned with `timeline`) per step, and
    the step's total captured share (StepSummary.captured)."""
    rows = [(k, s) for k, s in enumerate(timeline) if s.t > 0]
    if not rows:
        raise ValueError("no recorded step to plot")
    t = [s.step for _, s in rows]
    figure, (ax,) = _figure(1, 2.8)
    for source in list(sources)[:top]:
        series = [source.share_by_step[k] if k < len(source.share_by_step) else 0.0 for k, _ in rows]
        ax.plot(t, series, "o-", color=source.colour or "#9aa5b1", markersize=3, linewidth=1.5,
                label=str(source.image_id))
    ax.set_ylim(bottom=0)
    _ylabel(ax, "share of D(z_t)")
    if sources:
        ax.legend(fontsize=7, frameon=False, loc="best", ncols=2)
    return _finish(figure, [ax], t, [s.t for _, s in rows], fmt)


def network_error_plot(steps: Sequence, fmt: str = "png") -> bytes:
    """MSE between the network's and PSPC's denoiser outputs per step (NetworkStep rows)."""
    rows = [s for s in steps if s.t > 0]
    if not rows:
        raise ValueError("no network comparison step to plot")
    figure, (ax,) = _figure(1, 2.4)
    ax.plot([s.step for s in rows], [s.mse for s in rows], "o-", color="#e15759", markersize=3, linewidth=1.5)
    ax.set_ylim(bottom=0)
    _ylabel(ax, "MSE network vs PSPC")
    return _finish(figure, [ax], [s.step for s in rows], [s.t for s in rows], fmt)
