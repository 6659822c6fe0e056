"""EDM data set zips (NVlabs/edm dataset_tool.py): images plus an optional dataset.json."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

from pspc.data.files import (
    PathLike, check_limit, file_error, image_tensor, make_training_set, record_uris, require_file, wrap_errors
)
from pspc.data.image_folder import IMAGE_SUFFIXES, decode_images, is_image_name
from pspc.data.training_set import TrainingSet


def _edm_labels(zf: zipfile.ZipFile, path: Path, names: set[str]) -> dict[str, object]:
    if "dataset.json" not in zf.namelist():
        return {}
    where = f"{path}:dataset.json"
    with wrap_errors(where, "unreadable dataset.json"):
        doc = json.loads(zf.read("dataset.json"))
    if not isinstance(doc, dict):
        raise file_error(where, f"expected a JSON object with 'labels', got {type(doc).__name__}")
    labels = doc.get("labels")
    if labels is None:
        return {}
    if not isinstance(labels, list) or not all(isinstance(e, list) and len(e) == 2 for e in labels):
        raise file_error(where, "'labels' must be a list of [file, label] pairs or null")
    mapping = {str(name): label for name, label in labels}
    unknown = sorted(set(mapping) - names)
    if unknown:
        raise file_error(where, f"labels for {len(unknown)} file(s) not in the zip: {unknown[:5]}")
    return mapping


def load_edm_zip(path: PathLike, *, limit: int | None = None) -> TrainingSet:
    """An EDM-style data set zip (NVlabs/edm dataset_tool.py): images plus optional dataset.json.

    Images (PNG, or JPEG/BMP/WebP) at any depth, sorted by in-zip path, which is also the id.
    dataset.json {"labels": [["00000/img00000000.png", 6], ...] or null} gives labels. All
    images must have one size; channels follow the image-folder rules (L -> 1, else 3).
    """
    limit = check_limit(limit)
    path = require_file(path, "EDM dataset zip")
    with wrap_errors(path, "corrupt or unreadable zip file"), zipfile.ZipFile(path) as zf:
        names = sorted(n for n in zf.namelist() if not n.endswith("/") and is_image_name(n.split("/")))
        if not names:
            raise file_error(path, f"no images ({', '.join(IMAGE_SUFFIXES)}) in this zip (empty set)")
        labels = _edm_labels(zf, path, set(names))
        names = names[:limit]
        sources = [(n, f"{path}:{n}", lambda n=n: io.BytesIO(zf.read(n))) for n in names]
        pixels = decode_images(sources, size=None, resize="error", channels=None)
    metadata = []
    for n, uri in zip(names, record_uris(path, names)):
        row = {"source_uri": uri}
        if labels.get(n) is not None:
            row["label"] = labels[n]
        metadata.append(row)
    return make_training_set(image_tensor(pixels), names, metadata, path.stem, path)
