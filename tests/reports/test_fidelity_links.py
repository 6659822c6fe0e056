"""A fidelity study and the reports it bears on link to each other, and a study run on a subset
of a data set's source says so instead of passing for the whole data set under its name."""

from __future__ import annotations

import shutil

import pytest

from auditor.service import pages as service_pages
from auditor.store import attribution, datasets
from auditor.workflows.quickstart import COMMITTED_STUDIES, import_studies
from reports import render


@pytest.fixture(scope="module")
def store(fashion_store, tmp_path_factory):
    db = tmp_path_factory.mktemp("fidelity-links") / "provenance.duckdb"
    shutil.copy(fashion_store.db, db)
    (study_id,) = import_studies(db, COMMITTED_STUDIES, log=lambda line: None)
    return db, study_id, fashion_store.complete_run


def test_the_sample_report_links_the_study_of_its_data(store):
    db, study_id, run = store
    report = service_pages.sample_report(db, run, 0)
    (link,) = report.fidelity_studies
    assert (link.study_id, link.network, link.images, link.same_images) == (study_id, "fmnist-unet", 5000, False)
    page = render.render_sample(report, render.Links(""))
    assert f'href="/fidelity/{study_id}"' in page
    count = datasets.list_datasets(db)[0]["count"]
    assert f"measured on 5,000 images of the same source, not on all {count:,} of this training set" in page
    assert render.report_json(report, "none").count('"same_images": false') == 1


def test_the_study_page_names_the_data_sets_it_is_and_is_not(store):
    db, study_id, _ = store
    page = service_pages.fidelity_context(db, study_id)
    (dataset,) = page.datasets
    assert dataset["id"] == 1 and not dataset["same_images"]
    html = render.render_fidelity(page, render.Links(""))
    scope = html.split('id="study-datasets"', 1)[1].split("</dd>", 1)[0]
    assert "not " in scope and "dataset 1" in scope and "5,000 images of the same source, another fingerprint" in scope
    assert "(5,000 images)" in html.split('class="sub"', 1)[1].split("</div>", 1)[0]


def test_a_study_on_no_data_set_of_the_store_links_nothing(random_store):
    report = service_pages.sample_report(random_store.db, random_store.complete_run, 0)
    assert report.fidelity_studies == []


def test_the_outlined_column_says_it_shows_the_training_image(fashion_store):
    image = attribution.sample_sources(fashion_store.db, fashion_store.complete_run, 0, top=1)[0]["image_index"]
    page = render.render_page(service_pages.training_image_context(fashion_store.db, 1, image))
    head = page.split('<table class="uses">', 1)[1].split("</thead>", 1)[0]
    assert "Patches in the final image" not in head and "outlined on this training image" in head
