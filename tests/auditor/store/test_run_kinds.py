"""Run kinds (auditor.store.run_kinds): the one table, the run list's kind facts and filter, and
a rights holder's usage counting outputs only (an audit of random noise is nobody's output).

Store: tests.support.run_kinds (a network comparison and an audit of a random-noise PNG)."""

from __future__ import annotations

import pytest

from auditor.errors import UserError
from auditor.store import attribution, schema
from auditor.store.read_models.training_images import load_training_image
from auditor.store.run_kinds import KIND_NAMES, RUN_KIND_TABLE, describe_run, run_kind, stored_kinds, usage_kinds
from auditor.store.runs import run_summaries
from tests.support.run_kinds import NOISE_FILE, every_kind_store

slow = pytest.mark.slow  # the store records a comparison and an audit (seconds, once per process)


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    return every_kind_store(tmp_path_factory)


def audit_top_image(kinds) -> tuple[int, str]:
    """(index, id) of the training image the noise audit took most of its image from."""
    top = attribution.sample_sources(kinds.db, kinds.audit, 0, top=1)[0]
    return top["image_index"], top["image_id"]


def test_one_table_names_every_stored_kind():
    assert schema.RUN_KINDS == tuple(RUN_KIND_TABLE)  # create_run accepts exactly the table's kinds
    assert KIND_NAMES == ("sample", "network-explained", "audit", "counterfactual")
    assert stored_kinds("sample") == ("pspc", "samples-only") and stored_kinds("audit") == ("external-audit",)
    assert set(usage_kinds()) == {"pspc", "samples-only", "network-explained"}
    assert set(usage_kinds(include_audits=True)) == set(RUN_KIND_TABLE) - {"counterfactual"}  # nobody's output
    assert run_kind(None) is RUN_KIND_TABLE["pspc"]  # runs from before kinds existed
    assert not run_kind("from-a-newer-version").output  # unknown kinds never count as outputs
    with pytest.raises(UserError, match="unknown run kind 'pspc-square'; choose from sample, network-explained, audit, counterfactual"):
        stored_kinds("pspc-square")


def test_describe_run_never_shows_the_server_folder_of_an_audited_file():
    facts = describe_run("external-audit", {"method": "inversion", "network": {"id": 3, "name": "edm"},
                                            "input": {"path": "/srv/jobs/uploads/ab.png", "sha256": "ab" * 32,
                                                      "format": "png"}},
                         {"kind": "pspc-flex"}, {"method": "heun"})
    assert facts["audited_image"] == {"file": "ab.png", "sha256": "ab" * 32, "format": "png"}
    assert (facts["kind"], facts["method"], facts["generator"], facts["explainer"]) == ("audit", "inversion", None,
                                                                                        "pspc-flex")
    assert facts["network"] == {"id": 3, "name": "edm"} and not facts["output"]


@slow
def test_run_list_names_each_kind_its_generator_and_the_audited_file(kinds):
    rows = {r["id"]: r for r in run_summaries(kinds.db)}
    network, pspc, gaussian, audit = (rows[i] for i in (kinds.network, kinds.pspc, kinds.gaussian, kinds.audit))
    assert (network["kind"], network["generator"], network["explainer"]) == ("network-explained", "GaussianNet",
                                                                             "pspc-square")
    assert network["network"]["name"] == "GaussianNet" and network["recorded_kind"] == "network-explained"
    assert (pspc["kind"], pspc["generator"], pspc["explainer"], pspc["method"]) == ("sample", "pspc-square",
                                                                                  "pspc-square", "euler")
    assert (gaussian["kind"], gaussian["generator"], gaussian["explainer"]) == ("sample", "gaussian", None)
    assert (audit["kind"], audit["method"], audit["generator"], audit["output"]) == ("audit", "direct", None, False)
    assert audit["audited_image"] == {"file": NOISE_FILE, "sha256": kinds.noise_sha256, "format": "png"}
    assert all(rows[i]["output"] and rows[i]["audited_image"] is None for i in kinds.outputs)


@slow
def test_run_list_filters_by_kind(kinds):
    assert [r["id"] for r in run_summaries(kinds.db, kind="audit")] == [kinds.audit]
    assert [r["id"] for r in run_summaries(kinds.db, kind="network-explained")] == [kinds.network]
    assert {r["id"] for r in run_summaries(kinds.db, kind="sample")} == {kinds.pspc, kinds.gaussian}
    with pytest.raises(UserError, match="unknown run kind 'audits'"):
        run_summaries(kinds.db, kind="audits")


@slow
def test_usage_of_a_training_image_counts_outputs_not_audits(kinds):
    _, image_id = audit_top_image(kinds)
    outputs = attribution.image_usage(kinds.db, 1, image_id)
    every = attribution.image_usage(kinds.db, 1, image_id, include_audits=True)
    assert kinds.audit not in {r["run_id"] for r in outputs}
    assert [(r["run_id"], r["kind"]) for r in every if r["run_id"] == kinds.audit] == [(kinds.audit, "audit")]
    assert [r for r in every if r["run_id"] != kinds.audit] == outputs
    assert {r["kind"] for r in outputs} <= {"sample", "network-explained"}
    steps = attribution.image_usage(kinds.db, 1, image_id, all_steps=True)
    assert steps and kinds.audit not in {r["run_id"] for r in steps}


@slow
def test_training_image_read_model_leaves_audits_out_and_counts_them(kinds):
    index, _ = audit_top_image(kinds)
    outputs = load_training_image(kinds.db, 1, index, limit=50, offset=0)
    every = load_training_image(kinds.db, 1, index, limit=50, offset=0, include_audits=True)
    assert all(run_id != kinds.audit for run_id, _ in outputs.usage["samples"])
    assert all(run_id != kinds.audit for run_id, _ in outputs.copy_matches)
    assert (kinds.audit, 0) in every.usage["samples"] and every.left_out == 0
    assert outputs.left_out == 1 and outputs.total == every.total - 1 and not outputs.include_audits
    assert outputs.usage["final_total"] < every.usage["final_total"]
