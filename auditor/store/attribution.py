"""Attribution from the provenance store: the library side of the SQL views of revision 0002.

The share of a training image in an output image at one step is the mean over pixels of
its pixel weight, where the pixel weight is the sum of the image's kept posterior weights
over the patches covering the pixel divided by the number of patches covering it (exactly
how PSPC composes the pixel, Eq. 11). The functions here read the views (`step_sources`,
`sample_sources`, `trajectory_sources`, `pixel_weights`) so the library and plain SQL give
the same numbers, and add the training images' metadata. Dense per-pixel maps and the
recomposition of a stored step (Eq. 11 from stored data) are computed in torch from the
stored rows.

Shares use the KEPT weights (top-k, mass threshold): they sum to the captured mass, at
most 1; the rest is reported by patch_stats.mass.
"""

from __future__ import annotations

import torch

from pspc.data.training_set import TrainingSet
from pspc.posterior.attribution import pixel_weights, trajectory_coefficients

from auditor.errors import NotFoundError, StoreError
from auditor.store import database
from auditor.store.recorder import from_blob
from auditor.store.run_kinds import run_kind, usage_kinds
from auditor.store.runs import check_sample_index, read_run

__all__ = ["image_usage", "pixel_attribution", "pixel_sources", "recompose_step", "sample_sources",
           "step_coefficients", "trajectory_sources"]

_META = ("image_id", "label", "label_name", "source_uri", "owner", "license")


def _check_sample(conn, db_path, run_id: int, sample_index: int, step: int | None = None) -> dict:
    run, dataset = read_run(conn, db_path, run_id)
    sample_index = check_sample_index(db_path, run, sample_index)
    info = {"dataset_id": run["dataset_id"], "status": run["status"],
            "shape": (dataset["channels"], dataset["height"], dataset["width"]), "fingerprint": dataset["fingerprint"]}
    if step is not None:
        row = conn.execute("SELECT patch_set_id, t, t_next, z, denoised FROM steps WHERE run_id = ? AND sample_index = ? "
                           "AND step = ?", [int(run_id), sample_index, int(step)]).fetchone()
        if row is None:
            raise NotFoundError(f"{db_path}: run {run_id} sample {sample_index} has no recorded step {step}")
        info.update(patch_set_id=row[0], t=row[1], t_next=row[2], z=row[3], denoised=row[4])
    return info


def _with_metadata(conn, dataset_id: int, rows: list[dict]) -> list[dict]:
    if not rows:
        return rows
    indices = sorted({r["image_index"] for r in rows})
    meta = conn.execute(f"SELECT image_index, {', '.join(_META)} FROM training_images WHERE dataset_id = ? "
                        f"AND image_index IN ({', '.join('?' * len(indices))})", [dataset_id, *indices]).fetchall()
    by_index = {m[0]: dict(zip(_META, m[1:])) for m in meta}
    for r in rows:
        r.update(by_index.get(r["image_index"], dict.fromkeys(_META)))
    return rows


def _top_patches(conn, run_id: int, sample_index: int, steps: list[int], indices: list[int], per_image: int,
                 coefficients: dict[int, float] | None = None) -> dict[int, list[tuple]]:
    """Largest kept weights (x step coefficient when given) per image: (step, position, top, left, h, w, weight)."""
    if not indices or not steps:
        return {}
    coef = coefficients or {s: 1.0 for s in steps}
    values = ", ".join(f"({int(s)}, {float(coef.get(s, 0.0))!r})" for s in steps)
    rows = conn.execute(f"""
        WITH c(step, coefficient) AS (VALUES {values}),
        ranked AS (
            SELECT w.image_index, w.step, w.position, w.source_top, w.source_left, p.height, p.width, w.weight,
                   row_number() OVER (PARTITION BY w.image_index
                                      ORDER BY w.weight * c.coefficient DESC, w.step DESC, w.position) AS r
            FROM patch_weights w
            JOIN c ON c.step = w.step
            JOIN steps s ON s.run_id = w.run_id AND s.sample_index = w.sample_index AND s.step = w.step
            JOIN patch_positions p ON p.patch_set_id = s.patch_set_id AND p.position = w.position
            WHERE w.run_id = ? AND w.sample_index = ? AND w.image_index IN ({', '.join('?' * len(indices))})
        )
        SELECT image_index, step, position, source_top, source_left, height, width, weight
        FROM ranked WHERE r <= ? ORDER BY image_index, r""", [int(run_id), int(sample_index), *indices,
                                                                per_image]).fetchall()
    out: dict[int, list[tuple]] = {}
    for image_index, *patch in rows:
        out.setdefault(image_index, []).append(tuple(patch))
    return out


def _sources(conn, info: dict, run_id: int, sample_index: int, sql: str, params: list, steps: list[int], top: int,
             patches: int, coefficients=None) -> list[dict]:
    rows = conn.execute(sql + " ORDER BY share DESC, image_index LIMIT ?", [*params, int(top)]).fetchall()
    out = [{"image_index": r[0], "share": r[1], "flip_share": r[2]} for r in rows]
    _with_metadata(conn, info["dataset_id"], out)
    top_patches = _top_patches(conn, run_id, sample_index, steps, [r["image_index"] for r in out], patches,
                               coefficients)
    for r in out:
        r["patches"] = top_patches.get(r["image_index"], [])
    return out


def sample_sources(db_path, run_id: int, sample_index: int, *, step: int | None = None, top: int = 10,
                   patches: int = 5, timeout: float = database.DEFAULT_TIMEOUT) -> list[dict]:
    """The training images an output was built from, largest share first.

    step=None: the final image (view sample_sources: the last step, whose D(z, t) is the
    sample); else D(z_t) at that step (view step_sources). Each row: image_index,
    image_id, label, label_name, source_uri, owner, license, share (fraction of the image
    built from it), flip_share (the part from its mirrored copy) and patches: up to
    `patches` (step, position, source_top, source_left, height, width, weight) of its
    largest kept weights."""
    with database.connect(db_path, read_only=True, timeout=timeout, check_schema=True) as conn:
        info = _check_sample(conn, db_path, run_id, sample_index, step)
        if step is None:
            last = conn.execute("SELECT step FROM steps WHERE run_id = ? AND sample_index = ? AND t_next = 0",
                                [int(run_id), int(sample_index)]).fetchone()
            if last is None:
                raise NotFoundError(f"{db_path}: run {run_id} ({info['status']}) has no final step recorded for "
                                    f"sample {sample_index}")
            view, steps = "sample_sources", [last[0]]
            where = "run_id = ? AND sample_index = ?"
            params = [int(run_id), int(sample_index)]
        else:
            view, steps = "step_sources", [int(step)]
            where = "run_id = ? AND sample_index = ? AND step = ?"
            params = [int(run_id), int(sample_index), int(step)]
        sql = f"SELECT image_index, share, flip_share FROM {view} WHERE {where}"
        return _sources(conn, info, run_id, sample_index, sql, params, steps, top, patches)


def step_coefficients(times: list[tuple[int, float, float]]) -> dict[int, float]:
    """Trajectory weights w_i = a_i / sum_j a_j, a_i = 1 - t_{i+1}/t_i (the fraction of the
    state step i rewrites under Euler), for rows (step, t, t_next); as view trajectory_sources
    (pspc.posterior.attribution.trajectory_coefficients)."""
    return trajectory_coefficients(times)


def trajectory_sources(db_path, run_id: int, sample_index: int, *, top: int = 10, patches: int = 5,
                       timeout: float = database.DEFAULT_TIMEOUT) -> list[dict]:
    """Trajectory-aggregated attribution (view trajectory_sources): sum over the recorded
    steps of w_i x share_i, w_i = step_coefficients (each step's share of what the sampler
    wrote along the way). Rows as in
    sample_sources plus `steps` (how many steps kept the image); patches are ranked by
    weight x w_i."""
    with database.connect(db_path, read_only=True, timeout=timeout, check_schema=True) as conn:
        info = _check_sample(conn, db_path, run_id, sample_index)
        times = conn.execute("SELECT step, t, t_next FROM steps WHERE run_id = ? AND sample_index = ?",
                             [int(run_id), int(sample_index)]).fetchall()
        if not times:
            raise NotFoundError(f"{db_path}: run {run_id} has no recorded steps for sample {sample_index}")
        coefficients = step_coefficients(times)
        sql = "SELECT image_index, share, flip_share FROM trajectory_sources WHERE run_id = ? AND sample_index = ?"
        return _sources(conn, info, run_id, sample_index, sql, [int(run_id), int(sample_index)],
                        [s for s, _, _ in times], top, patches, coefficients)


def pixel_sources(db_path, run_id: int, sample_index: int, step: int, y: int, x: int, *, top: int = 10,
                  timeout: float = database.DEFAULT_TIMEOUT) -> list[dict]:
    """The training images output pixel (y, x) of D(z_t) at `step` is composed from (view
    pixel_weights), largest weight first: image_index, metadata, weight (sum over flips),
    flip_share (the mirrored copy's part)."""
    with database.connect(db_path, read_only=True, timeout=timeout, check_schema=True) as conn:
        info = _check_sample(conn, db_path, run_id, sample_index, step)
        _, height, width = info["shape"]
        if not (0 <= int(y) < height and 0 <= int(x) < width):
            raise NotFoundError(f"pixel ({y}, {x}) is outside the {height}x{width} image")
        rows = conn.execute("""
            SELECT image_index, sum(weight) AS weight, coalesce(sum(weight) FILTER (WHERE flip), 0.0) AS flip_share
            FROM pixel_weights WHERE run_id = ? AND sample_index = ? AND step = ? AND y = ? AND x = ?
            GROUP BY image_index ORDER BY weight DESC, image_index LIMIT ?""",
                            [int(run_id), int(sample_index), int(step), int(y), int(x), int(top)]).fetchall()
        out = [{"image_index": r[0], "weight": r[1], "flip_share": r[2]} for r in rows]
        return _with_metadata(conn, info["dataset_id"], out)


def image_usage(db_path, dataset_id: int, image_id: str, *, min_share: float = 0.0, all_steps: bool = False,
                include_audits: bool = False, timeout: float = database.DEFAULT_TIMEOUT) -> list[dict]:
    """The rights holder's question: which outputs used training image `image_id` of dataset
    `dataset_id`, and how much. Rows (run_id, sample_index, step, share, flip_share, kind:
    the run's public kind, auditor.store.run_kinds), largest share first: the final images
    (view sample_sources), or every recorded step with all_steps=True (view step_sources).
    Outputs are samples and network-explained samples; an audit of an outside image (which
    may be anything, random noise included) is no output and counts only with include_audits."""
    kinds = usage_kinds(include_audits)
    with database.connect(db_path, read_only=True, timeout=timeout, check_schema=True) as conn:
        if not conn.execute("SELECT 1 FROM datasets WHERE id = ?", [int(dataset_id)]).fetchone():
            raise NotFoundError(f"{db_path}: no dataset {dataset_id}")
        found = conn.execute("SELECT image_index FROM training_images WHERE dataset_id = ? AND image_id = ?",
                             [int(dataset_id), str(image_id)]).fetchone()
        if found is None:
            raise NotFoundError(f"{db_path}: dataset {dataset_id} has no training image {image_id!r}")
        view = "step_sources" if all_steps else "sample_sources"
        rows = conn.execute(f"""
            SELECT v.run_id, v.sample_index, v.step, v.share, v.flip_share, coalesce(r.kind, 'pspc')
            FROM {view} v JOIN runs r ON r.id = v.run_id
            WHERE r.dataset_id = ? AND v.image_index = ? AND v.share > ?
              AND list_contains(?::VARCHAR[], coalesce(r.kind, 'pspc'))
            ORDER BY v.share DESC, v.run_id, v.sample_index, v.step""",
                            [int(dataset_id), found[0], float(min_share), list(kinds)]).fetchall()
    return [{**dict(zip(("run_id", "sample_index", "step", "share", "flip_share"), r[:5])), "kind": run_kind(r[5]).name}
            for r in rows]


def _step_data(conn, db_path, run_id, sample_index, step):
    info = _check_sample(conn, db_path, run_id, sample_index, step)
    _, height, width = info["shape"]
    pixels = conn.execute("SELECT position, y, x FROM patch_pixels WHERE patch_set_id = ?",
                          [info["patch_set_id"]]).fetchnumpy()
    num_patches = conn.execute("SELECT num_patches FROM patch_sets WHERE id = ?", [info["patch_set_id"]]).fetchone()[0]
    masks = torch.zeros(num_patches, height * width, dtype=torch.float64)
    masks[torch.from_numpy(pixels["position"].astype("int64")),
          torch.from_numpy(pixels["y"].astype("int64") * width + pixels["x"].astype("int64"))] = 1.0
    weights = conn.execute("SELECT position, image_index, flip, weight FROM patch_weights WHERE run_id = ? AND "
                           "sample_index = ? AND step = ?", [int(run_id), int(sample_index), int(step)]).fetchnumpy()
    mass = conn.execute("SELECT position, mass FROM patch_stats WHERE run_id = ? AND sample_index = ? AND step = ?",
                        [int(run_id), int(sample_index), int(step)]).fetchnumpy()
    return info, masks, weights, mass


def _maps(info, masks, weights):
    """Dense per-entry pixel weights [E, H, W] for the entries with kept weight, and the entries (image, flip)."""
    _, height, width = info["shape"]
    position = torch.from_numpy(weights["position"].astype("int64"))
    image = torch.from_numpy(weights["image_index"].astype("int64"))
    flip = torch.from_numpy(weights["flip"].astype(bool))
    key = image * 2 + flip.long()
    entries, inverse = torch.unique(key, return_inverse=True)
    w = torch.from_numpy(weights["weight"].astype("float64"))
    sparse = torch.sparse_coo_tensor(torch.stack([inverse, position]), w, (len(entries), masks.shape[0]),
                                     check_invariants=True).coalesce()
    maps = pixel_weights(sparse, masks)  # [E, H*W] (Eq. 11)
    return entries // 2, entries % 2 == 1, maps.view(len(entries), height, width)


def pixel_attribution(db_path, run_id: int, sample_index: int, step: int, *,
                      timeout: float = database.DEFAULT_TIMEOUT) -> dict:
    """Dense per-pixel attribution of D(z_t) at one step: {"image_index" [E], "flip" [E],
    "weights" [E, H, W] float64}, one map per training entry with a kept weight; weights
    [e, y, x] = sum over patches covering (y, x) of the entry's weight / coverage (the
    pixel_weights view, dense). Summed over entries it is the captured mass per pixel."""
    with database.connect(db_path, read_only=True, timeout=timeout, check_schema=True) as conn:
        info, masks, weights, _ = _step_data(conn, db_path, run_id, sample_index, step)
    image, flip, maps = _maps(info, masks, weights)
    return {"image_index": image, "flip": flip, "weights": maps}


def recompose_step(db_path, run_id: int, sample_index: int, step: int, training_set: TrainingSet, *,
                   timeout: float = database.DEFAULT_TIMEOUT) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 11 from stored data: (recomposed [C, H, W] float64 from the stored weights and
    patch pixels, the stored D(z_t) [C, H, W], per-pixel bound [H, W] = average dropped
    mass 1 - mass of the patches covering the pixel). With full weights the first two agree
    to float precision; with top-k, |recomposed - stored| <= bound (+ float error)."""
    with database.connect(db_path, read_only=True, timeout=timeout, check_schema=True) as conn:
        info, masks, weights, mass = _step_data(conn, db_path, run_id, sample_index, step)
    if training_set.fingerprint != info["fingerprint"]:
        raise StoreError(f"run {run_id} was recorded on another training set (fingerprint {info['fingerprint'][:12]}..., "
                         f"given {training_set.fingerprint[:12]}...)")
    shape = info["shape"]
    image, flip, maps = _maps(info, masks, weights)
    x = training_set.as_float(dtype=torch.float64)[image]  # [E, C, H, W]
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    recomposed = (maps[:, None] * x).sum(0)
    dropped = torch.zeros(masks.shape[0], dtype=torch.float64)
    dropped[torch.from_numpy(mass["position"].astype("int64"))] = torch.from_numpy(
        (1.0 - mass["mass"].astype("float64")).clip(min=0))
    bound = pixel_weights(dropped, masks).view(shape[1:])
    return recomposed, from_blob(info["denoised"], shape).to(torch.float64), bound
