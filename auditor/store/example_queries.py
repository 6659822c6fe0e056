"""The documented example queries of the provenance store, in one place.

README.md shows them verbatim (a test checks it), the tests run them against a recorded run
and compare with the engine, `bench/provenance.py` times them, and the service's SQL page
offers them one click away. Ids refer to run 1, sample 0 of a store recorded on
Fashion-MNIST (training image ids `train-NNNNN`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EXAMPLE_QUERIES", "ExampleQuery", "example_query"]


@dataclass(frozen=True)
class ExampleQuery:
    name: str  # short identifier
    title: str  # the question it answers
    sql: str


EXAMPLE_QUERIES = (
    ExampleQuery("top-sources", "Top sources of a sample: the training images the final image of sample 0 of run 1 "
                 "was built from, with their rights metadata", """\
SELECT s.image_index, i.image_id, i.label_name, i.owner, i.license, s.share, s.flip_share
FROM sample_sources AS s
JOIN runs AS r ON r.id = s.run_id
JOIN training_images AS i ON i.dataset_id = r.dataset_id AND i.image_index = s.image_index
WHERE s.run_id = 1 AND s.sample_index = 0
ORDER BY s.share DESC, s.image_index
LIMIT 10;"""),
    ExampleQuery("image-usage", "The rights holder's question: which generated samples used training image "
                 "train-58676 (the largest source of the Quick start's sample 0), and how much of each final image "
                 "came from it (add AND s.share > 0.001 to keep only large uses)", """\
SELECT s.run_id, s.sample_index, s.share, s.flip_share
FROM sample_sources AS s
JOIN runs AS r ON r.id = s.run_id
JOIN training_images AS i ON i.dataset_id = r.dataset_id AND i.image_index = s.image_index
WHERE i.image_id = 'train-58676' AND coalesce(r.kind, 'pspc') IN ('pspc', 'samples-only', 'network-explained')
ORDER BY s.share DESC, s.run_id, s.sample_index;"""),
    ExampleQuery("pixel-sources", "The sources of one pixel: (y, x) = (14, 14) of D(z_t) at step 12 of sample 0 "
                 "of run 1, each training image's weight in it (mirror image included)", """\
SELECT p.image_index, i.image_id, sum(p.weight) AS weight
FROM pixel_weights AS p
JOIN runs AS r ON r.id = p.run_id
JOIN training_images AS i ON i.dataset_id = r.dataset_id AND i.image_index = p.image_index
WHERE p.run_id = 1 AND p.sample_index = 0 AND p.step = 12 AND p.y = 14 AND p.x = 14
GROUP BY p.image_index, i.image_id
ORDER BY weight DESC, p.image_index
LIMIT 10;"""),
    ExampleQuery("runs-by-dataset", "Runs by dataset, with their status, denoiser and size", """\
SELECT d.id AS dataset, d.name, d.fingerprint, r.id AS run, r.status, r.denoiser->>'kind' AS denoiser,
       r.num_samples, r.sampler->>'num_steps' AS steps, r.created_at, r.finished_at
FROM datasets AS d
JOIN runs AS r ON r.dataset_id = d.id
ORDER BY d.id, r.id;"""),
    ExampleQuery("trajectory-sources", "Trajectory attribution of sample 0 of run 1: which training images built "
                 "it along the sampling path", """\
SELECT t.image_index, i.image_id, t.share, t.steps
FROM trajectory_sources AS t
JOIN runs AS r ON r.id = t.run_id
JOIN training_images AS i ON i.dataset_id = r.dataset_id AND i.image_index = t.image_index
WHERE t.run_id = 1 AND t.sample_index = 0
ORDER BY t.share DESC, t.image_index
LIMIT 10;"""),
)


def example_query(name: str) -> ExampleQuery:
    """The example query called `name` (KeyError naming the known ones otherwise)."""
    for query in EXAMPLE_QUERIES:
        if query.name == name:
            return query
    raise KeyError(f"no example query {name!r}; known: {', '.join(q.name for q in EXAMPLE_QUERIES)}")
