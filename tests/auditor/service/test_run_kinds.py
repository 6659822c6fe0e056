"""Run kinds through the service: every API object and page says what a run is (a sample, a
network's sample explained by PSPC, an audit of an outside file), lists filter by kind, a
rights holder's usage counts outputs unless audits are asked for, and each page's labels fit
its kind (an audit's image is the "Audited image", with its file and sha256, and no seed).

Store: tests.support.run_kinds (a network comparison and an audit of a random-noise PNG)."""

from __future__ import annotations

import csv
import io
import json
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient

from auditor.service.app import ServiceSettings, create_app
from auditor.store import attribution
from tests.support.pages import assert_page
from tests.support.run_kinds import NOISE_FILE, every_kind_store

pytestmark = pytest.mark.slow  # the store records a comparison and an audit (seconds, once per process)


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    return every_kind_store(tmp_path_factory)


@pytest.fixture(scope="module")
def client(kinds) -> TestClient:
    return TestClient(create_app(ServiceSettings(db_path=kinds.db)))


@pytest.fixture(scope="module")
def audited(kinds) -> tuple[int, str]:
    """(index, id) of the training image the noise audit took most of its image from."""
    top = attribution.sample_sources(kinds.db, kinds.audit, 0, top=1)[0]
    return top["image_index"], top["image_id"]


class _ElementText(HTMLParser):
    """The text inside the element with id `element_id`, block elements apart by a space."""

    BLOCKS = {"div", "dt", "dd", "p", "br", "li", "td", "th"}
    VOID = {"br", "img", "input", "meta", "link", "hr"}

    def __init__(self, element_id: str):
        super().__init__()
        self.element_id, self.depth, self.parts = element_id, 0, []

    def handle_starttag(self, tag, attrs):
        if self.depth == 0 and dict(attrs).get("id") == self.element_id:
            self.depth = 1
        elif self.depth and tag not in self.VOID:
            self.depth += 1
        if self.depth and tag in self.BLOCKS:
            self.parts.append(" ")

    def handle_endtag(self, tag):
        if self.depth and tag not in self.VOID:
            self.depth -= 1
            if tag in self.BLOCKS:
                self.parts.append(" ")

    def handle_data(self, data):
        if self.depth:
            self.parts.append(data)


def text_of(html: str, element_id: str) -> str:
    """The text of the element with this id, as a reader sees it (spaces collapsed)."""
    assert f'id="{element_id}"' in html, element_id
    parser = _ElementText(element_id)
    parser.feed(html)
    return " ".join("".join(parser.parts).split())


# ---------------------------------------------------------------------------------------
# The JSON API
# ---------------------------------------------------------------------------------------
def test_api_runs_carry_their_kind_generator_and_audited_file(client, kinds):
    items = {r["id"]: r for r in client.get("/api/runs").json()["items"]}
    assert {i: items[i]["kind"] for i in items} == {kinds.network: "network-explained", kinds.pspc: "sample",
                                                    kinds.gaussian: "sample", kinds.audit: "audit"}
    assert items[kinds.network]["generator"] == "GaussianNet" and items[kinds.network]["explainer"] == "pspc-square"
    assert items[kinds.gaussian]["explainer"] is None and items[kinds.gaussian]["recorded_kind"] == "samples-only"
    audit = items[kinds.audit]
    assert (audit["method"], audit["output"], audit["generator"]) == ("direct", False, None)
    assert audit["audited_image"] == {"file": NOISE_FILE, "sha256": kinds.noise_sha256, "format": "png"}


def test_api_runs_filter_by_kind(client, kinds):
    audits = client.get("/api/runs", params={"kind": "audit"}).json()
    assert audits["total"] == 1 and audits["items"][0]["id"] == kinds.audit
    samples = client.get("/api/runs", params={"kind": "sample"}).json()
    assert {r["id"] for r in samples["items"]} == {kinds.pspc, kinds.gaussian}
    bad = client.get("/api/runs", params={"kind": "pspc"})
    assert bad.status_code == 400 and "kind" in bad.json()["message"]
    kind_parameter = next(p for p in client.get("/api/openapi.json").json()["paths"]["/api/runs"]["get"]["parameters"]
                          if p["name"] == "kind")
    assert json.dumps(kind_parameter).count('"audit"') == 1  # declared as an enum


def test_api_run_detail_has_the_kind_and_its_details(client, kinds):
    run = client.get(f"/api/runs/{kinds.audit}").json()
    assert run["kind"] == "audit" and run["details"]["method"] == "direct"
    assert run["details"]["input"]["sha256"] == kinds.noise_sha256
    network = client.get(f"/api/runs/{kinds.network}").json()
    assert network["details"]["role"] == "network" and network["network"]["name"] == "GaussianNet"
    sample = client.get(f"/api/runs/{kinds.audit}/samples/0").json()
    assert (sample["kind"], sample["image_label"]) == ("audit", "Audited image")
    assert sample["audited_image"]["file"] == NOISE_FILE
    assert client.get(f"/api/runs/{kinds.network}/samples").json()["items"][0]["kind"] == "network-explained"


def test_api_usage_counts_outputs_unless_audits_are_included(client, kinds, audited):
    index, _ = audited
    url = f"/api/datasets/1/training-images/{index}/usage"
    outputs = client.get(url, params={"limit": 1000}).json()
    every = client.get(url, params={"limit": 1000, "include_audits": "true"}).json()
    assert not outputs["include_audits"] and every["include_audits"]
    assert kinds.audit not in {u["run_id"] for u in outputs["items"]}
    assert [u["kind"] for u in every["items"] if u["run_id"] == kinds.audit] == ["audit"]
    assert every["total"] == outputs["total"] + 1
    assert {u["kind"] for u in outputs["items"]} <= {"sample", "network-explained"}


# ---------------------------------------------------------------------------------------
# Pages
# ---------------------------------------------------------------------------------------
def test_index_page_shows_kinds_and_filters_by_them(client, kinds):
    page = assert_page(client.get("/"), 200, "audit of an external image", "network sample explained by PSPC",
                       NOISE_FILE, 'id="kind-filter"', 'href="/?kind=audit"')
    assert "network GaussianNet" in page
    audits = assert_page(client.get("/?kind=audit"), 200, f'href="/runs/{kinds.audit}"')
    assert f'href="/runs/{kinds.pspc}"' not in audits and f'href="/runs/{kinds.network}"' not in audits
    assert_page(client.get("/?kind=nothing"), 400, "unknown run kind")


def test_network_run_names_the_network_as_generator_and_pspc_as_explainer(client, kinds):
    run = assert_page(client.get(f"/runs/{kinds.network}"), 200)
    assert text_of(run, "made-by").startswith("2 samples · generated by network GaussianNet, explained by PSPC "
                                              "(pspc-square)")
    sample = assert_page(client.get(f"/runs/{kinds.network}/samples/0"), 200)
    assert text_of(sample, "image-label").startswith("The network's sample, enlarged")
    assert text_of(sample, "generator").startswith("Generator network GaussianNet")
    assert "Denoiser · sampler" not in sample and "Generated sample" not in sample


def test_audit_page_shows_the_audited_file_and_no_seed_or_sampler(client, kinds):
    page = assert_page(client.get(f"/runs/{kinds.audit}/samples/0"), 200, "Audited image", "audit of an external image")
    assert text_of(page, "audited-image") == f"Audited image {NOISE_FILE} sha256 {kinds.noise_sha256}"
    assert text_of(page, "image-label").startswith("Audited image, enlarged")
    assert "Generated sample" not in page and '<div class="label">Seed</div>' not in page
    assert "Denoiser · sampler" not in page and "<dt>Sampler</dt>" not in page and "<dt>Seed</dt>" not in page
    run = assert_page(client.get(f"/runs/{kinds.audit}"), 200, "Audited image", NOISE_FILE, kinds.noise_sha256)
    assert "seed 0" not in run
    report = client.get(f"/api/runs/{kinds.audit}/samples/0/report", params={"images": "none"}).json()
    assert report["record"]["kind_info"]["image_label"] == "Audited image"


def test_training_image_page_and_export_count_outputs_unless_audits_are_included(client, kinds, audited):
    index, _ = audited
    base = f"/datasets/1/images/{index}"
    audit_link = f'href="/runs/{kinds.audit}/samples/0"'
    page = assert_page(client.get(base), 200, "Include audits", f'href="{base}?include_audits=true"')
    assert audit_link not in page
    every = assert_page(client.get(base, params={"include_audits": "true"}), 200, audit_link, "Show outputs only")
    assert "audit of an external image" in every
    rows = list(csv.DictReader(io.StringIO(client.get(f"{base}/export.csv").text)))
    assert rows and kinds.audit not in {int(r["run_id"]) for r in rows}
    assert {r["kind"] for r in rows} <= {"sample", "network-explained"}
    with_audits = client.get(f"{base}/export.json", params={"include_audits": "true"}).json()
    assert with_audits["include_audits"] and [o["kind"] for o in with_audits["outputs"]
                                              if o["run_id"] == kinds.audit] == ["audit"]
    assert client.get(f"{base}/export.json").json()["left_out"] == 1
