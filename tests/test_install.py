"""A regular (non-editable) install works from any directory: `pip install .` copies the
packages with their data (migrations, templates, the committed fidelity study), and
`auditor quickstart` then runs from another folder without the source tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.paths import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The project installed (without dependencies: the test venv has them) into a folder."""
    target = tmp_path_factory.mktemp("site")
    source = tmp_path_factory.mktemp("source")  # a copy: the build writes build/ and *.egg-info into it
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for package in ("pspc", "auditor", "reports", "migrations"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--target", str(target), str(source)],
                   check=True, cwd=source, capture_output=True)
    return target


def _run(target: Path, cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_installed_packages_carry_their_data(installed, tmp_path):
    probe = _run(installed, tmp_path, "-c",
                 "import pspc, auditor, reports, migrations; from auditor.store import database\n"
                 "from reports import render\n"
                 "print(pspc.__file__); print(auditor.__file__); print(database.MIGRATIONS_DIR)\n"
                 "print(sorted(p.name for p in (database.MIGRATIONS_DIR / 'versions').glob('*.py')))\n"
                 "print(database.head_revision())")
    assert probe.returncode == 0, probe.stderr
    lines = probe.stdout.splitlines()
    assert all(str(installed) in line for line in lines[:3]), lines  # not the source tree
    assert "0001_initial.py" in lines[3]
    assert lines[4] == subprocess.run([sys.executable, "-c", "from auditor.store import database; "
                                       "print(database.head_revision())"], cwd=REPO, capture_output=True,
                                      text=True).stdout.strip()


def test_quickstart_runs_from_another_directory(installed, tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(40, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "tiny.npy", images)
    db = tmp_path / "store.duckdb"
    done = _run(installed, tmp_path, "-m", "auditor.cli", "--db", str(db), "quickstart", "--data", "tiny.npy",
                "--num", "1", "--steps", "3", "--no-serve")
    assert done.returncode == 0, done.stderr
    assert "/runs/1/samples/0" in done.stdout
    assert "fidelity-quick.json (imported)" in done.stdout  # the committed study is package data
    listed = _run(installed, tmp_path, "-m", "auditor.cli", "--db", str(db), "runs")
    assert listed.returncode == 0 and "complete" in listed.stdout, listed.stdout + listed.stderr
