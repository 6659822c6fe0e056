"""C2PA manifests (content credentials, C2PA 2.x) for a sample, built and signed with the c2pa
library (c2pa-python, the Content Authenticity Initiative's bindings of c2pa-rs).

The manifest of a generated sample holds:
- the action c2pa.created with the digital source type trainedAlgorithmicMedia and the
  generator (this tool and its version; the denoiser, sampler, schedule and seeds) as its
  softwareAgent and parameters;
- the training set as an ingredient (relationship inputTo, data type c2pa.types.dataset):
  its name, fingerprint (metadata) and URI (informational_URI, when its source is one);
- for a network-explained or audit run, the network as an ingredient (inputTo,
  c2pa.types.model): name, kind and the sha256 of its file;
- the attribution assertion (auditor.exports.assertion, label ATTRIBUTION_LABEL).
An audited (external) image is no creation of ours: its manifest opens the image as the parent
ingredient (action c2pa.opened) instead, with the same training set, network and assertion.

The PNG is the sample's final image at its own resolution (8-bit, as /api/.../image.png
serves it); the c2pa library embeds the manifest in a caBX chunk and binds it to the file's
bytes with a data hash. No thumbnail (it would be larger than these images), no timestamp
authority, no network access: everything works offline. Without a certificate the manifest is
written as an unsigned manifest archive (the c2pa library's Builder archive) instead.
"""

from __future__ import annotations

import io

import c2pa
import numpy as np
import torch

from auditor.exports.assertion import ATTRIBUTION_LABEL, TOOL_NAME, dataset_uri, generator
from auditor.exports.signing import SigningCredentials, SigningError
from auditor.store.read_models.exports import ExportRecord
from pspc.data.training_set import to_uint8
from pspc.record import own_version

__all__ = ["DIGITAL_SOURCE_TYPE", "OFFLINE", "manifest_definition", "sample_png", "signed_png", "unsigned_archive"]

DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
OFFLINE = {"remote_manifest_fetch": False, "ocsp_fetch": False}
_BUILD_SETTINGS = {"builder": {"thumbnail": {"enabled": False}},
                   # after signing, check the signature and the hash; the verifier decides whom to trust
                   "verify": {**OFFLINE, "verify_after_sign": True, "verify_trust": False}}
_ALGORITHMS = {"es256": c2pa.C2paSigningAlg.ES256, "es384": c2pa.C2paSigningAlg.ES384,
               "es512": c2pa.C2paSigningAlg.ES512, "ps256": c2pa.C2paSigningAlg.PS256,
               "ed25519": c2pa.C2paSigningAlg.ED25519}
PARENT_LABEL = "audited-image"


def sample_png(record: ExportRecord) -> bytes:
    """The final image as an 8-bit PNG (gray or RGB), at its own resolution."""
    from PIL import Image

    pixels = to_uint8(torch.from_numpy(np.array(record.provenance.final_image))).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def _ingredients(record: ExportRecord) -> list[dict]:
    dataset = record.dataset
    data_set = {"title": dataset["name"], "format": "application/octet-stream", "relationship": "inputTo",
                "instance_id": f"urn:pspc-auditor:dataset:sha256:{dataset['fingerprint']}",
                "description": f"training set: {dataset['count']} images, {dataset['channels']}x{dataset['height']}x"
                               f"{dataset['width']}, source {dataset['source'] or 'not recorded'}",
                "data_types": [{"type": "c2pa.types.dataset"}],
                "metadata": {"org.pspc-auditor.dataset": {
                    "name": dataset["name"], "fingerprint": dataset["fingerprint"], "source": dataset["source"],
                    "images": int(dataset["count"])}}}
    uri = dataset_uri(dataset["source"])
    if uri:
        data_set["informational_URI"] = uri
    out = [data_set]
    network = record.network
    if network is not None:
        out.append({"title": network["name"], "format": "application/octet-stream", "relationship": "inputTo",
                    "instance_id": f"urn:pspc-auditor:network:sha256:{network['sha256']}",
                    "description": f"diffusion network ({network['kind']}) whose trajectory PSPC explains",
                    "data_types": [{"type": "c2pa.types.model"}],
                    "metadata": {"org.pspc-auditor.network": {"name": network["name"], "kind": network["kind"],
                                                              "sha256": network["sha256"],
                                                              "fingerprint": network["fingerprint"]}}})
    return out


def manifest_definition(record: ExportRecord, assertion: dict) -> dict:
    """The manifest definition (the c2pa library's JSON) of the sample, without the audited
    parent ingredient (signed_png adds it from the image itself)."""
    run, index = record.run, record.provenance.sample_index
    version = own_version()
    agent = {"name": TOOL_NAME, "version": version}
    if run["kind"] == "external-audit":
        action = {"action": "c2pa.opened", "softwareAgent": agent,
                  "parameters": {"ingredientIds": [PARENT_LABEL], "description": "audited with PSPC attribution",
                                 "generator": generator(record)}}
    else:
        action = {"action": "c2pa.created", "digitalSourceType": DIGITAL_SOURCE_TYPE, "softwareAgent": agent,
                  "parameters": {"generator": generator(record)}}
    return {"claim_generator_info": [agent], "title": f"run {run['id']} sample {index}", "format": "image/png",
            "assertions": [{"label": "c2pa.actions.v2", "data": {"actions": [action]}},
                           {"label": ATTRIBUTION_LABEL, "data": assertion}],
            "ingredients": _ingredients(record)}


def _signer(credentials: SigningCredentials) -> c2pa.Signer:
    info = c2pa.C2paSignerInfo(_ALGORITHMS[credentials.algorithm], credentials.chain_pem, credentials.key_pem, None)
    try:
        return c2pa.Signer.from_info(info)
    except c2pa.C2paError:
        raise SigningError(f"certificate {credentials.cert_path}: the c2pa library refused the certificate or "
                           f"its key") from None


def signed_png(record: ExportRecord, assertion: dict, credentials: SigningCredentials) -> bytes:
    """The sample's PNG with the signed manifest embedded."""
    png = sample_png(record)
    definition = manifest_definition(record, assertion)
    audit = record.run["kind"] == "external-audit"
    with c2pa.Context.from_dict(_BUILD_SETTINGS) as context, c2pa.Builder(definition, context=context) as builder:
        if audit:
            builder.add_ingredient({"title": f"audited image (run {record.run['id']})", "relationship": "parentOf",
                                    "label": PARENT_LABEL}, "image/png", io.BytesIO(png))
        out = io.BytesIO()
        with _signer(credentials) as signer:
            try:
                builder.sign(signer, "image/png", io.BytesIO(png), out)
            except c2pa.C2paError as exc:
                raise SigningError(f"signing with {credentials.cert_path} failed: {_reason(exc)}") from None
    return out.getvalue()


def unsigned_archive(record: ExportRecord, assertion: dict) -> bytes:
    """The manifest as an UNSIGNED manifest archive (c2pa Builder.to_archive): a working store
    that `c2pa.Builder({}).with_archive(...)` loads and signs later. Nobody vouches for it: the
    c2pa library seals an archive with a throw-away self-signed certificate ("LOCAL USE
    ONLY"), which no validator trusts, and nothing binds it to the image."""
    definition = manifest_definition(record, assertion)
    if record.run["kind"] == "external-audit":  # no parent without its image: describe the opened image instead
        action = definition["assertions"][0]["data"]["actions"][0]
        action["parameters"].pop("ingredientIds", None)
    with c2pa.Context.from_dict(_BUILD_SETTINGS) as context, c2pa.Builder(definition, context=context) as builder:
        out = io.BytesIO()
        builder.to_archive(out)
    return out.getvalue()


def _reason(exc: Exception) -> str:
    """The c2pa library's message without its error-kind prefix ('Signature: ...')."""
    text = str(exc).strip()
    kind, _, rest = text.partition(": ")
    return rest if rest and kind.isalpha() else text
