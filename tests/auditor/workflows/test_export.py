"""Exporting (auditor.workflows.export.export_sample): what is refused (unknown ids, incomplete runs,
samples-only runs, an unsigned archive named as if signed) with the reason, and that nothing
is left behind when an export fails; files are private (mode 0600)."""

from __future__ import annotations

import shutil
import stat

import pytest

from auditor.errors import ConflictError, NotFoundError, UserError
from auditor.exports.signing import create_local_ca, load_credentials
from auditor.store.runs import create_run
from auditor.workflows.export import ExportOptions, export_sample


@pytest.fixture(scope="module")
def local_ca(tmp_path_factory):
    return create_local_ca(tmp_path_factory.mktemp("ca") / "c2pa-ca")


@pytest.fixture
def store(random_store, tmp_path):
    """A private copy of random_store (run 1 complete, run 2 failed), and an empty output folder."""
    db = tmp_path / "store" / "provenance.duckdb"
    db.parent.mkdir()
    shutil.copy(random_store.db, db)
    out = tmp_path / "out"
    out.mkdir()
    return db, out


@pytest.mark.parametrize("fmt", ["c2pa", "prov-json", "prov-n"])
def test_exports_are_private_files(store, local_ca, fmt):
    db, out = store
    credentials = load_credentials(local_ca.signer_cert, local_ca.signer_key)
    result = export_sample(db, 1, 2, ExportOptions(format=fmt, credentials=credentials), out / f"x.{fmt}")
    assert result.path == out / f"x.{fmt}" and result.path.read_bytes() == result.export.data
    assert stat.S_IMODE(result.path.stat().st_mode) == 0o600 and result.seconds > 0
    assert [p.name for p in out.iterdir()] == [f"x.{fmt}"]  # no temporary file left


@pytest.mark.parametrize("target, error, words", [
    ((99, 0), NotFoundError, ("no run 99",)),
    ((1, 7), NotFoundError, ("has no sample 7", "samples 0..2")),
    ((2, 0), ConflictError, ("run 2 is failed", "Interrupt", "only complete runs are exported",
                             "auditor sample --resume 2")),
])
@pytest.mark.parametrize("fmt", ["c2pa", "prov-json"])
def test_what_cannot_be_exported_is_refused_and_nothing_is_written(store, target, error, words, fmt):
    db, out = store
    keep = out / "keep.unsigned.c2pa"
    keep.write_bytes(b"an older file")
    with pytest.raises(error) as caught:
        export_sample(db, *target, ExportOptions(format=fmt), keep)
    for word in words:
        assert word in str(caught.value), str(caught.value)
    assert list(out.iterdir()) == [keep] and keep.read_bytes() == b"an older file"


def test_running_and_samples_only_runs_are_refused_with_the_reason(store):
    db, out = store
    running = create_run(db, 1, denoiser={"kind": "pspc-square"}, sampler={"num_steps": 4}, seed=0, num_samples=1,
                         top_k=4, mass=0.9)
    with pytest.raises(ConflictError, match=f"run {running} is running: only complete runs are exported"):
        export_sample(db, running, 0, ExportOptions(), out / "a.unsigned.c2pa")
    samples_only = create_run(db, 1, denoiser={"kind": "gaussian"}, sampler={"num_steps": 4}, seed=0, num_samples=1,
                              top_k=4, mass=0.9, kind="samples-only")
    from auditor.store.runs import complete_samples_only

    complete_samples_only(db, samples_only, __import__("torch").zeros(1, 3, 8, 8), 0.1)
    with pytest.raises(ConflictError, match="holds samples only, with no attribution recorded"):
        export_sample(db, samples_only, 0, ExportOptions(format="prov-json"), out / "b.json")
    assert list(out.iterdir()) == []


def test_an_unsigned_archive_must_be_named_unsigned(store):
    db, out = store
    with pytest.raises(UserError, match=r"UNSIGNED manifest archive: name it \*\.unsigned\.c2pa"):
        export_sample(db, 1, 0, ExportOptions(), out / "signed-looking.c2pa.png")
    assert list(out.iterdir()) == []
    result = export_sample(db, 1, 0, ExportOptions(), out / "run1.unsigned.c2pa")
    assert result.path.exists() and not result.export.signed


def test_bad_options_are_user_errors(store):
    db, out = store
    for options, word in ((ExportOptions(format="pdf"), "unknown export format"), (ExportOptions(top=0), "top"),
                          (ExportOptions(format="prov-n", step_top=-1), "step_top")):
        with pytest.raises(UserError, match=word):
            export_sample(db, 1, 0, options, out / "x.unsigned.c2pa")
    assert list(out.iterdir()) == []
