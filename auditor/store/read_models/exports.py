"""What an export of one sample (a C2PA manifest, a W3C PROV document) needs from the store,
read in ONE read-only transaction: the sample's provenance (SampleProvenance), the metadata
and sha256 of the training images its attribution names, the network of a network-explained
run or an audit, and the identity of the run and of the sample's final image.

The run fingerprint is a sha256 over the run's recorded identity (id, dataset fingerprint,
creation and completion time, configuration, seed): a copy of the store reproduces it, another
store's run with the same id does not. `auditor verify` uses it to tell whether the run an
image names is the one in the local store.
"""

from __future__ import annotations

import hashlib
import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from auditor.store import database
from auditor.store.read_models.sample import SampleProvenance

__all__ = ["ExportRecord", "load_export_record", "run_fingerprint"]

NETWORK_COLUMNS = ("id", "fingerprint", "sha256", "name", "kind", "source")
_FINGERPRINT_KEYS = ("id", "dataset_id", "kind", "created_at", "finished_at", "seed", "num_samples", "top_k",
                     "mass_threshold", "denoiser", "sampler", "network_id")


@dataclass(frozen=True, kw_only=True)
class ExportRecord:
    """provenance: the sample (its run, dataset, steps, shares, weights; `images` fetched for
    the training images the export names, with pixels=False); network: the networks row
    (NETWORK_COLUMNS) of a network-explained or audit run, else None; image_sha256:
    image_index -> sha256 of the training image's bytes; store: the store's identity (file
    name, host, schema revision); run_fingerprint; sample_sha256: sha256 of the
    final image's stored float32 bytes (None while it is not stored)."""

    provenance: SampleProvenance
    network: dict | None
    image_sha256: dict[int, str]
    store: dict
    run_fingerprint: str
    sample_sha256: str | None

    @property
    def run(self) -> dict:
        return self.provenance.run

    @property
    def dataset(self) -> dict:
        return self.provenance.dataset


def run_fingerprint(run: dict, dataset: dict) -> str:
    """sha256 (hex) over the run's recorded identity and its dataset's fingerprint."""
    identity = {key: run.get(key) for key in _FINGERPRINT_KEYS}
    identity["dataset_fingerprint"] = dataset["fingerprint"]
    text = json.dumps(identity, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def load_export_record(db_path, run_id: int, sample_index: int, *,
                       images: Callable[[SampleProvenance], Iterable[int]],
                       timeout: float = database.DEFAULT_TIMEOUT) -> ExportRecord:
    """Read the sample and what its export names in one read-only transaction; `images` gives
    the training images to fetch (called inside the transaction). NotFoundError for unknown ids."""
    with database.connect(db_path, read_only=True, timeout=timeout, check_schema=True) as conn:
        data = SampleProvenance.read(conn, db_path, run_id, sample_index)
        wanted = sorted({int(i) for i in images(data)})
        data.fetch_images(conn, wanted, pixels=False)
        sha = dict(conn.execute("SELECT image_index, sha256 FROM training_images WHERE dataset_id = ? AND image_index "
                                "IN (SELECT unnest(?::INTEGER[]))", [int(data.dataset["id"]), wanted]).fetchall())
        network = None
        if data.run.get("network_id") is not None:
            row = conn.execute(f"SELECT {', '.join(NETWORK_COLUMNS)} FROM networks WHERE id = ?",
                               [int(data.run["network_id"])]).fetchone()
            network = dict(zip(NETWORK_COLUMNS, row)) if row else None
    final = data.final_image
    final_sha256 = None if final is None else hashlib.sha256(np.ascontiguousarray(final, "<f4").tobytes()).hexdigest()
    path = Path(db_path)
    return ExportRecord(
        provenance=data, network=network, image_sha256={int(k): str(v) for k, v in sha.items()},
        store={"file": path.name, "host": socket.gethostname(),
               "schema_revision": database.head_revision()},
        run_fingerprint=run_fingerprint(data.run, data.dataset),
        sample_sha256=final_sha256)
