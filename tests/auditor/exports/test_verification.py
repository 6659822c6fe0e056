"""Verifying exported images (auditor.workflows.export.verify_image, auditor.exports.verification):
tampered pixels and a tampered manifest fail with a message naming the check; so do images
without a manifest or with a corrupt one, a signer outside the trust anchor, and an assertion
that no longer matches the store."""

from __future__ import annotations

import shutil

import pytest

from auditor.exports.signing import create_local_ca, load_credentials
from auditor.exports.verification import VerificationError
from auditor.store import database
from auditor.workflows.export import ExportOptions, build_export, verify_image
from tests.support.credentials import failure_codes, read_store, tamper_manifest, tamper_pixels, truncate_manifest
from tests.support.store import fetch


@pytest.fixture(scope="module")
def exported(random_store, local_ca, tmp_path_factory):
    """The signed PNG of run 1 sample 0 of random_store, as a file."""
    credentials = load_credentials(local_ca.signer_cert, local_ca.signer_key)
    path = tmp_path_factory.mktemp("verify") / "run1-sample0.c2pa.png"
    path.write_bytes(build_export(random_store.db, 1, 0, ExportOptions(credentials=credentials)).data)
    return path


def write(tmp_path, data: bytes, name="image.png"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_a_signed_export_verifies_and_matches_the_store(exported, local_ca, random_store):
    report = verify_image(exported, trust_anchor=local_ca.ca_cert, db_path=random_store.db)
    assert report.reading.trusted and report.reading.state == "Trusted"
    assert report.store == f"matches run 1 sample 0 of {random_store.db}"
    assert report.reading.assertion["run_id"] == 1 and report.reading.signer["issuer"] == "pspc-auditor"
    untrusted = verify_image(exported, db_path=random_store.db)
    assert not untrusted.reading.trusted and untrusted.reading.state == "Valid"


def test_tampered_pixels_fail_verification(exported, local_ca, tmp_path):
    tampered = tamper_pixels(exported.read_bytes())
    assert "assertion.dataHash.mismatch" in failure_codes(read_store(tampered, local_ca.ca_cert.read_text()))
    with pytest.raises(VerificationError, match=r"FAILED verification \(Invalid\): assertion\.dataHash\.mismatch: "
                                                r"the image's bytes \(its pixels\) changed after it was signed"):
        verify_image(write(tmp_path, tampered), trust_anchor=local_ca.ca_cert)


def test_a_tampered_manifest_fails_verification(exported, local_ca, tmp_path):
    # the first source's owner (hostile metadata: 'Owner <script>x</script>') rewritten in the manifest
    tampered = tamper_manifest(exported.read_bytes(), b"<script>x</script>", b"<script>y</script>")
    assert "assertion.hashedURI.mismatch" in failure_codes(read_store(tampered, local_ca.ca_cert.read_text()))
    with pytest.raises(VerificationError, match="assertion.hashedURI.mismatch: an assertion of the manifest changed "
                                                "after it was signed"):
        verify_image(write(tmp_path, tampered), trust_anchor=local_ca.ca_cert)


@pytest.mark.parametrize("case, message", [
    ("no manifest", "has no C2PA manifest"),
    ("corrupt manifest", "its C2PA manifest is corrupt or unreadable"),
    ("not a png", "is not a PNG file"),
    ("missing file", "cannot read it"),
])
def test_images_without_a_readable_manifest_are_refused(exported, random_store, tmp_path, case, message):
    from auditor.exports.c2pa_manifest import sample_png
    from auditor.store.read_models.exports import load_export_record

    if case == "no manifest":
        path = write(tmp_path, sample_png(load_export_record(random_store.db, 1, 0, images=lambda d: [])))
    elif case == "corrupt manifest":
        path = write(tmp_path, truncate_manifest(exported.read_bytes()))
    elif case == "not a png":
        path = write(tmp_path, b"GIF89a not a png")
    else:
        path = tmp_path / "absent.png"
    with pytest.raises(VerificationError, match=message) as caught:
        verify_image(path)
    assert str(path) in str(caught.value)


def test_a_signer_outside_the_trust_anchor_fails(exported, tmp_path):
    other = create_local_ca(tmp_path / "other-ca")
    with pytest.raises(VerificationError, match="signingCredential.untrusted: the signing certificate does not chain "
                                                "to the trust anchor"):
        verify_image(exported, trust_anchor=other.ca_cert)
    with pytest.raises(VerificationError, match="trust anchor .*: not a PEM certificate"):
        verify_image(exported, trust_anchor=write(tmp_path, b"garbage", "ca.pem"))


def copy_store(random_store, tmp_path):
    path = tmp_path / "provenance.duckdb"
    shutil.copy(random_store.db, path)
    return path


def test_an_assertion_that_no_longer_matches_the_store_fails(exported, random_store, tmp_path):
    db = copy_store(random_store, tmp_path)
    with database.connect(db) as conn:
        conn.execute("UPDATE step_shares SET share = share * 1.5 WHERE run_id = 1 AND sample_index = 0")
    with pytest.raises(VerificationError, match=r"does not match run 1 sample 0 of .*captured mass.*source #1 "
                                                r"\(.*\): share"):
        verify_image(exported, db_path=db)


def test_changed_stored_pixels_are_noticed(exported, random_store, tmp_path):
    db = copy_store(random_store, tmp_path)
    (blob,), = fetch(db, "SELECT final_image FROM samples WHERE run_id = 1 AND sample_index = 0")
    with database.connect(db) as conn:
        conn.execute("UPDATE samples SET final_image = ? WHERE run_id = 1 AND sample_index = 0",
                     [bytes(4) + blob[4:]])
    with pytest.raises(VerificationError, match="sample_sha256: the image's does not match the store's.*the image's "
                                                "pixels are not the stored final image's"):
        verify_image(exported, db_path=db)


@pytest.mark.slow  # kinds_store records a comparison
def test_another_store_or_none_is_not_compared(exported, kinds_store, tmp_path):
    report = verify_image(exported, db_path=kinds_store.db)  # its run 1 is another run
    assert report.store.startswith("not compared: run 1 of") and "another run" in report.store
    assert verify_image(exported, db_path=tmp_path / "none.duckdb").store.startswith("not compared: no local store")
