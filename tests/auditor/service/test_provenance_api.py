"""The provenance endpoints (auditor.service.api.provenance): the signed C2PA PNG (with the
settings' certificate), the unsigned archive, PROV-JSON and PROV-N, their errors, the API
key's name as the PROV agent (never the key), and the report page's links to them."""

from __future__ import annotations

import shutil

import pytest
from fastapi.testclient import TestClient
from prov.model import ProvDocument

from auditor.exports.assertion import ATTRIBUTION_LABEL
from auditor.exports.signing import create_local_ca
from auditor.service import auth as access
from auditor.service.app import ServiceSettings, create_app
from tests.support.credentials import active_manifest, assertion, read_store

BASE = "/api/runs/1/samples/0/provenance"


@pytest.fixture(scope="module")
def setup(random_store, tmp_path_factory):
    folder = tmp_path_factory.mktemp("provenance-api")
    db = folder / "provenance.duckdb"
    shutil.copy(random_store.db, db)
    ca = create_local_ca(folder / "ca")
    signing = TestClient(create_app(ServiceSettings(db_path=db, c2pa_cert=ca.signer_cert, c2pa_key=ca.signer_key)))
    return db, ca, signing


def test_the_signed_png_verifies_against_the_ca(setup):
    _, ca, client = setup
    response = client.get(f"{BASE}.c2pa.png")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["content-disposition"] == 'attachment; filename="run1-sample0.c2pa.png"'
    store = read_store(response.content, ca.ca_cert.read_text())
    assert store["validation_state"] == "Trusted"
    claim = assertion(active_manifest(store), ATTRIBUTION_LABEL)
    assert (claim["run_id"], claim["sample_index"]) == (1, 0)
    assert len(claim["top_sources"]) == min(10, claim["sources_total"]) > 3
    assert len(assertion(active_manifest(read_store(client.get(f"{BASE}.c2pa.png?top=3").content)),
                         ATTRIBUTION_LABEL)["top_sources"]) == 3


def test_without_a_certificate_the_png_is_409_and_the_archive_is_served(random_store):
    client = TestClient(create_app(ServiceSettings(db_path=random_store.db)))
    response = client.get(f"{BASE}.c2pa.png")
    assert response.status_code == 409 and "AUDITOR_C2PA_CERT" in response.json()["message"]
    assert "provenance.unsigned.c2pa" in response.json()["message"]
    archive = client.get(f"{BASE}.unsigned.c2pa")
    assert archive.status_code == 200 and archive.headers["content-type"] == "application/c2pa"
    assert assertion(active_manifest(read_store(archive.content, fmt="application/c2pa")), ATTRIBUTION_LABEL)


def test_prov_json_and_prov_n(setup):
    _, _, client = setup
    response = client.get(f"{BASE}.prov.json?step_top=2")
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
    doc = ProvDocument.deserialize(content=response.text, format="json")
    labels = {str(v) for r in doc.get_records() if type(r).__name__ == "ProvAgent" for k, v in r.attributes}
    assert "anonymous (local single-user mode)" in labels
    text = client.get(f"{BASE}.provn?top=2&step_top=0")
    assert text.status_code == 200 and text.text.startswith("document") and text.text.count("wasInfluencedBy(") == 2


@pytest.mark.parametrize("url, status, word", [
    ("/api/runs/99/samples/0/provenance.prov.json", 404, "no run 99"),
    ("/api/runs/1/samples/9/provenance.unsigned.c2pa", 404, "has no sample 9"),
    ("/api/runs/2/samples/0/provenance.c2pa.png", 409, "only complete runs are exported"),
    ("/api/runs/1/samples/0/provenance.provn?step_top=-1", 400, "step_top"),
])
def test_errors(setup, url, status, word):
    _, _, client = setup
    response = client.get(url)
    assert response.status_code == status and word in response.json()["message"], response.text


def test_the_prov_agent_is_the_api_keys_name_never_the_key(random_store, tmp_path):
    db = tmp_path / "provenance.duckdb"
    shutil.copy(random_store.db, db)
    key, token = access.create_key(db, "rights desk", ["read"])
    client = TestClient(create_app(ServiceSettings(db_path=db)))
    assert client.get(f"{BASE}.prov.json").status_code == 401
    response = client.get(f"{BASE}.prov.json", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200 and "rights desk" in response.text and "user:rights%20desk" in response.text
    assert token not in response.text and token.split("_", 2)[2] not in response.text


def test_the_report_page_links_to_the_provenance_records(setup):
    _, _, client = setup
    page = client.get("/runs/1/samples/0")
    assert page.status_code == 200
    assert f'href="{BASE}.c2pa.png"' in page.text and f'href="{BASE}.prov.json"' in page.text
    assert "provenance.c2pa.png" not in client.get("/runs/2/samples/0").text  # a failed run has none
