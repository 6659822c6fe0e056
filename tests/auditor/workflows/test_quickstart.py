"""auditor.workflows.quickstart: the Quick start's store preparation is complete and idempotent."""

import numpy as np
import pytest

from auditor.store import database, studies
from auditor.workflows import quickstart
from tests.support.paths import REPO


@pytest.mark.slow
def test_prepare_records_once_then_reuses(tmp_path):
    data = tmp_path / "images.npy"
    np.save(data, np.random.default_rng(0).integers(0, 256, (30, 8, 8), dtype=np.uint8))
    db = tmp_path / "store.duckdb"
    lines = []
    first = quickstart.prepare(db, data=str(data), num_samples=2, steps=3, log=lines.append)
    assert not first.reused and first.report_path(1) == f"/runs/{first.run_id}/samples/1"
    with database.connect(db, read_only=True) as conn:
        assert conn.execute("SELECT status, num_samples FROM runs").fetchall() == [("complete", 2)]
        assert conn.execute("SELECT count(DISTINCT step) FROM steps").fetchone()[0] == 3
    again = quickstart.prepare(db, data=str(data), num_samples=2, steps=3, log=lines.append)
    assert again.reused and again.run_id == first.run_id
    assert "run 1: complete, reused" in lines
    other = quickstart.prepare(db, data=str(data), num_samples=2, steps=4, log=lines.append)
    assert not other.reused and other.run_id != first.run_id


@pytest.mark.slow
def test_cli_quickstart_without_serving(tmp_path, capsys):
    from auditor import cli

    data = tmp_path / "images.npy"
    np.save(data, np.random.default_rng(1).integers(0, 256, (20, 8, 8), dtype=np.uint8))
    db = tmp_path / "store.duckdb"
    argv = ["--db", str(db), "quickstart", "--data", str(data), "--num", "1", "--steps", "2", "--no-serve",
            "--port", "8123"]
    assert cli.main(argv) == 0
    assert "sample report: http://127.0.0.1:8123/runs/1/samples/0" in capsys.readouterr().out
    assert cli.main(argv[:-2] + ["--port", "0"]) == 2
    assert "--port must be in 1..65535" in capsys.readouterr().err


def test_committed_fidelity_study_is_imported_once(tmp_path):
    db = tmp_path / "store.duckdb"
    database.upgrade(db)
    lines = []
    (study_id,) = quickstart.import_studies(db, quickstart.COMMITTED_STUDIES, log=lines.append)
    assert lines == [f"fidelity study {study_id}: fidelity-quick.json (imported)"]
    assert quickstart.import_studies(db, quickstart.COMMITTED_STUDIES, log=lines.append) == (study_id,)
    assert len(lines) == 1  # the second call found it by the file's sha256
    study = studies.load_study(db, study_id)
    assert study["network_sha256"] == __import__("hashlib").sha256(
        (REPO / "checkpoints" / "fmnist-unet.pt").read_bytes()).hexdigest()
    for process in ("forward", "reverse"):
        names = study["curves"][process]["names"]
        assert {"empirical", "gaussian", "cfdm", "pspc-square", "pspc-flex"} <= set(names)
    # a missing file is skipped (a checkout without bench/results)
    assert quickstart.import_studies(db, [tmp_path / "none.json"]) == ()
