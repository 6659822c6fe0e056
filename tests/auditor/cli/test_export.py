"""`auditor c2pa init-ca`, `auditor export` and `auditor verify` as the README uses them, on a copy
of a recorded store; bad input ends with `auditor: error: ...` and exit status 2."""

from __future__ import annotations

import json
import shutil
import stat

import pytest
from prov.model import ProvDocument

from tests.support.cli import run_cli
from tests.support.credentials import tamper_manifest, tamper_pixels


@pytest.fixture
def workdir(random_store, tmp_path, monkeypatch):
    """A folder holding a copy of random_store as ./provenance.duckdb, the current directory."""
    shutil.copy(random_store.db, tmp_path / "provenance.duckdb")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AUDITOR_DB", raising=False)
    monkeypatch.delenv("AUDITOR_C2PA_CERT", raising=False)
    monkeypatch.delenv("AUDITOR_C2PA_KEY", raising=False)
    return tmp_path


def test_init_ca_export_and_verify_as_in_the_readme(workdir, capsys):
    code, out, err = run_cli(capsys, "c2pa", "init-ca")
    assert code == 0, err
    assert "c2pa-ca/ca.pem" in out and "--trust-anchor c2pa-ca/ca.pem" in out
    code, out, err = run_cli(capsys, "export", "1/0", "--format", "c2pa", "--cert", "c2pa-ca/signer.pem",
                             "--key", "c2pa-ca/signer.key")
    assert code == 0, err
    image = workdir / "run1-sample0.c2pa.png"
    assert f"wrote {image.name}" in out and "bytes of C2PA manifest" in out
    assert stat.S_IMODE(image.stat().st_mode) == 0o600
    code, out, err = run_cli(capsys, "verify", image.name, "--trust-anchor", "c2pa-ca/ca.pem")
    assert code == 0, err
    assert "signature and image hash verified; signer trusted (chains to c2pa-ca/ca.pem)" in out
    assert "store: matches run 1 sample 0 of provenance.duckdb" in out
    assert "verdict: not assessed" in out and "captured mass" in out
    code, out, _ = run_cli(capsys, "verify", image.name)
    assert code == 0 and "signer NOT checked against a trust anchor" in out
    code, out, _ = run_cli(capsys, "verify", image.name, "--json")
    claim = json.loads(out)
    assert (claim["run_id"], claim["sample_index"]) == (1, 0)
    assert len(claim["top_sources"]) == min(10, claim["sources_total"]) > 0


def test_tampered_images_fail_with_exit_status_2(workdir, capsys):
    run_cli(capsys, "c2pa", "init-ca")
    run_cli(capsys, "export", "1/0", "--cert", "c2pa-ca/signer.pem", "--key", "c2pa-ca/signer.key", "--out", "s.png")
    signed = (workdir / "s.png").read_bytes()
    (workdir / "pixels.png").write_bytes(tamper_pixels(signed))
    (workdir / "manifest.png").write_bytes(tamper_manifest(signed, b"<script>x</script>", b"<script>z</script>"))
    for name, code_word in (("pixels.png", "assertion.dataHash.mismatch"), ("manifest.png", "assertion.hashedURI")):
        code, out, err = run_cli(capsys, "verify", name, "--trust-anchor", "c2pa-ca/ca.pem")
        assert code == 2 and out == "" and f"auditor: error: {name} FAILED verification" in err and code_word in err


def test_without_a_certificate_the_export_is_an_unsigned_archive(workdir, capsys):
    code, out, err = run_cli(capsys, "export", "1/0")
    assert code == 0, err
    assert "UNSIGNED C2PA manifest archive" in out and (workdir / "run1-sample0.unsigned.c2pa").is_file()
    code, _, err = run_cli(capsys, "export", "1/0", "--out", "looks-signed.png")
    assert code == 2 and "name it *.unsigned.c2pa" in err and not (workdir / "looks-signed.png").exists()


def test_the_certificate_can_come_from_the_environment(workdir, capsys, monkeypatch):
    run_cli(capsys, "c2pa", "init-ca", "--dir", "ca")
    monkeypatch.setenv("AUDITOR_C2PA_CERT", str(workdir / "ca" / "signer.pem"))
    monkeypatch.setenv("AUDITOR_C2PA_KEY", str(workdir / "ca" / "signer.key"))
    code, out, err = run_cli(capsys, "export", "1/1")
    assert code == 0 and "signed by" in out and (workdir / "run1-sample1.c2pa.png").is_file(), err


def test_prov_exports(workdir, capsys):
    code, out, err = run_cli(capsys, "export", "1/0", "--format", "prov-json", "--top", "4")
    assert code == 0 and "W3C PROV" in out, err
    doc = ProvDocument.deserialize(content=(workdir / "run1-sample0.prov.json").read_text(), format="json")
    assert sum(type(r).__name__ == "ProvInfluence" and r.args[0].localpart == "sample0" for r in doc.get_records()) == 4
    code, _, err = run_cli(capsys, "export", "1/0", "--format", "prov-n", "--out", "p.provn")
    assert code == 0 and (workdir / "p.provn").read_text().startswith("document"), err


@pytest.mark.parametrize("argv, words", [
    (["export", "9/0"], ["no run 9"]),
    (["export", "1/5"], ["has no sample 5"]),
    (["export", "2/0", "--format", "prov-json"], ["run 2 is failed", "only complete runs are exported"]),
    (["export", "1-0"], ["expected RUN/SAMPLE"]),
    (["export", "1/0", "--cert", "c2pa-ca/signer.pem"], ["the key (--key or AUDITOR_C2PA_KEY) is missing"]),
    (["export", "1/0", "--cert", "c2pa-ca/signer.pem", "--key", "c2pa-ca/ca.key"], ["does not belong to certificate"]),
    (["export", "1/0", "--cert", "c2pa-ca/ca.pem", "--key", "c2pa-ca/ca.key"], ["is a CA certificate"]),
    (["verify", "provenance.duckdb"], ["is not a PNG file"]),
    (["verify", "missing.png"], ["cannot read it"]),
    (["c2pa", "init-ca"], ["exist already; pass --force"]),
])
def test_bad_input_is_one_error_line_and_writes_nothing(workdir, capsys, argv, words):
    run_cli(capsys, "c2pa", "init-ca")
    before = sorted(p.name for p in workdir.iterdir())
    code, out, err = run_cli(capsys, *argv)
    assert code == 2, (out, err)
    assert err.startswith("auditor: error: ") or "usage:" in err
    for word in words:
        assert word in err, err
    assert "PRIVATE KEY" not in out + err and "Traceback" not in err
    assert sorted(p.name for p in workdir.iterdir()) == before
