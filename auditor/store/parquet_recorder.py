"""Recording into a shared Parquet folder from many processes and machines, without a lock.

A recorder appends new files to the layout of auditor.store.parquet and never changes one, so
any number of processes, on any number of machines, record into one shared folder at once:

  runs/run_id=R/                         claimed with mkdir when the run starts (mkdir fails on an
                                         existing name: two writers never get the same run id); the
                                         run's row (status 'running') is its first file
  <step table>/run_id=R/step=S/part-<host>-<pid>-<uuid>.parquet
                                         each step's rows (steps, patch_weights, patch_stats,
                                         step_shares), as ProvenanceRecorder builds them
  samples/run_id=R/part-...parquet       the final images, with the last step
  run_completions/run_id=R/part-...      THE completion marker, written last: status 'complete'
                                         (or 'failed' with the error), finish time, timings
  datasets/, training_images/            one file per training set, named by its fingerprint
  patch_sets/, patch_positions/, patch_pixels/   one file per patch set, named by its fingerprint

Every file is written under a hidden temporary name (`.<name>.tmp`, which no reader globs) and
renamed into place, so readers never see half a file; a step's steps file is renamed after the
step's other tables, so the views (which join through steps) see a step whole. A run is
complete only once its completion marker exists: until then the reader shows it 'running' (a
writer that was killed leaves it so; runs.writer names its host and pid).

Ids. A run id is given by the user or made by `new_run_id`: 62 bits, the milliseconds since
2025-01-01 in the top 40 (ids sort by start time until 2059) and 22 bits of a hash of the host
name, the pid and 16 random bytes (two runs started in the same millisecond collide with
probability 2^-22, and the mkdir claim catches even that: a taken id is drawn again). 62 bits
keep every id within the CLI's bound for ids (2^62). Datasets and patch sets keep the id they
already have in the folder (an export's), else take the top 60 bits of their sha256
fingerprint, so every machine gives the same set the same id and file name (writing it twice
renames the same content over itself). The folder needs a file system where rename is atomic
and mkdir fails on an existing name (local disks, NFS, SMB; not a bare object store).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import torch

from pspc.data.training_set import TrainingSet

from auditor.errors import ConflictError, StoreError
from auditor.store.datasets import training_image_table
from auditor.store.parquet import (
    COMPRESSION, MANIFEST, RUN_COMPLETIONS, create_manifest, has_files, head_schema, literal, quote, read_manifest,
    write_manifest
)
from auditor.store.recorder import ProvenanceRecorder, blobs, utcnow
from auditor.store.runs import error_text, versions, writer

__all__ = ["EPOCH_MS", "ParquetRecorder", "ParquetRun", "new_run_id", "open_folder", "start_parquet_run"]

EPOCH_MS = 1735689600000  # 2025-01-01T00:00:00Z in milliseconds
MAX_ID = 2**62  # = auditor.cli.common.MAX_INT
# the order in which a commit renames its files into place: members before the rows that name them
PUBLISH_ORDER = ("training_images", "datasets", "patch_pixels", "patch_positions", "patch_sets", "runs",
                 "patch_weights", "patch_stats", "step_shares", "step_agreement", "steps", "samples", RUN_COMPLETIONS)


_LAST_ID = [0]  # this process's last drawn id: ids it draws only increase, so they never repeat here


def new_run_id() -> int:
    """A 62-bit run id for a run started now on this host by this process (module doc). Within a
    process the ids increase strictly (the random low bits alone repeat within a millisecond once
    about 2,000 are drawn); between processes the claim of its folder settles a collision."""
    millis = (time.time_ns() // 1_000_000 - EPOCH_MS) % 2**40
    digest = hashlib.blake2b(f"{socket.gethostname()}\0{os.getpid()}".encode() + os.urandom(16), digest_size=8)
    drawn = max(1, (millis << 22) | (int.from_bytes(digest.digest(), "big") & (2**22 - 1)))
    _LAST_ID[0] = max(drawn, _LAST_ID[0] + 1)
    return _LAST_ID[0]


def _fingerprint_id(fingerprint: str) -> int:
    return int(fingerprint[:15], 16) or 1


def _writer_tag() -> str:
    host = re.sub(r"[^A-Za-z0-9.-]+", "_", socket.gethostname())[:64] or "host"
    return f"{host}-{os.getpid()}"


def open_folder(out_dir) -> dict:
    """The manifest of a folder to record into, creating the folder and its manifest (this version's
    schema) when it is new or empty (hidden files aside: another writer's manifest on its way).
    StoreError for another folder, or one of another schema."""
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise StoreError(f"{root}: is a file; recording into Parquet needs a folder")
    if root.is_dir() and not (root / MANIFEST).exists() and any(not p.name.startswith(".") for p in root.iterdir()):
        raise StoreError(f"{root}: not empty and not a Parquet provenance folder (no {MANIFEST}); record into a new "
                         "folder or one that `auditor parquet export` or another recorder made")
    if not (root / MANIFEST).exists():
        root.mkdir(parents=True, exist_ok=True)
        write_manifest(root, create_manifest(head_schema(), "recorders"))  # racing writers write the same schema
    manifest = read_manifest(root)
    wanted = head_schema()["revision"]
    if manifest["schema_revision"] != wanted:
        raise StoreError(f"{root}: its tables are of schema revision {manifest['schema_revision']!r}; this auditor "
                         f"records revision {wanted!r} (record into a new folder, or use the matching auditor)")
    return manifest


class _Files:
    """Writes Arrow rows as Parquet files of a folder's tables, with the store's types (DuckDB's COPY
    from an in-memory connection), each under a hidden name until `publish` renames them."""

    def __init__(self, root: Path, manifest: dict):
        self.root = root
        self.tables = manifest["tables"]
        self.conn = duckdb.connect()
        self.tag = _writer_tag()

    def path(self, table: str, data: pa.Table, name: str | None = None) -> Path:
        """Where rows of `table` go: its partition folder (from the rows' constant key columns) and
        `name`, else a new part-<host>-<pid>-<uuid>.parquet."""
        folder = self.root / table
        for key in self.tables[table]["partition_by"]:
            values = set(data.column("id" if key == "run_id" and table == "runs" else key).to_pylist())
            if len(values) != 1:
                raise StoreError(f"rows of {table} for more than one {key} in one file: {sorted(values)}")
            folder = folder / f"{key}={values.pop()}"
        return folder / (name or f"part-{self.tag}-{uuid.uuid4().hex[:12]}.parquet")

    def stage(self, table: str, data: pa.Table, name: str | None = None) -> tuple[Path, Path]:
        """Write the rows to a hidden file beside their place; returns (hidden, final) paths."""
        spec = self.tables[table]
        final = self.path(table, data, name)
        final.parent.mkdir(parents=True, exist_ok=True)
        hidden = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
        present = set(data.column_names)
        select = ", ".join(f"CAST({quote(c) if c in present else 'NULL'} AS {kind}) AS {quote(c)}"
                           for c, kind in spec["columns"] if c not in spec["partition_by"] and c not in spec["omitted"])
        self.conn.register("_rows", data)
        try:
            self.conn.execute(f"COPY (SELECT {select} FROM _rows) TO {literal(hidden)} (FORMAT PARQUET, "
                              f"COMPRESSION {COMPRESSION})").fetchall()
        finally:
            self.conn.unregister("_rows")
        return hidden, final

    def publish(self, staged: list[tuple[str, Path, Path]]) -> None:
        """Rename staged files into place, in PUBLISH_ORDER."""
        for _, hidden, final in sorted(staged, key=lambda item: PUBLISH_ORDER.index(item[0])):
            os.replace(hidden, final)

    def write(self, table: str, data: pa.Table, name: str | None = None) -> None:
        hidden, final = self.stage(table, data, name)
        os.replace(hidden, final)

    def lookup(self, table: str, fingerprint: str) -> int | None:
        """The id the folder already gives the row of `table` with this fingerprint, if any."""
        if not has_files(self.root / table):
            return None
        glob = self.root / table / ("**/*.parquet" if self.tables[table]["partition_by"] else "*.parquet")
        found = self.conn.execute(f"SELECT min(id) FROM read_parquet({literal(glob)}) WHERE fingerprint = ?",
                                  [fingerprint]).fetchall()[0][0]
        return None if found is None else int(found)


def _dataset_id(files: _Files, training_set: TrainingSet) -> int:
    """The dataset's id in the folder, writing its datasets and training_images rows if it is new."""
    fingerprint = training_set.fingerprint
    known = files.lookup("datasets", fingerprint)
    if known is not None:
        return known
    dataset_id = _fingerprint_id(fingerprint)
    c, h, w = training_set.image_shape
    images = training_image_table(training_set)
    images = images.append_column("dataset_id", pa.array(np.full(images.num_rows, dataset_id, np.int64)))
    row = pa.table({"id": [dataset_id], "fingerprint": [fingerprint], "name": [training_set.name],
                    "source": [training_set.source], "channels": [c], "height": [h], "width": [w],
                    "count": [len(training_set)], "created_at": [utcnow()]})
    name = f"dataset-{fingerprint[:16]}.parquet"
    files.publish([("training_images", *files.stage("training_images", images, name)),
                   ("datasets", *files.stage("datasets", row, name))])
    return dataset_id


def _claim(root: Path, run_id: int | None) -> int:
    """Claim a run id in the folder (mkdir runs/run_id=R): the given one, else new_run_id's."""
    (root / "runs").mkdir(exist_ok=True)
    for _ in range(100):
        chosen = new_run_id() if run_id is None else int(run_id)
        if not 1 <= chosen < MAX_ID:
            raise StoreError(f"run ids are in 1..{MAX_ID - 1}, got {chosen}")
        try:
            (root / "runs" / f"run_id={chosen}").mkdir()
            return chosen
        except FileExistsError:
            if run_id is not None:
                raise ConflictError(f"{root}: run id {chosen} is taken; choose another --run-id, or let the "
                                    "recorder draw one") from None
    raise StoreError(f"{root}: could not draw a free run id")


class ParquetRun:
    """A run being recorded into a Parquet folder (`start_parquet_run`): its id, its recorder, and
    `fail` for the completion marker of a run that stopped on an error."""

    def __init__(self, root: Path, manifest: dict, run_id: int, seed: int, files: _Files):
        self.root, self.manifest, self.run_id, self.seed, self.files = root, manifest, run_id, seed, files

    def recorder(self, num_images: int, time_steps, *, sampling_started: float | None = None) -> "ParquetRecorder":
        return ParquetRecorder(self, num_images, time_steps, sampling_started=sampling_started)

    def complete_row(self, status: str, timings: dict | None = None, error: str | None = None) -> pa.Table:
        return pa.table({"run_id": [self.run_id], "status": [status], "finished_at": [utcnow()],
                         "timings": [None if timings is None else json.dumps(timings)], "error": [error]},
                        schema=pa.schema([("run_id", pa.int64()), ("status", pa.string()),
                                          ("finished_at", pa.timestamp("us")), ("timings", pa.string()),
                                          ("error", pa.string())]))

    def fail(self, exc: BaseException) -> None:
        """Write the run's completion marker with status 'failed' and the error text; if even that
        fails, say so in a note on `exc` (the original error matters more)."""
        try:
            self.files.write(RUN_COMPLETIONS, self.complete_row("failed", error=error_text(exc)))
        except Exception as inner:  # noqa: BLE001 - a full disk, a folder gone: the run stays 'running'
            exc.add_note(f"(could not mark run {self.run_id} failed in {self.root}: {inner})")


def start_parquet_run(out_dir, training_set: TrainingSet, *, denoiser: dict, sampler: dict, seed: int,
                      num_samples: int, top_k: int, mass: float, command=None, run_id: int | None = None) -> ParquetRun:
    """Start a run in a Parquet folder (created if new, see open_folder): the training set's rows
    if the folder lacks them, the run id claimed (run_id, else new_run_id), and the run's row
    written with status 'running', as create_run writes it in a store. ConflictError for a
    given run id that the folder holds already."""
    root = Path(out_dir)
    manifest = open_folder(root)
    files = _Files(root, manifest)
    dataset_id = _dataset_id(files, training_set)
    chosen = _claim(root, run_id)
    row = {"id": chosen, "dataset_id": dataset_id, "status": "running", "denoiser": json.dumps(denoiser),
           "sampler": json.dumps(sampler), "seed": int(seed), "num_samples": int(num_samples), "top_k": int(top_k),
           "mass_threshold": float(mass), "versions": json.dumps(versions()),
           "command": json.dumps(list(command)) if command else None, "writer": json.dumps(writer()),
           "created_at": utcnow(), "kind": "pspc"}
    try:
        files.write("runs", pa.table({key: [value] for key, value in row.items()}))
    except BaseException:
        (root / "runs" / f"run_id={chosen}").rmdir()  # the claim, still empty: the id is free again
        raise
    return ParquetRun(root, manifest, chosen, int(seed), files)


class ParquetRecorder(ProvenanceRecorder):
    """ProvenanceRecorder writing each step as new Parquet files of the run's folder instead of a
    store transaction (the rows are the same): the step's files are staged while the step is
    recorded and renamed into place together once it is whole (module doc)."""

    def __init__(self, run: ParquetRun, num_images: int, time_steps, *, sampling_started: float | None = None):
        super().__init__(run.root, run.run_id, num_images, time_steps, sampling_started=sampling_started)
        self.run = run
        self._staged: list[tuple[str, Path, Path]] | None = None

    @contextmanager
    def _transaction(self, step: int):
        self._staged = []
        try:
            yield None
            self.run.files.publish(self._staged)
        except BaseException:
            for _, hidden, _ in self._staged:
                hidden.unlink(missing_ok=True)
            raise
        finally:
            self._staged = None

    def _stage(self, table: str, rows: pa.Table, name: str | None = None) -> None:
        self._staged.append((table, *self.run.files.stage(table, rows, name)))

    def _insert(self, conn, table: str, rows: pa.Table) -> None:
        if rows.num_rows:
            self._stage(table, rows)

    def _register(self, conn, info) -> int:
        """The patch set's id in the folder, staging its rows (named by its fingerprint) if new."""
        known = self.run.files.lookup("patch_sets", info.fingerprint)
        if known is not None:
            return known
        ps_id = _fingerprint_id(info.fingerprint)
        name = f"patchset-{info.fingerprint[:16]}.parquet"
        self._stage("patch_positions", info.positions_table(ps_id), name)
        self._stage("patch_pixels", info.pixels_table(ps_id), name)
        self._stage("patch_sets", pa.table({"id": [ps_id], "fingerprint": [info.fingerprint],
                                            "description": [json.dumps(info.description)], "height": [info.height],
                                            "width": [info.width], "num_patches": [info.num_patches]}), name)
        return ps_id

    def _complete(self, conn, final: torch.Tensor, started: float) -> None:
        batch = final.shape[0]
        self._stage("samples", pa.table({"run_id": np.full(batch, self.run_id, np.int64),
                                         "sample_index": np.arange(batch, dtype=np.int32),
                                         "seed": self.run.seed + np.arange(batch, dtype=np.int64),
                                         "final_image": blobs(final)}))
        self._stage(RUN_COMPLETIONS, self.run.complete_row("complete", self._timings(started)))

