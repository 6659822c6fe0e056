"""Networks in the provenance store (table networks): identified by what determines D(z, t).

A network compared with PSPC or used to audit an image is stored once, by fingerprint: the
sha256 of its file (or of an in-memory module's tensors) together with the image shape and
any conversion (a VP epsilon-prediction model's timestep rule).
"""

from __future__ import annotations

import hashlib
import json

from pspc.denoisers import NetworkDenoiser
from pspc.record import module_sha256

from auditor.store import database
from auditor.store.recorder import utcnow

__all__ = ["network_fingerprint", "register_network"]


def network_fingerprint(network: NetworkDenoiser) -> tuple[str, str]:
    """(fingerprint, sha256): sha256 of the file (or of an in-memory module's tensors), and
    the fingerprint over it, the image shape and any conversion (a VP epsilon-prediction
    model's timestep rule): what determines the network's D(z, t)."""
    record = network.record or {}
    sha256 = record.get("sha256") or module_sha256(network.net)
    identity = {"sha256": sha256, "image_shape": list(network.image_shape),
                **{k: record[k] for k in ("conversion", "timestep", "schedule_steps") if k in record}}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest(), sha256


def register_network(db_path, network: NetworkDenoiser, *, timeout: float = database.DEFAULT_TIMEOUT) -> int:
    """The network's id in the store (table networks), inserting it if new (by fingerprint)."""
    fingerprint, sha256 = network_fingerprint(network)
    record = network.describe()
    c, h, w = network.image_shape
    with database.connect(db_path, timeout=timeout) as conn:
        found = conn.execute("SELECT id FROM networks WHERE fingerprint = ?", [fingerprint]).fetchone()
        if found:
            return int(found[0])
        return int(conn.execute(
            "INSERT INTO networks (fingerprint, sha256, name, kind, source, channels, height, width, config, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            [fingerprint, sha256, network.name, (network.record or {}).get("kind", "module"),
             (network.record or {}).get("path"), c, h, w, json.dumps(record, default=str), utcnow()]).fetchone()[0])
