"""Exporting a sample's provenance for third parties, and verifying an exported image.

`build_export` reads the sample in one read-only transaction, refuses what cannot be exported
(an unknown id, a run that is not complete, a samples-only run with no attribution), and
builds the bytes: the PNG with a signed C2PA manifest, an UNSIGNED manifest archive when no
certificate is given, or a W3C PROV document (auditor.exports). `export_sample` writes them
to a file, mode 0600 and atomically (nothing is left behind on an error). `verify_image`
reads an image's manifest back (signature, image hash, trust), and compares its attribution
assertion with the local store when that holds the run.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from auditor.errors import ConflictError, NotFoundError, StoreError, UserError
from auditor.exports import assertion as attribution
from auditor.exports.files import write_private
from auditor.exports.prov_document import PROV_FORMATS, Requester, prov_document, prov_images, serialize
from auditor.exports.signing import SigningCredentials
from auditor.store import database
from auditor.store.read_models.exports import ExportRecord, load_export_record
from pspc.data.training_set import to_uint8

__all__ = ["FORMATS", "Export", "ExportOptions", "ExportResult", "VerifyReport", "build_export", "default_name",
           "export_sample", "verify_image"]

FORMATS = ("c2pa", *PROV_FORMATS)
ASSERTION_TOP = 10  # top sources in the C2PA assertion (PROV lists every source of the final image by default)
_SUFFIXES = {"prov-json": ".prov.json", "prov-n": ".provn"}
UNSIGNED_SUFFIX = ".unsigned.c2pa"


@dataclass(frozen=True, kw_only=True)
class ExportOptions:
    """format: c2pa, prov-json or prov-n; top: sources listed (None: 10 in the C2PA assertion,
    all of the final image's in PROV); step_top: each step's top sources in PROV;
    credentials: signs the C2PA manifest (None: an unsigned manifest archive); requester:
    the PROV agent who asked (a user or an API key's name)."""

    format: str = "c2pa"
    top: int | None = None
    step_top: int = 5
    credentials: SigningCredentials | None = None
    requester: Requester = field(default_factory=lambda: Requester("unknown"))
    timeout: float = database.DEFAULT_TIMEOUT


@dataclass(frozen=True)
class Export:
    """An export's bytes, its media type and the file name it is offered under; image_bytes:
    the size of the same PNG without a manifest (C2PA), for the overhead."""

    data: bytes
    media_type: str
    filename: str
    signed: bool
    image_bytes: int | None = None


@dataclass(frozen=True)
class ExportResult:
    """What export_sample wrote: the file, the export, and the seconds it took (read, build, write)."""

    path: Path
    export: Export
    seconds: float


def default_name(run_id: int, sample_index: int, fmt: str, signed: bool) -> str:
    """run{R}-sample{K}.c2pa.png (signed), ...unsigned.c2pa, ....prov.json or ....provn."""
    stem = f"run{int(run_id)}-sample{int(sample_index)}"
    if fmt == "c2pa":
        return stem + (".c2pa.png" if signed else UNSIGNED_SUFFIX)
    return stem + _SUFFIXES[fmt]


def _check_options(options: ExportOptions) -> None:
    if options.format not in FORMATS:
        raise UserError(f"unknown export format {options.format!r}; one of {', '.join(FORMATS)}")
    if options.top is not None and options.top < 1:
        raise UserError(f"top must be at least 1, got {options.top}")
    if options.step_top < 0:
        raise UserError(f"step_top must be >= 0, got {options.step_top}")


def _check_exportable(record: ExportRecord) -> None:
    """ConflictError unless the sample is complete and has an attribution to export."""
    run, data = record.run, record.provenance
    where = f"run {run['id']}"
    if run["status"] != "complete":
        reason = f" ({run['error'].strip().splitlines()[-1]})" if run.get("error") else ""
        raise ConflictError(f"{where} is {run['status']}{reason}: only complete runs are exported; continue it with "
                            f"`auditor sample --resume {run['id']}` (same --data)")
    if run["kind"] == "samples-only":
        raise ConflictError(f"{where} holds samples only, with no attribution recorded: export the network-explained "
                            f"run of its comparison instead")
    if data.final_image is None or data.final_step is None:
        raise ConflictError(f"{where} sample {data.sample_index} has no final image and final step recorded")


def _load(db_path, run_id: int, sample_index: int, images, timeout: float) -> ExportRecord:
    record = load_export_record(db_path, run_id, sample_index, images=images, timeout=timeout)
    _check_exportable(record)
    return record


def build_export(db_path, run_id: int, sample_index: int, options: ExportOptions) -> Export:
    """The export's bytes (see the module docstring). NotFoundError for unknown ids,
    ConflictError for a run that cannot be exported, SigningError for credentials c2pa refuses."""
    _check_options(options)
    if options.format == "c2pa":
        from auditor.exports import c2pa_manifest

        top = options.top or ASSERTION_TOP
        record = _load(db_path, run_id, sample_index, lambda d: attribution.assertion_images(d, top), options.timeout)
        claim = attribution.attribution_assertion(record, top)
        signed = options.credentials is not None
        if signed:
            data = c2pa_manifest.signed_png(record, claim, options.credentials)
            media = "image/png"
        else:
            data, media = c2pa_manifest.unsigned_archive(record, claim), "application/c2pa"
        return Export(data, media, default_name(run_id, sample_index, "c2pa", signed), signed,
                      len(c2pa_manifest.sample_png(record)))
    record = _load(db_path, run_id, sample_index, lambda d: prov_images(d, options.top, options.step_top),
                   options.timeout)
    doc = prov_document(record, options.requester, top=options.top, step_top=options.step_top)
    media = "application/json" if options.format == "prov-json" else "text/provenance-notation"
    return Export(serialize(doc, options.format), media, default_name(run_id, sample_index, options.format, False),
                  False)


def export_sample(db_path, run_id: int, sample_index: int, options: ExportOptions,
                  out: str | os.PathLike | None = None) -> ExportResult:
    """build_export, written to `out` (default: its file name in the current folder) with mode
    0600 through a temporary file. An unsigned C2PA export must be named *.unsigned.c2pa."""
    started = time.perf_counter()
    if options.format == "c2pa" and options.credentials is None and out is not None \
            and not str(out).endswith(UNSIGNED_SUFFIX):
        raise UserError(f"without a certificate the C2PA export is an UNSIGNED manifest archive: name it "
                        f"*{UNSIGNED_SUFFIX} (got {out}), or sign it with --cert and --key")
    export = build_export(db_path, run_id, sample_index, options)
    path = write_private(Path(out) if out is not None else Path(export.filename), export.data)
    return ExportResult(path, export, time.perf_counter() - started)


# ---------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VerifyReport:
    """reading: the manifest (auditor.exports.verification.ManifestReading); store: how the
    assertion compares with the local store ('matches', or why it was not compared)."""

    reading: object
    store: str


def _trust_anchor(path) -> str | None:
    from cryptography import x509

    from auditor.exports.verification import VerificationError

    if path is None:
        return None
    try:
        text = Path(path).read_bytes()
        x509.load_pem_x509_certificates(text)
    except OSError as exc:
        raise VerificationError(f"trust anchor {path}: cannot read it ({exc.strerror or type(exc).__name__})") from None
    except ValueError:
        raise VerificationError(f"trust anchor {path}: not a PEM certificate") from None
    return text.decode("ascii", "replace")


def _compare_store(db_path, data: bytes, claimed: dict, name: str, timeout: float) -> str:
    """'matches', or why it was not compared; VerificationError when the store's run differs from the claim."""
    from auditor.exports.verification import VerificationError, png_pixels

    run_id, sample_index = claimed.get("run_id"), claimed.get("sample_index")
    if db_path is None or not Path(db_path).exists():
        return f"not compared: no local store at {db_path}"
    top = len(claimed.get("top_sources") or []) or ASSERTION_TOP
    try:
        record = _load(db_path, run_id, sample_index, lambda d: attribution.assertion_images(d, top), timeout)
    except NotFoundError:
        return f"not compared: {db_path} holds no run {run_id} sample {sample_index}"
    except (ConflictError, StoreError) as exc:
        return f"not compared: {exc}"
    if record.run_fingerprint != (claimed.get("store") or {}).get("run_fingerprint"):
        return f"not compared: run {run_id} of {db_path} is another run (its fingerprint differs): another store's"
    problems = attribution.compare_with_store(claimed, attribution.attribution_assertion(record, top))
    stored = to_uint8(torch.from_numpy(np.array(record.provenance.final_image))).numpy()
    pixels = png_pixels(data)
    if pixels.shape != stored.shape or not np.array_equal(pixels, stored):
        problems.append("the image's pixels are not the stored final image's")
    if problems:
        raise VerificationError(f"{name}: its attribution assertion does not match run {run_id} sample {sample_index} "
                                f"of {db_path}: " + "; ".join(problems))
    return f"matches run {run_id} sample {sample_index} of {db_path}"


def verify_image(path: str | os.PathLike, *, trust_anchor: str | os.PathLike | None = None,
                 db_path: str | os.PathLike | None = None, timeout: float = database.DEFAULT_TIMEOUT) -> VerifyReport:
    """Read and check the image's manifest (auditor.exports.verification.read_manifest), then
    compare its assertion with the store at `db_path` when that holds the run."""
    from auditor.exports.verification import VerificationError, read_manifest

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise VerificationError(f"{path}: cannot read it ({exc.strerror or type(exc).__name__})") from None
    reading = read_manifest(data, str(path), _trust_anchor(trust_anchor))
    return VerifyReport(reading, _compare_store(db_path, data, reading.assertion, str(path), timeout))
