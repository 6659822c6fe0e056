"""Server-side plots of a sample report (matplotlib, Agg), as PNG or SVG bytes.

- `step_stats_plot`: per step, the captured share (the same figure as the report's
  "Captured": the sum of the step's shares) with the lowest patch's kept mass, the entropy
  (nats, mean over patches) and the effective sample size of the full posterior weight vector
  (median over patches, the mean dashed): how sharply each step's composite is attributed.
- `source_share_plot`: the share of each of the final image's top sources at every step,
  in the sources' legend colours, with the step's total captured mass.
- `network_error_plot`: the per-step MSE between the network's and PSPC's denoiser
  outputs (network comparison), when the report has one.

Plots of a fidelity study (auditor.workflows.fidelity; the /fidelity pages and bench/fidelity.py):
- `fidelity_curves_plot`: MSE against the network per noise level t and denoiser, with
  one standard error shaded and the paper's t range for its finding marked (Figs. 4, 7).
- `concentration_plot`: side of the centred square holding 50/75/95 % of the network's
  gradient sensitivity G per t (Fig. 3), with G at the centre pixel per t when given.
- `similarity_heatmap`: mean descriptor similarity between the denoisers' samples from
  shared noise (Fig. 9).
- `samples_plot`: the samples themselves, one row per denoiser, one column per noise.

Each takes plain sequences (the report's dataclasses) and draws on a fresh `Figure` (no
pyplot global state, so it is safe in a threaded server). The x axis is the sampling step
(evenly spaced, as sampling proceeds) labelled with its noise level t; linear axes and a
fixed layout keep a plot at about 0.1 s.
"""

from __future__ import annotations

import io
from typing import Sequence

__all__ = ["FORMATS", "concentration_plot", "fidelity_curves_plot", "network_error_plot", "samples_plot",
           "similarity_figure", "similarity_heatmap", "source_share_plot", "step_stats_plot"]

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
    return _save(figure, fmt)


def _save(figure, fmt: str, dpi: float | None = None) -> bytes:
    """The figure as PNG or SVG bytes, without timestamps or software names (same numbers, same bytes)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown plot format {fmt!r}; choose from {', '.join(FORMATS)}")
    buffer = io.BytesIO()
    metadata = {"Software": None} if fmt == "png" else {"Creator": None, "Date": None}
    figure.savefig(buffer, format=fmt, metadata=metadata, facecolor="white", dpi=dpi or "figure")
    return buffer.getvalue()


def _ylabel(ax, text: str) -> None:
    ax.set_ylabel(text, fontsize=8, color=_TEXT)


def step_stats_plot(timeline: Sequence, fmt: str = "png") -> bytes:
    """Captured (%), entropy and ESS per step from StepSummary rows (t, captured, mass_min,
    entropy_mean, ess_median, ess_mean)."""
    rows = [s for s in timeline if getattr(s, "mass_mean", None) is not None and s.t > 0]
    if not rows:
        raise ValueError("no recorded step has patch statistics to plot")
    t = [s.step for s in rows]
    figure, (mass, entropy, ess) = _figure(3, 4.6)
    mass.plot(t, [100 * s.captured for s in rows], "o-", color="#4e79a7", markersize=3, linewidth=1.5,
              label="captured")
    mass.plot(t, [100 * s.mass_min for s in rows], "o--", color="#9aa5b1", markersize=2.5, linewidth=1,
              label="lowest patch")
    mass.set_ylim(0, 105)
    _ylabel(mass, "captured (%)")
    mass.legend(fontsize=7, frameon=False, loc="best")
    entropy.plot(t, [s.entropy_mean for s in rows], "o-", color="#f28e2b", markersize=3, linewidth=1.5)
    entropy.set_ylim(bottom=0)
    _ylabel(entropy, "entropy (nats)")
    ess.plot(t, [s.ess_median for s in rows], "o-", color="#59a14f", markersize=3, linewidth=1.5, label="median")
    ess.plot(t, [s.ess_mean for s in rows], "o--", color="#9aa5b1", markersize=2.5, linewidth=1, label="mean")
    ess.set_yscale("symlog", linthresh=1)  # median ~1 and mean ~10^4 on one axis
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


# ---------------------------------------------------------------------------------------
# Fidelity studies (auditor.workflows.fidelity)
# ---------------------------------------------------------------------------------------
FINDING_BAND = (0.3, 3.0)  # the paper's t range for "PSPC is closer to the network" (auditor.workflows.fidelity)


def fidelity_curves_plot(times: Sequence[float], names: Sequence[str], mse: Sequence[Sequence[float]],
                         stderr: Sequence[Sequence[float]], title: str = "", fmt: str = "png",
                         band: tuple[float, float] | None = FINDING_BAND) -> bytes:
    """MSE against the network per noise level (log-log), one line per denoiser (mse[d][k] at
    times[k]) with +- one standard error shaded, and `band` (the finding's t range) greyed."""
    import numpy as np
    from matplotlib.figure import Figure

    if not len(times) or not len(names):
        raise ValueError("no fidelity curve to plot")
    figure = Figure(figsize=(6.4, 4.4))
    ax = figure.subplots()
    t = np.asarray(times, dtype=float)
    for d, name in enumerate(names):
        values, error = np.asarray(mse[d], dtype=float), np.asarray(stderr[d], dtype=float)
        ax.plot(t, values, marker="o", ms=3, label=name)
        ax.fill_between(t, np.clip(values - error, 1e-12, None), values + error, alpha=0.15)
    if band is not None:
        ax.axvspan(*band, color="grey", alpha=0.1, lw=0)
    ax.set(xscale="log", yscale="log", xlabel="noise level t", ylabel="MSE against the network", title=title)
    ax.grid(True, which="both", alpha=0.2)
    ax.legend(fontsize=8)
    figure.tight_layout()
    return _save(figure, fmt, dpi=120)


def concentration_plot(times: Sequence[float], fractions: Sequence[float], mean_side: Sequence[Sequence[float]],
                       centres: Sequence | None = None, fmt: str = "png") -> bytes:
    """Side of the centred square holding each fraction of G per t (mean_side[k][j], mean over
    output pixels); `centres` ([H, W] arrays: G at the centre output pixel, one per t) adds a
    row of log-scaled maps below."""
    import numpy as np
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    if not len(times) or not len(fractions):
        raise ValueError("no concentration table to plot")
    sides = np.asarray(mean_side, dtype=float)
    if centres is None:
        figure = Figure(figsize=(6.4, 3.8))
        ax = figure.subplots()
    else:
        figure = Figure(figsize=(max(6.4, 2.0 * len(times) + 1), 5.6))
        grid = figure.add_gridspec(2, len(times), height_ratios=(1.4, 1))
        ax = figure.add_subplot(grid[0, :])
    for j, fraction in enumerate(fractions):
        ax.plot(times, sides[:, j], marker="o", label=f"{round(100 * fraction)}% of G")
    ax.set(xscale="log", xlabel="noise level t", ylabel="side of the centred square (pixels)",
           title="Gradient concentration (mean over output pixels)")
    ax.set_xticks(list(times), [f"{t:g}" for t in times])
    ax.minorticks_off()
    ax.grid(True, which="both", alpha=0.2)
    ax.legend(fontsize=8)
    for k, (t, centre) in enumerate(zip(times, centres if centres is not None else [])):
        centre = np.asarray(centre, dtype=float)
        top = max(float(centre.max()), 1e-30)
        sub = figure.add_subplot(grid[1, k])
        sub.imshow(centre, cmap="magma", norm=LogNorm(vmin=top * 1e-4, vmax=top))
        sub.set_title(f"G(centre, t={t:g}), log", fontsize=8)
        sub.axis("off")
    figure.tight_layout()
    return _save(figure, fmt, dpi=110)


def similarity_figure(names: Sequence[str], mean: Sequence[Sequence[float]], descriptor: str):
    """The figure of similarity_heatmap, sized to its labels: the longest denoiser name and the
    descriptor's name (the title wraps) fit inside it at any number of denoisers."""
    import textwrap

    import numpy as np
    from matplotlib.figure import Figure

    if not len(names):
        raise ValueError("no similarity matrix to plot")
    mean = np.asarray(mean, dtype=float)
    label = 0.075 * max(len(str(n)) for n in names)  # inches of the longest tick label at 8 pt
    width = max(4.5, 0.9 * len(names) + 1.6 + label)
    title = "\n".join(textwrap.wrap(f"mean similarity ({descriptor})", max(20, int(width * 11))))
    figure = Figure(figsize=(width, 0.8 * len(names) + 1.4 + 0.7 * label), layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(mean, cmap="viridis", vmin=min(0.0, float(mean.min())), vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=40, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{mean[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if mean[i, j] < 0.6 else "black")
    ax.set_title(title, fontsize=9)
    figure.colorbar(image, ax=ax, fraction=0.046)
    return figure


def similarity_heatmap(names: Sequence[str], mean: Sequence[Sequence[float]], descriptor: str,
                       fmt: str = "png") -> bytes:
    """mean[i][j]: mean similarity of set i's sample to set j's from the same noise, by `descriptor`."""
    return _save(similarity_figure(names, mean, descriptor), fmt, dpi=110)


def samples_plot(sets, fmt: str = "png") -> bytes:
    """Samples from shared initial noise: one row per set (name -> images [B, C, H, W] in
    [-1, 1]; the first channel is shown), one column per noise."""
    import numpy as np
    from matplotlib.figure import Figure

    names = list(sets)
    if not names:
        raise ValueError("no samples to plot")
    count = len(sets[names[0]])
    figure = Figure(figsize=(max(0.9 * count + 1.6, 5.0), 0.95 * len(names) + 0.4))
    axes = figure.subplots(len(names), count, squeeze=False)
    for r, name in enumerate(names):
        images = np.asarray(sets[name], dtype=float)
        for c in range(count):
            ax = axes[r, c]
            ax.imshow(np.clip(images[c, 0], -1, 1), cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    figure.suptitle("samples from shared initial noise (one column per noise)", fontsize=8)
    figure.tight_layout()
    return _save(figure, fmt, dpi=110)
