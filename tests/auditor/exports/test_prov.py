"""W3C PROV exports (auditor.exports.prov_document): the document parses back with the `prov`
library into the same document, and its records count and weigh what the store holds."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from prov.model import ProvDocument

from auditor.exports.prov_document import Requester
from auditor.store.read_models.exports import run_fingerprint
from auditor.store.runs import load_run
from auditor.workflows.export import ExportOptions, build_export
from tests.support.store import fetch


def export(db, run_id=1, sample_index=0, fmt="prov-json", **options) -> bytes:
    return build_export(db, run_id, sample_index, ExportOptions(format=fmt, **options)).data


def by_type(doc: ProvDocument) -> Counter:
    return Counter(type(record).__name__ for record in doc.get_records())


def attribute(record, name: str):
    values = [v for k, v in record.attributes if k.localpart == name]
    return values[0] if values else None


def influences_of(doc: ProvDocument, influencee: str) -> dict[int, float]:
    out = {}
    for record in doc.get_records():
        if type(record).__name__ == "ProvInfluence" and record.args[0].localpart == influencee:
            out[int(record.args[1].localpart.removeprefix("image-"))] = float(attribute(record, "share"))
    return out


@pytest.fixture(scope="module")
def document(random_store):
    text = export(random_store.db, requester=Requester("alice"))
    return text, ProvDocument.deserialize(content=text.decode(), format="json")


def test_the_document_parses_back_into_the_same_document(document, random_store):
    text, doc = document
    again = ProvDocument.deserialize(content=doc.serialize(format="json"), format="json")
    assert again == doc and doc.get_records()
    assert json.loads(text)["prefix"]["run"].startswith("urn:pspc-auditor:run:")
    run, dataset = load_run(random_store.db, 1)
    assert json.loads(text)["prefix"]["run"] == f"urn:pspc-auditor:run:{run_fingerprint(run, dataset)}:"


def test_records_count_what_the_store_holds(document, random_store):
    _, doc = document
    db = random_store.db
    steps = fetch(db, "SELECT step FROM steps WHERE run_id = 1 AND sample_index = 0 ORDER BY step")
    final = dict(fetch(db, "SELECT image_index, share FROM sample_sources WHERE run_id = 1 AND sample_index = 0"))
    per_step = {s: fetch(db, "SELECT image_index FROM step_sources WHERE run_id = 1 AND sample_index = 0 AND step = ? "
                             "ORDER BY share DESC, image_index LIMIT 5", [s]) for (s,) in steps}
    images = set(final) | {i for rows in per_step.values() for (i,) in rows}
    counts = by_type(doc)
    assert counts["ProvActivity"] == 1 + len(steps) + 1  # the run, its steps, this export
    assert counts["ProvEntity"] == 1 + len(steps) + 1 + len(images)  # sample, states, training set, images
    assert counts["ProvMembership"] == len(images)
    assert counts["ProvStart"] == len(steps) and counts["ProvGeneration"] == len(steps) + 1
    assert counts["ProvInfluence"] == len(final) + sum(len(rows) for rows in per_step.values())
    assert counts["ProvAgent"] == 2
    shares = influences_of(doc, "sample0")
    assert shares.keys() == final.keys()
    assert all(shares[i] == pytest.approx(final[i], rel=1e-12) for i in final)


def test_each_step_is_influenced_by_its_top_sources(document, random_store):
    _, doc = document
    (step, *_), = fetch(random_store.db, "SELECT min(step) FROM steps WHERE run_id = 1")
    expected = dict(fetch(random_store.db, "SELECT image_index, share FROM step_sources WHERE run_id = 1 AND "
                                           "sample_index = 0 AND step = ? ORDER BY share DESC, image_index LIMIT 5",
                          [step]))
    got = influences_of(doc, f"sample0-step{step}")
    assert got.keys() == expected.keys() and all(got[i] == pytest.approx(expected[i]) for i in expected)


def test_training_images_carry_their_rights_metadata(document, random_store):
    _, doc = document
    images = {int(attribute(r, "image_index")): r for r in doc.get_records()
              if attribute(r, "image_id") is not None}
    rows = fetch(random_store.db, "SELECT image_index, image_id, sha256, owner, license, source_uri FROM "
                                  "training_images WHERE image_index IN (SELECT unnest(?::INTEGER[]))",
                 [sorted(images)])
    for index, image_id, sha256, owner, license_, uri in rows:
        record = images[index]
        assert (attribute(record, "image_id"), attribute(record, "sha256"), attribute(record, "owner"),
                attribute(record, "license"), attribute(record, "source_uri")) == (image_id, sha256, owner, license_,
                                                                                  uri)


def test_the_agents_are_the_tool_and_the_requester_never_a_key(random_store):
    text = export(random_store.db, requester=Requester("ci bot", "api-key", 7)).decode()
    doc = ProvDocument.deserialize(content=text, format="json")
    agents = {str(a.identifier): a for a in doc.get_records() if type(a).__name__ == "ProvAgent"}
    assert set(agents) == {"pspc:pspc-auditor", "user:ci%20bot"}
    assert attribute(agents["user:ci%20bot"], "api_key_id") == 7
    assert {str(v) for _, v in agents["user:ci%20bot"].attributes} >= {"ci bot", "pspc:ApiKeyHolder"}


def test_prov_n_and_the_limits(random_store):
    text = export(random_store.db, fmt="prov-n", top=3, step_top=1).decode()
    steps = len(fetch(random_store.db, "SELECT 1 FROM steps WHERE run_id = 1 AND sample_index = 0"))
    assert text.startswith("document") and text.rstrip().endswith("endDocument")
    assert text.count("wasInfluencedBy(") == 3 + steps
    assert text.count("wasStartedBy(") == steps


@pytest.mark.slow  # kinds_store records a comparison
def test_a_network_sample_uses_the_network(kinds_store):
    doc = ProvDocument.deserialize(content=export(kinds_store.db, kinds_store.network_run).decode(), format="json")
    (sha256,), = fetch(kinds_store.db, "SELECT sha256 FROM networks")
    (network,) = [r for r in doc.get_records() if attribute(r, "sha256") == sha256]
    used = [r for r in doc.get_records() if type(r).__name__ == "ProvUsage" and r.args[1] == network.identifier]
    assert len(used) == 1 and used[0].args[0].localpart == "sampling"
