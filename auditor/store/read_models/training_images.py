"""A training image's page: its rows, and every sample, step and patch that used it.

`image_usage` aggregates the image's step_shares rows (what view step_sources reads) and its
patch_weights rows per (run, sample): the share of D(z_t) at every step that kept it, the
patch locations it gave, the final share, and the usage map over the image's own pixels
(the share of final images taken from each of them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from auditor.errors import NotFoundError, UserError
from auditor.store import database
from auditor.store.database import json_value
from auditor.store.read_models.common import float_image, integer_id
from auditor.store.read_models.patches import patch_geometry
from auditor.store.run_kinds import usage_kinds

__all__ = ["TrainingImageData", "image_usage", "label_number", "load_training_image"]

DATASET_COLUMNS = ("id", "name", "source", "fingerprint", "count", "channels", "height", "width")
IMAGE_COLUMNS = ("image_id", "sha256", "label", "label_name", "source_uri", "owner", "license", "extra")


@dataclass(frozen=True, kw_only=True)
class TrainingImageData:
    """dataset: its row (id, name, source, fingerprint, count, channels, height, width);
    image: the image's row (image_index, image_id, sha256, label, label_name, source_uri,
    owner, license, extra decoded); pixels: uint8 [C, H, W] (None when not stored); usage:
    image_usage's dict over every sample; statuses: run id -> status (the dataset's runs);
    shown: the requested slice of usage["order"]; finals: (run, sample) -> final image
    (float32 [C, H, W]) of the shown samples that have one; kinds: run id -> kind ('pspc',
    'network-explained', ...); copy_matches: (run, sample) -> the copy detection matches that
    name the image (_copy_matches), for every sample of the runs counted; include_audits:
    whether audits of outside images are counted (by default only outputs are:
    auditor.store.run_kinds.usage_kinds); left_out: the samples of the runs NOT counted (audits)
    that used the image or that copy detection matched to it."""

    dataset: dict
    image: dict
    pixels: np.ndarray | None = field(repr=False)
    usage: dict = field(repr=False)
    statuses: dict[int, str]
    shown: list[tuple[int, int]]
    finals: dict[tuple[int, int], np.ndarray] = field(repr=False)
    kinds: dict[int, str] = field(default_factory=dict)
    copy_matches: dict[tuple[int, int], list[dict]] = field(default_factory=dict)
    include_audits: bool = False
    left_out: int = 0

    @property
    def shape(self) -> tuple[int, int, int]:
        return int(self.dataset["channels"]), int(self.dataset["height"]), int(self.dataset["width"])

    @property
    def total(self) -> int:
        """Samples that used the image."""
        return len(self.usage["order"])


def label_number(db_path, dataset_id: int, label: str | int | None, *,
                 timeout: float = database.DEFAULT_TIMEOUT) -> int | None:
    """The class label a `label=` filter names: a number (as text or int) as it is, or a class name,
    matched case-insensitively against the dataset's label_name ('trouser' -> 1 on Fashion-MNIST).
    UserError naming the dataset's class names for a name none of its images has."""
    if label is None:
        return None
    text = str(label).strip()
    if text.lstrip("+-").isdigit():
        number = int(text)
        if not -2**31 <= number < 2**31:  # training_images.label is a 32-bit integer
            raise UserError(f"label must be a class number in -2^31..2^31-1 or a class name, got {text[:40]}")
        return number
    with database.connect(db_path, read_only=True, timeout=timeout, check_schema=True) as conn:
        if conn.execute("SELECT count(*) FROM datasets WHERE id = ?", [int(dataset_id)]).fetchone()[0] == 0:
            raise NotFoundError(f"{db_path}: no dataset {dataset_id}")
        rows = conn.execute("SELECT DISTINCT label, label_name FROM training_images WHERE dataset_id = ? AND "
                            "label_name IS NOT NULL ORDER BY label, label_name", [int(dataset_id)]).fetchall()
    found = sorted({int(n) for n, name in rows if n is not None and name.lower() == text.lower()})
    if len(found) == 1:
        return found[0]
    names = ", ".join(dict.fromkeys(f"{name} ({n})" for n, name in rows)) or "none"
    if found:
        raise UserError(f"label {text!r} names several class numbers in dataset {dataset_id} ({found}); give the number")
    raise UserError(f"no training image of dataset {dataset_id} has the label {text!r}; give a class number or "
                    f"one of its class names: {names}")


def load_training_image(db_path, dataset_id: int, image_index: int, *, limit: int, offset: int,
                        include_audits: bool = False, timeout: float = database.DEFAULT_TIMEOUT) -> TrainingImageData:
    """Training image `image_index` of dataset `dataset_id` and every use of it by an output
    (and by an audit with include_audits), with the final images of samples [offset, offset +
    limit) by largest final share. NotFoundError for unknown ids."""
    kinds = list(usage_kinds(include_audits))
    dataset_id, image_index = integer_id(dataset_id, "dataset id"), integer_id(image_index, "image index")
    with database.connect(db_path, read_only=True, timeout=timeout, check_schema=True) as conn:
        drow = conn.execute(f"SELECT {', '.join(DATASET_COLUMNS)} FROM datasets WHERE id = ?",
                            [dataset_id]).fetchone()
        if drow is None:
            raise NotFoundError(f"{db_path}: no dataset {dataset_id}")
        dataset = dict(zip(DATASET_COLUMNS, drow))
        irow = conn.execute(f"SELECT {', '.join(IMAGE_COLUMNS)}, pixels FROM training_images "
                            "WHERE dataset_id = ? AND image_index = ?", [dataset_id, image_index]).fetchone()
        if irow is None:
            raise NotFoundError(f"{db_path}: dataset {dataset_id} has no training image {image_index} "
                                f"(indices 0..{dataset['count'] - 1})")
        rows = conn.execute("""
            SELECT w.run_id, w.sample_index, w.step, w.position, w.flip, w.source_top, w.source_left, w.weight,
                   s.t, s.t_next, s.patch_set_id
            FROM patch_weights w
            JOIN runs r ON r.id = w.run_id
            JOIN steps s ON s.run_id = w.run_id AND s.sample_index = w.sample_index AND s.step = w.step
            WHERE r.dataset_id = ? AND w.image_index = ? AND list_contains(?::VARCHAR[], coalesce(r.kind, 'pspc'))""",
                            [dataset_id, image_index, kinds]).fetchnumpy()
        share_rows = conn.execute("""
            SELECT v.run_id, v.sample_index, v.step, v.share, v.flip_share, s.t, s.t_next
            FROM step_shares v
            JOIN runs r ON r.id = v.run_id
            JOIN steps s ON s.run_id = v.run_id AND s.sample_index = v.sample_index AND s.step = v.step
            WHERE r.dataset_id = ? AND v.image_index = ? AND list_contains(?::VARCHAR[], coalesce(r.kind, 'pspc'))""",
                                  [dataset_id, image_index, kinds]).fetchall()
        geometry = patch_geometry(conn, np.unique(rows["patch_set_id"]).tolist())
        run_rows = conn.execute("SELECT id, status, kind FROM runs WHERE dataset_id = ?", [dataset_id]).fetchall()
        statuses = {int(r[0]): r[1] for r in run_rows}
        copies = _copy_matches(conn, dataset_id, image_index, kinds)
        left_out = _left_out(conn, dataset_id, image_index, kinds)
        usage = image_usage(share_rows, rows, geometry, statuses, (int(dataset["height"]), int(dataset["width"])))
        shown = usage["order"][int(offset):int(offset) + int(limit)]
        finals = _final_images(conn, shown, usage["samples"])
    shape = (int(dataset["channels"]), int(dataset["height"]), int(dataset["width"]))
    image = {"image_index": image_index, **dict(zip(IMAGE_COLUMNS, irow[:8]))}
    image["extra"] = json_value(image["extra"])
    pixels = np.frombuffer(irow[8], np.uint8).reshape(shape) if irow[8] is not None else None
    return TrainingImageData(dataset=dataset, image=image, pixels=pixels, usage=usage, statuses=statuses, shown=shown,
                             finals={key: float_image(blob, shape) for key, blob in finals.items()},
                             kinds={int(run_id): kind or "pspc" for run_id, _, kind in run_rows}, copy_matches=copies,
                             include_audits=include_audits, left_out=left_out)


def _copy_matches(conn, dataset_id: int, image_index: int, kinds: list[str]) -> dict[tuple[int, int], list[dict]]:
    """(run, sample) -> the copy_matches rows that name the image (copy detection: descriptor,
    rank (0 = nearest), score, flag, flagged, flip), by descriptor and rank, of runs of the
    stored `kinds`."""
    out: dict[tuple[int, int], list[dict]] = {}
    for run_id, sample_index, descriptor, rank, score, flag, flagged, flip in conn.execute("""
            SELECT c.run_id, c.sample_index, c.descriptor, c.rank, c.score, c.flag, c.flagged, c.flip
            FROM copy_matches c JOIN runs r ON r.id = c.run_id
            WHERE r.dataset_id = ? AND c.image_index = ? AND list_contains(?::VARCHAR[], coalesce(r.kind, 'pspc'))
            ORDER BY c.run_id, c.sample_index, c.descriptor, c.rank""", [dataset_id, image_index, kinds]).fetchall():
        out.setdefault((int(run_id), int(sample_index)), []).append(
            {"descriptor": descriptor, "rank": int(rank), "score": float(score),
             "flag": None if flag is None else float(flag), "flagged": bool(flagged), "flip": bool(flip)})
    return out


def _left_out(conn, dataset_id: int, image_index: int, kinds: list[str]) -> int:
    """How many samples of runs NOT of the stored `kinds` used the image or were matched to it."""
    return int(conn.execute("""
        SELECT count(*) FROM (
            SELECT v.run_id, v.sample_index FROM step_shares v WHERE v.image_index = ?
            UNION SELECT c.run_id, c.sample_index FROM copy_matches c WHERE c.image_index = ?) u
        JOIN runs r ON r.id = u.run_id
        WHERE r.dataset_id = ? AND NOT list_contains(?::VARCHAR[], coalesce(r.kind, 'pspc'))""",
                            [image_index, image_index, dataset_id, kinds]).fetchone()[0])


def _final_images(conn, shown: list[tuple[int, int]], samples: dict) -> dict[tuple[int, int], bytes]:
    finals = {}
    if shown:
        run_ids = sorted({r for r, _ in shown})
        for run_id, sample_index, final in conn.execute(
                "SELECT run_id, sample_index, final_image FROM samples WHERE run_id IN (SELECT unnest(?::BIGINT[]))",
                [run_ids]).fetchall():
            if (run_id, sample_index) in samples and final is not None:
                finals[(run_id, sample_index)] = final
    return finals


def image_usage(share_rows: list, rows: dict, geometry: dict, statuses: dict, size: tuple[int, int]) -> dict:
    """Per (run, sample): per-step share of the image (step_shares rows, as view step_sources)
    with the patch locations it gave (patch_weights rows: dicts step, position, top, left,
    height, width, flip, weight; the box in the ORIGINAL image); the final share; and the
    usage map over the training image's pixels (share of final images taken from each source
    pixel, summed over samples). Returns {samples: {(run, sample): {steps: {step: {t, t_next,
    share, flip_share, locations}}, final_share, max_share}}, order (largest final share
    first), final_total, steps_using, pixel_map [H, W] (None without rows)}."""
    height, width = size
    samples: dict[tuple[int, int], dict] = {}
    for run_id, sample_index, step, share, flip_share, t, t_next in share_rows:
        entry = samples.setdefault((int(run_id), int(sample_index)), {"steps": {}, "final_share": None,
                                                                      "max_share": 0.0})
        entry["steps"][int(step)] = {"t": float(t), "t_next": float(t_next), "share": float(share),
                                     "flip_share": float(flip_share), "locations": []}
    pixel_map = np.zeros(height * width)
    n = len(rows["run_id"])
    for r in range(n):
        key = (int(rows["run_id"][r]), int(rows["sample_index"][r]))
        step = int(rows["step"][r])
        g = geometry[int(rows["patch_set_id"][r])]
        position = int(rows["position"][r])
        weight = float(rows["weight"][r])
        flip = bool(rows["flip"][r])
        s = samples.get(key, {}).get("steps", {}).get(step)
        if s is not None:
            s["locations"].append({"step": step, "position": position, "top": int(rows["source_top"][r]),
                                   "left": int(rows["source_left"][r]), "height": int(g.box_height[position]),
                                   "width": int(g.box_width[position]), "flip": flip, "weight": weight})
        if float(rows["t_next"][r]) == 0 and statuses.get(key[0]) == "complete":
            # output pixel p of the patch took training pixel p (mirrored: x -> W - 1 - x) with weight w / coverage(p)
            start, stop = g.member_starts[position], g.member_starts[position + 1]
            pixel = g.member_pixel[start:stop]
            source = pixel if not flip else (pixel // width) * width + (width - 1 - pixel % width)
            np.add.at(pixel_map, source, weight / g.coverage[pixel] / (height * width))
    final_total = 0.0
    steps_using = 0
    for key, entry in samples.items():
        steps_using += len(entry["steps"])
        entry["max_share"] = max(s["share"] for s in entry["steps"].values())
        final = [s["share"] for s in entry["steps"].values() if s["t_next"] == 0]
        if final and statuses.get(key[0]) == "complete":
            entry["final_share"] = final[0]
            final_total += final[0]
    order = sorted(samples, key=lambda k: (-(samples[k]["final_share"] or -1.0), -samples[k]["max_share"], k))
    return {"samples": samples, "order": order, "final_total": final_total, "steps_using": steps_using,
            "pixel_map": pixel_map.reshape(height, width) if n else None}
