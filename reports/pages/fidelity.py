"""Fidelity studies (denoisers against a network): the list (FidelityListPage, template
fidelity_list.html) and one study (FidelityPage, template fidelity.html), from the stored
study records (load_study / list_studies)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar

import numpy as np

from auditor.store.scores import HEADLINE_MEASURED, HEADLINE_SCORE, MEASURED_SCORES, headline_trust
from reports.pages.common import Context, Pagination

__all__ = ["FidelityListPage", "FidelityPage", "MseRow", "MseTable", "build_fidelity_list_page",
           "build_fidelity_page", "mse_table", "study_datasets"]


@dataclass(kw_only=True)
class FidelityListPage(Context):
    """The stored fidelity studies (template fidelity_list.html), newest first, paginated;
    each as list_studies gives it; attribution: how far the attribution scores can be trusted, as
    bench/attribution.py measured them (auditor.store.scores.MEASURED_SCORES)."""

    documented_template: ClassVar[str] = "fidelity_list.html"

    studies: list[dict]
    pagination: Pagination
    title: str = "Fidelity studies"
    attribution: dict = field(default_factory=lambda: {
        "headline": HEADLINE_SCORE, "trust": headline_trust(), "results": HEADLINE_MEASURED["results"],
        "rows": [{"score": name, "lds_denoising": v[0], "lds_denoising_se": v[1], "lds_rerun": v[2],
                  "lds_rerun_se": v[3], "top10_mse": v[4]} for name, v in MEASURED_SCORES.items()]})


def build_fidelity_list_page(studies: list[dict], *, pagination: Pagination) -> FidelityListPage:
    """Page `pagination.page` of every stored study (newest first)."""
    pagination = pagination.of(len(studies))
    return FidelityListPage(studies=pagination.slice(studies), pagination=pagination)


@dataclass(kw_only=True)
class MseRow:
    """One noise level of a process: every denoiser's MSE against the network (and its
    standard error), the closest denoiser, and whether t lies in the paper's range for its finding."""

    level: int  # reverse process: the sampling step
    t: float
    mse: list[float]
    stderr: list[float]
    closest: str
    in_range: bool


@dataclass(kw_only=True)
class MseTable:
    """A process's MSE table: rows are noise levels, columns denoisers (Figs. 4, 7)."""

    process: str
    names: list[str]
    rows: list[MseRow]
    states: int | None  # noisy states averaged per level
    range_means: dict[str, float | None]  # mean MSE per denoiser over the levels in the finding's range


@dataclass(kw_only=True)
class FidelityPage(Context):
    """One fidelity study (template fidelity.html): the network and data it ran on, the MSE
    table per process with the closest denoiser marked, the gradient-concentration table,
    the samples' similarity to the network's (with the descriptor's name), the tuned
    schedule, the findings, `study` (the stored study record: every stored number), and
    `datasets`: the store's data sets the study's images come from, each saying whether the study
    ran on all of its images or on a subset (a subset under the same name is not the same data)."""

    documented_template: ClassVar[str] = "fidelity.html"

    study_id: int
    name: str
    created_at: datetime | None
    source: str | None
    network: dict  # NetworkDenoiser.describe(): name, image shape, loader record (path, sha256, config)
    training_set: dict  # TrainingSet.describe(): name, source, fingerprint, count, shape, xflip
    test_set: dict
    seed: int | None
    tables: list[MseTable]
    finding_range: tuple[float, float]
    similarity: list[dict]  # denoiser, similarity, std (over the samples)
    descriptor: str | None
    schedule: list[dict] | None
    findings: list[str]
    study: dict = field(repr=False)
    datasets: list[dict] = field(default_factory=list)  # the store's data sets from the study's source (study_datasets)

    @property
    def title(self) -> str:
        return f"Fidelity study {self.study_id}: {self.name}"

    @property
    def record(self) -> dict:
        return self.study["record"]

    @property
    def concentration(self) -> dict:
        return self.study["concentration"]

    @property
    def network_sha256(self) -> str | None:
        return self.study["network_sha256"]

    @property
    def command_line(self) -> str | None:
        command = self.record.get("command")
        return shlex.join(str(a) for a in command) if command else None


def mse_table(curve: dict, finding_range: tuple[float, float]) -> MseTable:
    """A stored curve (process, times, names, mse, stderr, states) as a table, closest denoiser per level."""
    names, mse, stderr = curve["names"], curve["mse"], curve["stderr"]
    rows = []
    for k, t in enumerate(curve["times"]):
        column = [mse[d][k] for d in range(len(names))]
        rows.append(MseRow(level=k, t=t, mse=column, stderr=[stderr[d][k] for d in range(len(names))],
                           closest=names[int(np.argmin(column))], in_range=finding_range[0] <= t <= finding_range[1]))
    inside = [row for row in rows if row.in_range]
    means = {name: float(np.mean([row.mse[d] for row in inside])) if inside else None for d, name in enumerate(names)}
    return MseTable(process=curve["process"], names=names, rows=rows, states=curve.get("states"), range_means=means)


def study_datasets(training_set: dict, datasets) -> list[dict]:
    """The data sets (datasets rows) holding the study's training images: the same fingerprint
    (same_images), or the same source file with other images (a subset of it, or a superset):
    dicts id, name, count, fingerprint, same_images."""
    fingerprint, source = training_set.get("fingerprint"), training_set.get("source")
    return [{"id": int(d["id"]), "name": d["name"], "count": int(d["count"]), "fingerprint": d["fingerprint"],
             "same_images": d["fingerprint"] == fingerprint}
            for d in datasets if d["fingerprint"] == fingerprint or (source is not None and d.get("source") == source)]


def build_fidelity_page(study: dict, *, finding_range: tuple[float, float], datasets=()) -> FidelityPage:
    """The page of a stored study (load_study's dict); finding_range: the t range of the paper's
    finding; datasets: the store's datasets rows (the page names those the study's images come from)."""
    record = study["record"]
    matrix = study["similarity"] or {}
    similarity = []
    for name, value in (study["similarity_to_network"] or {}).items():
        names, std = matrix.get("names") or [], matrix.get("std") or []
        spread = std[0][names.index(name)] if name in names and std else None
        similarity.append({"denoiser": name, "similarity": value, "std": spread})
    return FidelityPage(study_id=study["id"], name=study["name"], created_at=study["created_at"],
                        source=study["source"], network=record.get("network") or {},
                        training_set=record.get("training_set") or {}, test_set=record.get("test_set") or {},
                        seed=study["seed"],
                        tables=[mse_table(curve, finding_range) for curve in study["curves"].values()],
                        finding_range=finding_range, similarity=similarity, descriptor=study["descriptor"],
                        schedule=study["tuned_schedule"], findings=study["findings"], study=study,
                        datasets=study_datasets(record.get("training_set") or {}, datasets))
