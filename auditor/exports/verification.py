"""Reading a PNG's C2PA manifest back with the c2pa library's own Reader: its signature, the
hash that binds it to the image's bytes, whether the signer chains to a trust anchor, and the
attribution assertion it carries.

The Reader validates everything on reading; its validation state is Invalid (a check
failed), Valid (signature and hashes hold, the signer is not trusted) or Trusted (and the
signing certificate chains to a trust anchor given here, e.g. the ca.pem of
`auditor c2pa init-ca`). A failed check is a VerificationError that names it: changed
pixels (assertion.dataHash.mismatch), a changed manifest (assertion.hashedURI.mismatch,
claimSignature.mismatch), a signer outside the trust anchor (signingCredential.untrusted, when
one is given). So is a file without a manifest, or with one the Reader cannot parse.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import c2pa
import numpy as np

from auditor.errors import UserError
from auditor.exports.assertion import ATTRIBUTION_LABEL
from auditor.exports.c2pa_manifest import OFFLINE

__all__ = ["FAILURE_MEANINGS", "ManifestReading", "VerificationError", "png_pixels", "read_manifest"]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
UNTRUSTED = "signingCredential.untrusted"
FAILURE_MEANINGS = {
    "assertion.dataHash.mismatch": "the image's bytes (its pixels) changed after it was signed",
    "assertion.hashedURI.mismatch": "an assertion of the manifest changed after it was signed",
    "assertion.hashedURI.missing": "an assertion the claim names is missing from the manifest",
    "claimSignature.mismatch": "the claim does not match its signature (the manifest changed after it was signed)",
    "claimSignature.missing": "the manifest is not signed",
    "claimSignature.outsideValidity": "the signature was made outside the signing certificate's validity",
    "signingCredential.untrusted": "the signing certificate does not chain to the trust anchor",
    "signingCredential.invalid": "the signing certificate is not valid for C2PA signing",
    "signingCredential.expired": "the signing certificate has expired",
    "signingCredential.revoked": "the signing certificate was revoked",
}


class VerificationError(UserError):
    """An image whose content credentials are missing, unreadable, or fail a check."""


@dataclass(frozen=True, kw_only=True)
class ManifestReading:
    """What the Reader found: state (Valid or Trusted: a reading that failed raised instead),
    trusted (the signer chains to the trust anchor given), signer (issuer and common name,
    signing time when recorded), the active manifest's label, its ingredients, the
    attribution assertion, and every validation code (success and informational)."""

    state: str
    trusted: bool
    signer: dict
    manifest_label: str
    ingredients: list[dict]
    assertion: dict
    codes: list[str] = field(default_factory=list)


def _context(trust_anchor_pem: str | None) -> c2pa.Context:
    settings = {"verify": {**OFFLINE, "verify_after_reading": True, "verify_trust": True}}
    if trust_anchor_pem:
        settings["trust"] = {"user_anchors": trust_anchor_pem}
    return c2pa.Context.from_dict(settings)


def _failure_text(failure: dict) -> str:
    code = failure.get("code", "?")
    meaning = FAILURE_MEANINGS.get(code) or failure.get("explanation") or "check failed"
    return f"{code}: {meaning}"


def read_manifest(data: bytes, name: str, trust_anchor_pem: str | None = None) -> ManifestReading:
    """Read and validate the C2PA manifest of the PNG bytes `data` (`name` for messages).
    VerificationError for a non-PNG, a missing or unreadable manifest, a failed check, a
    signer outside `trust_anchor_pem` (when given) or a manifest without the attribution assertion."""
    if not data.startswith(PNG_MAGIC):
        raise VerificationError(f"{name} is not a PNG file")
    try:
        with _context(trust_anchor_pem) as context, c2pa.Reader("image/png", io.BytesIO(data),
                                                                context=context) as reader:
            store = json.loads(reader.json())
    except c2pa.C2paError.ManifestNotFound:
        raise VerificationError(f"{name} has no C2PA manifest (no content credentials to verify)") from None
    except c2pa.C2paError as exc:
        raise VerificationError(f"{name}: its C2PA manifest is corrupt or unreadable ({exc})") from None
    results = (store.get("validation_results") or {}).get("activeManifest") or {}
    failures = [f for f in results.get("failure", []) if trust_anchor_pem or f.get("code") != UNTRUSTED]
    state = store.get("validation_state") or "Unknown"
    if failures or state == "Invalid":
        reasons = "; ".join(_failure_text(f) for f in failures) or "a check of an ingredient's manifest failed"
        raise VerificationError(f"{name} FAILED verification ({state}): {reasons}")
    label = store.get("active_manifest")
    manifest = (store.get("manifests") or {}).get(label) or {}
    assertion = next((a.get("data") for a in manifest.get("assertions", []) if a.get("label") == ATTRIBUTION_LABEL),
                     None)
    if not isinstance(assertion, dict):
        raise VerificationError(f"{name}: its C2PA manifest is valid but holds no pspc-auditor attribution "
                                f"assertion ({ATTRIBUTION_LABEL})")
    signature = manifest.get("signature_info") or {}
    codes = [r.get("code") for kind in ("success", "informational") for r in results.get(kind, [])]
    return ManifestReading(state=state, trusted=state == "Trusted", manifest_label=label,
                           signer={k: signature.get(k) for k in ("issuer", "common_name", "alg", "time")},
                           ingredients=manifest.get("ingredients", []), assertion=assertion, codes=codes)


def png_pixels(data: bytes) -> np.ndarray:
    """The PNG's pixels as uint8 [C, H, W] (C = 1 for gray, 3 for colour)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        array = np.asarray(image.convert("L" if image.mode in ("1", "L", "I", "I;16") else "RGB"))
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
