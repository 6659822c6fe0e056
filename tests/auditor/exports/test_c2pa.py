"""C2PA exports (auditor.exports.c2pa_manifest, auditor.workflows.export.build_export), read back
with the c2pa library's own Reader as a third party would: the signature validates against
the local CA, and the manifest says what the store says.

The store is `random_store` (tests/conftest.py: hostile rights metadata, run 1 complete with
full weights); network-explained and audit runs come from `kinds_store` (conftest.py).
"""

from __future__ import annotations

import hashlib
import io

import c2pa
import numpy as np
import pytest

from auditor.exports.assertion import ATTRIBUTION_LABEL, PARTIAL_COPY_WEIGHT
from auditor.exports.c2pa_manifest import DIGITAL_SOURCE_TYPE
from auditor.exports.signing import load_credentials
from auditor.store import attribution
from auditor.store.scores import HEADLINE_SCORE, score_sources
from auditor.store.read_models.exports import run_fingerprint
from auditor.store.recorder import from_blob
from auditor.store.runs import load_run
from auditor.workflows.export import ExportOptions, build_export
from pspc.data.training_set import to_uint8
from pspc.record import own_version
from tests.support.credentials import active_manifest, assertion, failure_codes, read_store
from tests.support.store import fetch

SOURCES = ("image_index", "image_id", "source_uri", "owner", "license")


@pytest.fixture(scope="module")
def credentials(local_ca):
    return load_credentials(local_ca.signer_cert, local_ca.signer_key)


@pytest.fixture(scope="module")
def signed(random_store, credentials):
    return build_export(random_store.db, random_store.complete_run, 0, ExportOptions(credentials=credentials))


def test_the_c2pa_reader_validates_the_signature_against_the_local_ca(signed, local_ca):
    store = read_store(signed.data, local_ca.ca_cert.read_text())
    assert store["validation_state"] == "Trusted", store["validation_results"]
    results = store["validation_results"]["activeManifest"]
    success = {r["code"] for r in results["success"]}
    assert results["failure"] == [] and {"signingCredential.trusted", "claimSignature.validated",
                                         "assertion.dataHash.match"} <= success
    assert active_manifest(store)["signature_info"]["issuer"] == "pspc-auditor"
    assert signed.signed and signed.media_type == "image/png" and signed.filename == "run1-sample0.c2pa.png"


def test_without_a_trust_anchor_the_signature_holds_but_the_signer_is_untrusted(signed):
    store = read_store(signed.data)
    assert store["validation_state"] == "Valid" and failure_codes(store) == ["signingCredential.untrusted"]


def test_the_png_is_the_stored_final_image(signed, random_store):
    from PIL import Image

    (blob,), = fetch(random_store.db, "SELECT final_image FROM samples WHERE run_id = 1 AND sample_index = 0")
    stored = to_uint8(from_blob(blob, (3, 8, 8))).numpy().transpose(1, 2, 0)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(signed.data)).convert("RGB")), stored)
    assert signed.image_bytes < len(signed.data)


def test_the_creation_action_names_the_source_type_and_the_generator(signed, random_store):
    manifest = active_manifest(read_store(signed.data))
    (action,) = assertion(manifest, "c2pa.actions.v2")["actions"]
    assert action["action"] == "c2pa.created" and action["digitalSourceType"] == DIGITAL_SOURCE_TYPE
    assert action["softwareAgent"] == {"name": "pspc-auditor", "version": own_version()}
    generator = action["parameters"]["generator"]
    run, _ = load_run(random_store.db, 1)
    assert (generator["denoiser"]["kind"], generator["run_seed"], generator["sample_seed"]) == ("pspc-square", 5, 5)
    # lists of numbers are text: the Reader's JSON shows CBOR number arrays as (garbled) byte strings
    assert [float(v) for v in generator["sampler"]["time_steps"].split(",")] == run["sampler"]["time_steps"]
    assert manifest["claim_generator_info"][0]["name"] == "pspc-auditor"


def test_the_training_set_is_an_input_ingredient(signed, random_store):
    (ingredient,) = active_manifest(read_store(signed.data))["ingredients"]
    (name, fingerprint, count), = fetch(random_store.db, "SELECT name, fingerprint, count FROM datasets")
    assert (ingredient["title"], ingredient["relationship"]) == (name, "inputTo")
    assert ingredient["data_types"] == [{"type": "c2pa.types.dataset"}]
    assert ingredient["metadata"]["org.pspc-auditor.dataset"]["fingerprint"] == fingerprint
    assert fingerprint in ingredient["instance_id"] and f"{count} images" in ingredient["description"]


def test_the_attribution_assertion_is_what_the_store_says(signed, random_store):
    claim = assertion(active_manifest(read_store(signed.data)), ATTRIBUTION_LABEL)
    db = random_store.db
    expected = score_sources(db, 1, 0, score=HEADLINE_SCORE, top=10)  # ranked by the headline score
    final = {r["image_index"]: r for r in attribution.sample_sources(db, 1, 0, top=1000)}
    trajectory = {r["image_index"]: r["share"] for r in attribution.trajectory_sources(db, 1, 0, top=1000)}
    assert claim["headline"]["score"] == HEADLINE_SCORE and claim["headline"]["meaning"]
    assert [tuple(s[k] for k in SOURCES) for s in claim["top_sources"]] == [tuple(r[k] for k in SOURCES)
                                                                           for r in expected]
    for got, want in zip(claim["top_sources"], expected):
        assert got["headline_score"] == pytest.approx(want["score"], rel=1e-12)
        stored = final.get(want["image_index"], {"share": 0.0, "flip_share": 0.0})  # none in the final image
        assert got["share"] == pytest.approx(stored["share"], rel=1e-12)
        assert got["flip_share"] == pytest.approx(stored["flip_share"], rel=1e-12, abs=1e-15)
        assert got["trajectory_share"] == pytest.approx(trajectory[want["image_index"]], rel=1e-12)
    (total, count), = fetch(db, "SELECT sum(share), count(*) FROM sample_sources WHERE run_id = 1 AND sample_index = 0")
    assert claim["captured_mass"] == pytest.approx(total, rel=1e-12) and count <= claim["sources_total"]
    assert claim["sources_total"] == len(score_sources(db, 1, 0, score=HEADLINE_SCORE, top=10**6))
    assert any("<" in s["image_id"] for s in claim["top_sources"])  # the hostile ids arrive as they are
    run, dataset = load_run(db, 1)
    (blob,), = fetch(db, "SELECT final_image FROM samples WHERE run_id = 1 AND sample_index = 0")
    assert (claim["run_id"], claim["sample_index"]) == (1, 0)
    assert claim["store"]["run_fingerprint"] == run_fingerprint(run, dataset)
    assert claim["store"]["sample_sha256"] == hashlib.sha256(blob).hexdigest()
    assert claim["store"]["file"] == "provenance.duckdb" and claim["dataset"]["fingerprint"] == dataset["fingerprint"]
    assert claim["verdict"]["status"] == "not assessed" and "no copy verdict is recorded" in claim["verdict"]["note"]


def test_regions_of_interest_are_where_a_source_holds_most_of_each_pixel(signed, random_store):
    claim = assertion(active_manifest(read_store(signed.data)), ATTRIBUTION_LABEL)
    (final_step,), = fetch(random_store.db, "SELECT step FROM steps WHERE run_id = 1 AND sample_index = 0 "
                                            "AND t_next = 0")
    dense = attribution.pixel_attribution(random_store.db, 1, 0, final_step)
    found = 0
    for source in claim["top_sources"]:
        weight = dense["weights"][dense["image_index"] == source["image_index"]].sum(0).numpy()
        mask = weight >= PARTIAL_COPY_WEIGHT
        if not mask.any():
            assert source["regions_of_interest"] == []
            continue
        found += 1
        ys, xs = np.nonzero(mask)
        (roi,) = source["regions_of_interest"]
        assert roi["region"] == [{"type": "rectangle", "unit": "pixel", "x": xs.min(), "y": ys.min(),
                                  "width": xs.max() - xs.min() + 1, "height": ys.max() - ys.min() + 1}]
        assert roi["pixels"] == mask.sum() and roi["role"] == "c2pa.areaOfInterest"
    assert found  # at t -> 0 with full weights, the top sources dominate some pixels


def test_the_unsigned_archive_holds_the_same_manifest_and_can_be_signed_later(random_store, signed, credentials,
                                                                              local_ca):
    unsigned = build_export(random_store.db, 1, 0, ExportOptions())
    assert not unsigned.signed and unsigned.filename == "run1-sample0.unsigned.c2pa"
    assert unsigned.media_type == "application/c2pa"
    archived = active_manifest(read_store(unsigned.data, fmt="application/c2pa"))
    claim = assertion(active_manifest(read_store(signed.data)), ATTRIBUTION_LABEL)
    assert assertion(archived, ATTRIBUTION_LABEL)["top_sources"] == claim["top_sources"]
    # nobody signed it: the c2pa library seals archives with a throw-away self-signed certificate
    assert "Self-signed ephemeral" in archived["signature_info"]["issuer"]
    assert read_store(unsigned.data, local_ca.ca_cert.read_text(), fmt="application/c2pa")["validation_state"] \
        != "Trusted"
    # a third party can sign the archive later with the c2pa library
    png = io.BytesIO()
    with c2pa.Context.from_dict({"verify": {"verify_trust": False}}) as context, \
            c2pa.Builder({}, context=context).with_archive(io.BytesIO(unsigned.data)) as builder, \
            c2pa.Signer.from_info(c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, credentials.chain_pem,
                                                      credentials.key_pem, None)) as signer:
        from auditor.exports.c2pa_manifest import sample_png
        from auditor.store.read_models.exports import load_export_record

        record = load_export_record(random_store.db, 1, 0, images=lambda d: [])
        builder.sign(signer, "image/png", io.BytesIO(sample_png(record)), png)
    assert read_store(png.getvalue(), local_ca.ca_cert.read_text())["validation_state"] == "Trusted"


@pytest.mark.slow  # kinds_store records a comparison and an audit
def test_a_network_sample_names_the_network_as_an_ingredient(kinds_store, credentials, local_ca):
    export = build_export(kinds_store.db, kinds_store.network_run, 0, ExportOptions(credentials=credentials))
    store = read_store(export.data, local_ca.ca_cert.read_text())
    assert store["validation_state"] == "Trusted"
    manifest = active_manifest(store)
    dataset, network = manifest["ingredients"]
    (sha256, name), = fetch(kinds_store.db, "SELECT sha256, name FROM networks")
    assert (network["title"], network["relationship"], network["data_types"]) == (
        name, "inputTo", [{"type": "c2pa.types.model"}])
    assert network["metadata"]["org.pspc-auditor.network"]["sha256"] == sha256 and sha256 in network["instance_id"]
    claim = assertion(manifest, ATTRIBUTION_LABEL)
    assert claim["network"]["sha256"] == sha256 and claim["copy_matches"]
    (action,) = assertion(manifest, "c2pa.actions.v2")["actions"]
    assert action["parameters"]["generator"]["run_kind"] == "network-explained"


@pytest.mark.slow  # kinds_store records a comparison and an audit
def test_an_audited_image_is_opened_as_the_parent_not_created(kinds_store, credentials, local_ca):
    export = build_export(kinds_store.db, kinds_store.audit_run, 0, ExportOptions(credentials=credentials))
    store = read_store(export.data, local_ca.ca_cert.read_text())
    assert store["validation_state"] == "Trusted"
    manifest = active_manifest(store)
    (action,) = assertion(manifest, "c2pa.actions.v2")["actions"]
    assert action["action"] == "c2pa.opened" and "digitalSourceType" not in action
    parent = next(i for i in manifest["ingredients"] if i["relationship"] == "parentOf")
    assert parent["format"] == "image/png" and "audited image" in parent["title"]
    claim = assertion(manifest, ATTRIBUTION_LABEL)
    stored = fetch(kinds_store.db, "SELECT rank, image_index, score FROM copy_matches WHERE run_id = ? "
                                   "ORDER BY rank", [kinds_store.audit_run])
    assert [(m["rank"], m["image_index"]) for m in claim["copy_matches"]] == [(r, i) for r, i, _ in stored]
    assert claim["copy_matches"][0]["image_index"] == 5  # the audited image is training image 5
