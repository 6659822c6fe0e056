"""A run's page: its run and dataset rows, one page of its samples, and each shown sample's
headline source: the largest trajectory share (view trajectory_sources, the headline
score auditor.store.scores.HEADLINE_SCORE) for a complete run."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from auditor.store import database
from auditor.store.read_models.common import ImageMeta, float_image, image_metadata, integer_id
from auditor.store.runs import read_run

__all__ = ["GallerySample", "RunPageData", "load_run_page"]


@dataclass(frozen=True, kw_only=True)
class GallerySample:
    """A samples row: its index, seed and final image (float32 [C, H, W], None until stored)."""

    sample_index: int
    seed: int
    final_image: np.ndarray | None = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class RunPageData:
    """run and dataset (auditor.store.runs.read_run); samples: the requested slice, by index;
    step_counts: sample_index -> recorded steps (every sample of the run); top_sources:
    sample_index -> (image_index, share) of its largest trajectory share (complete runs,
    shown samples); images: ImageMeta (no pixels) of those sources."""

    run: dict
    dataset: dict
    samples: list[GallerySample]
    step_counts: dict[int, int]
    top_sources: dict[int, tuple[int, float]]
    images: dict[int, ImageMeta]

    @property
    def total(self) -> int:
        return int(self.run["num_samples"])


def load_run_page(db_path, run_id: int, *, limit: int, offset: int,
                  timeout: float = database.DEFAULT_TIMEOUT) -> RunPageData:
    """Run `run_id` with samples [offset, offset + limit), in one read-only transaction.
    NotFoundError for an unknown run."""
    with database.connect(db_path, read_only=True, timeout=timeout, check_schema=True) as conn:
        run, dataset = read_run(conn, db_path, integer_id(run_id, "run id"))
        run_id = int(run["id"])
        rows = conn.execute("SELECT sample_index, seed, final_image FROM samples WHERE run_id = ? "
                            "ORDER BY sample_index LIMIT ? OFFSET ?", [run_id, int(limit), int(offset)]).fetchall()
        indices = [s[0] for s in rows]
        step_counts = dict(conn.execute("SELECT sample_index, count(*) FROM steps WHERE run_id = ? "
                                        "GROUP BY sample_index", [run_id]).fetchall())
        tops = {}
        if indices and run["status"] == "complete":
            for sample_index, image_index, share in conn.execute("""
                    SELECT sample_index, image_index, share FROM (
                        SELECT sample_index, image_index, share,
                               row_number() OVER (PARTITION BY sample_index ORDER BY share DESC, image_index) AS r
                        FROM trajectory_sources WHERE run_id = ? AND sample_index IN (SELECT unnest(?::INTEGER[])))
                    WHERE r = 1""", [run_id, indices]).fetchall():
                tops[sample_index] = (image_index, share)
        shape = (dataset["channels"], dataset["height"], dataset["width"])
        images = image_metadata(conn, dataset["id"], [t[0] for t in tops.values()], shape, pixels=False)
    samples = [GallerySample(sample_index=int(i), seed=int(seed), final_image=float_image(final, shape))
               for i, seed, final in rows]
    return RunPageData(run=run, dataset=dataset, samples=samples, step_counts=step_counts, top_sources=tops,
                       images=images)
