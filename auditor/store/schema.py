"""The provenance schema: SQLAlchemy models of the DuckDB store (one place for all tables).

Ids come from DuckDB sequences (DuckDB has no SERIAL). Images are stored as raw
little-endian float32 bytes of shape [C, H, W] (exact, 3 KiB for Fashion-MNIST); JSON
columns hold configurations verbatim. The migrations in migrations/ create exactly this.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (JSON, BigInteger, Boolean, Column, DateTime, Double, Float, ForeignKey, Integer,
                        LargeBinary, Sequence, SmallInteger, String, Table, Text)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from auditor.store.run_kinds import STORED_KINDS

DATASET_IDS = Sequence("dataset_ids")
RUN_IDS = Sequence("run_ids")
PATCH_SET_IDS = Sequence("patch_set_ids")

RUN_STATUSES = ("running", "complete", "failed")


class Base(DeclarativeBase):
    pass


class Dataset(Base):
    """A training set, identified by its content fingerprint (ingest is idempotent on it)."""

    __tablename__ = "datasets"
    id: Mapped[int] = mapped_column(BigInteger, DATASET_IDS, primary_key=True, server_default=DATASET_IDS.next_value())
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String)
    source: Mapped[str] = mapped_column(String)
    channels: Mapped[int] = mapped_column(SmallInteger)
    height: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class TrainingImage(Base):
    """One training image: its index in the set, stable id, bytes hash and metadata."""

    __tablename__ = "training_images"
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), primary_key=True)
    image_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[str] = mapped_column(String)  # TrainingSet.ids[image_index]; unique per dataset
    sha256: Mapped[str] = mapped_column(String(64))
    label: Mapped[int | None] = mapped_column(Integer)
    label_name: Mapped[str | None] = mapped_column(String)
    source_uri: Mapped[str | None] = mapped_column(String)
    owner: Mapped[str | None] = mapped_column(String)
    license: Mapped[str | None] = mapped_column(String)
    extra: Mapped[dict | None] = mapped_column(JSON)  # any other metadata the loader gave
    pixels: Mapped[bytes | None] = mapped_column(LargeBinary)  # uint8 [C, H, W] (revision 0003)


class Run(Base):
    """One sampling run: its full configuration, status and timings."""

    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(BigInteger, RUN_IDS, primary_key=True, server_default=RUN_IDS.next_value())
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    status: Mapped[str] = mapped_column(String)  # one of RUN_STATUSES
    denoiser: Mapped[dict] = mapped_column(JSON)  # Denoiser.describe(): kind, schedules, dataset record
    sampler: Mapped[dict] = mapped_column(JSON)  # SamplerConfig fields and the time steps
    seed: Mapped[int] = mapped_column(BigInteger)  # sample i starts from seed + i
    num_samples: Mapped[int] = mapped_column(Integer)
    top_k: Mapped[int] = mapped_column(Integer)
    mass_threshold: Mapped[float] = mapped_column(Double)
    versions: Mapped[dict] = mapped_column(JSON)  # python, torch, numpy, numba, duckdb, ...
    command: Mapped[list | None] = mapped_column(JSON)  # argv, when started from the CLI
    writer: Mapped[dict | None] = mapped_column(JSON)  # host and pid of the writing process
    created_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    timings: Mapped[dict | None] = mapped_column(JSON)  # seconds: sampling, recording, total
    error: Mapped[str | None] = mapped_column(Text)


class Sample(Base):
    """One generated image of a run (final image set when the sample completes)."""

    __tablename__ = "samples"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    sample_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    seed: Mapped[int] = mapped_column(BigInteger)
    final_image: Mapped[bytes | None] = mapped_column(LargeBinary)  # float32 [C, H, W], in [-1, 1]


class PatchSet(Base):
    """A patch set used by a run, identified by a hash of its masks."""

    __tablename__ = "patch_sets"
    id: Mapped[int] = mapped_column(BigInteger, PATCH_SET_IDS, primary_key=True, server_default=PATCH_SET_IDS.next_value())
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[dict] = mapped_column(JSON)  # PatchSet.describe()
    height: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    num_patches: Mapped[int] = mapped_column(Integer)


class PatchPosition(Base):
    """Bounding box of patch `position` in the image (for windows: the window itself)."""

    __tablename__ = "patch_positions"
    patch_set_id: Mapped[int] = mapped_column(ForeignKey("patch_sets.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    top: Mapped[int] = mapped_column(SmallInteger)
    left: Mapped[int] = mapped_column(SmallInteger)
    height: Mapped[int] = mapped_column(SmallInteger)
    width: Mapped[int] = mapped_column(SmallInteger)


class PatchPixel(Base):
    """Membership: pixel (y, x) belongs to patch `position` (drives per-pixel attribution)."""

    __tablename__ = "patch_pixels"
    patch_set_id: Mapped[int] = mapped_column(ForeignKey("patch_sets.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    y: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    x: Mapped[int] = mapped_column(SmallInteger, primary_key=True)


class Step(Base):
    """One sampling step of one sample: t, the patch set, z_t and D(z_t)."""

    __tablename__ = "steps"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    sample_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    step: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    t: Mapped[float] = mapped_column(Double)
    t_next: Mapped[float] = mapped_column(Double)
    patch_set_id: Mapped[int] = mapped_column(ForeignKey("patch_sets.id"))
    z: Mapped[bytes] = mapped_column(LargeBinary)  # float32 [C, H, W]
    denoised: Mapped[bytes] = mapped_column(LargeBinary)  # float32 [C, H, W]


# The two bulk tables have no primary key: DuckDB would keep an ART index over tens of
# millions of rows; columnar scans answer the documented queries within budget without it.
patch_weights = Table(
    "patch_weights", Base.metadata,
    Column("run_id", BigInteger, nullable=False),
    Column("sample_index", Integer, nullable=False),
    Column("step", SmallInteger, nullable=False),
    Column("position", Integer, nullable=False),  # patch position in the step's patch set
    Column("rank", SmallInteger, nullable=False),  # 0 = largest weight
    Column("image_index", Integer, nullable=False),  # training_images.image_index
    Column("flip", Boolean, nullable=False),  # the mirrored image (x-flip entry)
    Column("source_top", SmallInteger, nullable=False),  # where the pixels come from in the
    Column("source_left", SmallInteger, nullable=False),  # ORIGINAL image (mirrored box if flip)
    Column("weight", Float, nullable=False),
    comment="kept posterior weights (top-k, mass threshold) per sample, step and patch position",
)

patch_stats = Table(
    "patch_stats", Base.metadata,
    Column("run_id", BigInteger, nullable=False),
    Column("sample_index", Integer, nullable=False),
    Column("step", SmallInteger, nullable=False),
    Column("position", Integer, nullable=False),
    Column("mass", Float, nullable=False),  # weight captured by the kept entries
    Column("entropy", Float, nullable=False),  # of the full weight vector, nats
    Column("ess", Float, nullable=False),  # effective sample size 1 / sum w^2 of the full vector
    comment="per-position summaries of the full posterior weight vector",
)


step_shares = Table(
    "step_shares", Base.metadata,
    Column("run_id", BigInteger, nullable=False),
    Column("sample_index", Integer, nullable=False),
    Column("step", SmallInteger, nullable=False),
    Column("image_index", Integer, nullable=False),
    Column("share", Double, nullable=False),  # fraction of D(z_t) built from the image (kept weights)
    Column("flip_share", Double, nullable=False),  # the part of it from the mirrored copy
    Column("patches", Integer, nullable=False),  # patch positions that kept the image
    comment="per step, the share of D(z_t) built from each training image (written by the recorder)",
)


# Report service (revision 0004).
API_KEY_IDS = Sequence("api_key_ids")
JOB_IDS = Sequence("job_ids")
JOB_STATUSES = ("queued", "running", "complete", "failed", "cancelled")


class ApiKey(Base):
    """A service API key: only sha256 of its token is stored (auditor.service.auth)."""

    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(BigInteger, API_KEY_IDS, primary_key=True, server_default=API_KEY_IDS.next_value())
    name: Mapped[str] = mapped_column(String)
    scopes: Mapped[str] = mapped_column(String)  # comma-separated subset of read,submit
    hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime)


class Job(Base):
    """Work submitted to the service and run by a subprocess (auditor.service.jobs)."""

    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(BigInteger, JOB_IDS, primary_key=True, server_default=JOB_IDS.next_value())
    kind: Mapped[str] = mapped_column(String)  # 'sample'
    status: Mapped[str] = mapped_column(String)  # one of JOB_STATUSES
    request: Mapped[dict] = mapped_column(JSON)  # the validated request body
    run_id: Mapped[int | None] = mapped_column(BigInteger)  # the run the job writes, once created
    pid: Mapped[int | None] = mapped_column(Integer)  # of the subprocess
    log_path: Mapped[str | None] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    error: Mapped[str | None] = mapped_column(Text)


# Network comparisons and external audits (revision 0006).
NETWORK_IDS = Sequence("network_ids")
COMPARISON_IDS = Sequence("comparison_ids")
# runs.kind: 'pspc' (PSPC sampling), 'network-explained' (a network's PF-ODE trajectory with
# PSPC's posterior weights on each of its states as attribution), 'samples-only' (a
# denoiser without posterior weights: final images only), 'external-audit' (an image from
# outside, attributed by inversion + replay or directly at chosen noise levels): the keys of
# auditor.store.run_kinds.RUN_KIND_TABLE, the one table of kinds and their labels.
RUN_KINDS = STORED_KINDS

# Three columns of `runs`, added to the mapped class here so that the revision lives in one
# block. They are nullable in the file: DuckDB cannot add a NOT NULL column to a table that
# others reference (samples, steps); kind always gets its default 'pspc'.
Run.kind = mapped_column(String, nullable=True, default="pspc", server_default="pspc")  # one of RUN_KINDS
Run.network_id = mapped_column(BigInteger, nullable=True)  # networks.id (network-explained runs, audits)
Run.details = mapped_column(JSON, nullable=True)  # kind-specific record: comparison, audit method and input


class Network(Base):
    """A denoiser network a comparison or audit used, identified by what it computes."""

    __tablename__ = "networks"
    id: Mapped[int] = mapped_column(BigInteger, NETWORK_IDS, primary_key=True, server_default=NETWORK_IDS.next_value())
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 of (sha256, shape, conversion)
    sha256: Mapped[str] = mapped_column(String(64))  # of the checkpoint file, or of an in-memory module's tensors
    name: Mapped[str] = mapped_column(String)
    kind: Mapped[str] = mapped_column(String)  # checkpoint, torchscript, edm-pickle, module, vp-epsilon
    source: Mapped[str | None] = mapped_column(String)  # file path (None: an in-memory module)
    channels: Mapped[int] = mapped_column(SmallInteger)
    height: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    config: Mapped[dict] = mapped_column(JSON)  # NetworkDenoiser.describe(): loader record, config, training
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Comparison(Base):
    """Network vs denoisers from shared initial noise: links its runs, holds its settings."""

    __tablename__ = "comparisons"
    id: Mapped[int] = mapped_column(BigInteger, COMPARISON_IDS, primary_key=True,
                                    server_default=COMPARISON_IDS.next_value())
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    network_id: Mapped[int] = mapped_column(ForeignKey("networks.id"))
    status: Mapped[str] = mapped_column(String)  # one of RUN_STATUSES
    seed: Mapped[int] = mapped_column(BigInteger)  # sample i of every run starts from noise seed + i
    num_samples: Mapped[int] = mapped_column(Integer)
    sampler: Mapped[dict] = mapped_column(JSON)  # SamplerConfig fields and the time steps
    config: Mapped[dict] = mapped_column(JSON)  # denoisers, explainer, top-k, mass, descriptor, thresholds
    versions: Mapped[dict] = mapped_column(JSON)
    command: Mapped[list | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    error: Mapped[str | None] = mapped_column(Text)


class ComparisonRun(Base):
    """A run of a comparison and its role: 'network' or the denoiser's kind."""

    __tablename__ = "comparison_runs"
    comparison_id: Mapped[int] = mapped_column(ForeignKey("comparisons.id"), primary_key=True)
    role: Mapped[str] = mapped_column(String, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))


class StepAgreement(Base):
    """At a step of a network-explained (or audit replay) run: the network's D(z_t) and how
    far PSPC's D(z_t) (steps.denoised, which the stored weights compose) is from it."""

    __tablename__ = "step_agreement"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    sample_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    step: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    t: Mapped[float] = mapped_column(Double)
    network_denoised: Mapped[bytes] = mapped_column(LargeBinary)  # float32 [C, H, W]
    mse: Mapped[float] = mapped_column(Double)  # mean over pixels of (network - PSPC)^2
    max_abs_error: Mapped[float] = mapped_column(Double)


class DescriptorRecord(Base):
    """An image descriptor that scored similarities (auditor.similarity.descriptors): model, preprocessing."""

    __tablename__ = "descriptors"
    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)  # Descriptor.fingerprint
    name: Mapped[str] = mapped_column(String)
    kind: Mapped[str] = mapped_column(String)  # sscd, pixel-correlation
    dimension: Mapped[int] = mapped_column(Integer)
    preprocessing: Mapped[dict] = mapped_column(JSON)
    record: Mapped[dict] = mapped_column(JSON)  # Descriptor.describe(): checkpoint sha256, versions, ...
    created_at: Mapped[datetime] = mapped_column(DateTime)


class SimilarityScore(Base):
    """Descriptor similarity of sample i of run A and sample i of run B (same initial noise; Fig. 9)."""

    __tablename__ = "similarity_scores"
    run_a: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    run_b: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    sample_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    descriptor_fingerprint: Mapped[str] = mapped_column(ForeignKey("descriptors.fingerprint"), primary_key=True)
    comparison_id: Mapped[int | None] = mapped_column(BigInteger)
    descriptor: Mapped[str] = mapped_column(String)  # its name (what a reader sees)
    preprocessing: Mapped[dict] = mapped_column(JSON)
    score: Mapped[float] = mapped_column(Double)  # cosine similarity of the descriptors
    thresholds: Mapped[list] = mapped_column(JSON)
    flag: Mapped[float | None] = mapped_column(Double)  # highest threshold reached, None if none
    flagged: Mapped[bool] = mapped_column(Boolean)  # score >= the lowest threshold


class CopyMatch(Base):
    """One of the k nearest training images of a stored sample, by descriptor."""

    __tablename__ = "copy_matches"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    sample_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    descriptor_fingerprint: Mapped[str] = mapped_column(ForeignKey("descriptors.fingerprint"), primary_key=True)
    rank: Mapped[int] = mapped_column(SmallInteger, primary_key=True)  # 0 = nearest
    image_index: Mapped[int] = mapped_column(Integer)  # training_images.image_index
    flip: Mapped[bool] = mapped_column(Boolean)  # matched the mirrored image
    score: Mapped[float] = mapped_column(Double)
    descriptor: Mapped[str] = mapped_column(String)
    preprocessing: Mapped[dict] = mapped_column(JSON)
    thresholds: Mapped[list] = mapped_column(JSON)
    flag: Mapped[float | None] = mapped_column(Double)
    flagged: Mapped[bool] = mapped_column(Boolean)
    search: Mapped[dict] = mapped_column(JSON)  # faiss index kind, exactness, entries


# Fidelity studies (revision 0007): denoisers against a network (auditor.workflows.fidelity).
FIDELITY_STUDY_IDS = Sequence("fidelity_study_ids")


class FidelityStudy(Base):
    """A study of how closely training-free denoisers reproduce a network, with its record."""

    __tablename__ = "fidelity_studies"
    id: Mapped[int] = mapped_column(BigInteger, FIDELITY_STUDY_IDS, primary_key=True,
                                    server_default=FIDELITY_STUDY_IDS.next_value())
    name: Mapped[str] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    source: Mapped[str | None] = mapped_column(String)  # 'auditor fidelity run', or the imported file
    network_name: Mapped[str | None] = mapped_column(String)
    network_sha256: Mapped[str | None] = mapped_column(String(64))  # of the network's file
    network: Mapped[dict] = mapped_column(JSON)  # NetworkDenoiser.describe()
    training_fingerprint: Mapped[str] = mapped_column(String(64))
    test_fingerprint: Mapped[str | None] = mapped_column(String(64))  # the held-out images
    seed: Mapped[int | None] = mapped_column(BigInteger)
    record: Mapped[dict] = mapped_column(JSON)  # command, configuration, datasets, states, versions, timings
    findings: Mapped[list] = mapped_column(JSON)  # the verdict on the paper's finding, one line each
    denoisers: Mapped[dict] = mapped_column(JSON)  # process -> denoiser name -> describe()
    concentration_record: Mapped[dict] = mapped_column(JSON)  # {"within": {side: [share per t]}, "record"}
    similarity: Mapped[dict | None] = mapped_column(JSON)  # SimilarityMatrix.to_dict() without per-sample scores


class FidelityCurvePoint(Base):
    """MSE against the network of one denoiser at one noise level of one process (Figs. 4, 7)."""

    __tablename__ = "fidelity_errors"
    study_id: Mapped[int] = mapped_column(ForeignKey("fidelity_studies.id"), primary_key=True)
    process: Mapped[str] = mapped_column(String, primary_key=True)  # forward, reverse
    denoiser: Mapped[str] = mapped_column(String, primary_key=True)
    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True)  # index of t (reverse: the sampling step)
    position: Mapped[int] = mapped_column(SmallInteger)  # the denoiser's column in the study
    t: Mapped[float] = mapped_column(Double)
    mse: Mapped[float] = mapped_column(Double)  # mean over states of the per-state MSE (mean over pixels)
    stderr: Mapped[float] = mapped_column(Double)  # standard error of that mean
    states: Mapped[int | None] = mapped_column(Integer)  # noisy states averaged


class FidelityConcentration(Base):
    """Side of the centred square holding `fraction` of the network's G(t) (Fig. 3)."""

    __tablename__ = "fidelity_concentration"
    study_id: Mapped[int] = mapped_column(ForeignKey("fidelity_studies.id"), primary_key=True)
    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True)  # index of t in the table
    fraction: Mapped[float] = mapped_column(Double, primary_key=True)
    t: Mapped[float] = mapped_column(Double)
    mean_side: Mapped[float] = mapped_column(Double)  # mean over output pixels, pixels
    median_side: Mapped[float] = mapped_column(Double)


class FidelitySimilarity(Base):
    """Mean descriptor similarity of a denoiser's samples to the network's, from shared noise (Fig. 9)."""

    __tablename__ = "fidelity_similarity"
    study_id: Mapped[int] = mapped_column(ForeignKey("fidelity_studies.id"), primary_key=True)
    denoiser: Mapped[str] = mapped_column(String, primary_key=True)
    position: Mapped[int] = mapped_column(SmallInteger)
    similarity: Mapped[float] = mapped_column(Double)
    std: Mapped[float | None] = mapped_column(Double)  # over the samples
    samples: Mapped[int | None] = mapped_column(Integer)
    descriptor: Mapped[str] = mapped_column(String)  # its name (SSCD, or the named fallback)


class FidelityScheduleStep(Base):
    """A step of a schedule tuned on the network (Appendix B): s(t) and lambda(t)."""

    __tablename__ = "fidelity_schedule"
    study_id: Mapped[int] = mapped_column(ForeignKey("fidelity_studies.id"), primary_key=True)
    step: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    t: Mapped[float] = mapped_column(Double)
    patch_size: Mapped[int | None] = mapped_column(SmallInteger)  # PSPC-Square
    flex_lambda: Mapped[float | None] = mapped_column(Double)  # PSPC-Flex (LAMBDA is a DuckDB keyword)
    candidate_errors: Mapped[dict | None] = mapped_column(JSON)  # {"patch_size": {s: MSE}, "lambda": {l: MSE}}


# Copy verdicts (revision 0008): calibrated thresholds and the verdicts they gave (auditor.similarity.verdict).
COPY_CALIBRATION_IDS = Sequence("copy_calibration_ids")


class CopyCalibration(Base):
    """A threshold of one evidence source on one training set, with its measured TPR / FPR."""

    __tablename__ = "copy_calibrations"
    id: Mapped[int] = mapped_column(BigInteger, COPY_CALIBRATION_IDS, primary_key=True,
                                    server_default=COPY_CALIBRATION_IDS.next_value())
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    evidence: Mapped[str] = mapped_column(String)  # aligned-correlation, region-match
    evidence_fingerprint: Mapped[str] = mapped_column(String(64))  # the source's parameters
    call: Mapped[str] = mapped_column(String)  # copy, partial copy
    threshold: Mapped[float] = mapped_column(Double)
    target_fpr: Mapped[float] = mapped_column(Double)
    tpr: Mapped[float] = mapped_column(Double)  # on the calibration split's copies of this call
    fpr: Mapped[float] = mapped_column(Double)  # on the calibration split's novel images
    positives: Mapped[int] = mapped_column(Integer)
    negatives: Mapped[int] = mapped_column(Integer)
    record: Mapped[dict] = mapped_column(JSON)  # evidence describe(), cases, seed, novel images, command
    created_at: Mapped[datetime] = mapped_column(DateTime)


class CopyVerdict(Base):
    """The copy verdict of a stored image (an audited image or a sample)."""

    __tablename__ = "copy_verdicts"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    sample_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    verdict: Mapped[str] = mapped_column(String)  # copy, partial copy, no copy found, inconclusive
    reason: Mapped[str] = mapped_column(Text)
    evidence: Mapped[str | None] = mapped_column(String)
    score: Mapped[float | None] = mapped_column(Double)
    threshold: Mapped[float | None] = mapped_column(Double)
    tpr: Mapped[float | None] = mapped_column(Double)
    fpr: Mapped[float | None] = mapped_column(Double)
    calibration_id: Mapped[int | None] = mapped_column(BigInteger)
    sources: Mapped[list] = mapped_column(JSON)  # [{entry, image_index, image_id, flip}]
    region: Mapped[dict | None] = mapped_column(JSON)  # {box, area, mask}
    details: Mapped[dict] = mapped_column(JSON)  # every source's score and threshold


# Counterfactual runs (revision 0009): a sample without some training images (auditor.workflows.counterfactual).
class Counterfactual(Base):
    """A complete counterfactual run and how its image differs from its parent sample's."""

    __tablename__ = "counterfactuals"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)  # kind 'counterfactual'
    parent_run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    parent_sample: Mapped[int] = mapped_column(Integer)
    mode: Mapped[str] = mapped_column(String)  # resample (same initial noise), replay (the parent's states)
    selector: Mapped[dict] = mapped_column(JSON)  # how the removed set was chosen: {by, value, seed, score}
    removed_count: Mapped[int] = mapped_column(Integer)
    removed_sha256: Mapped[str] = mapped_column(String(64))  # of the sorted indices as int64 LE bytes
    mse: Mapped[float] = mapped_column(Double)  # mean over pixels of (counterfactual - parent)^2, [-1, 1] units
    max_abs: Mapped[float] = mapped_column(Double)
    similarity: Mapped[float | None] = mapped_column(Double)  # descriptor cosine similarity of the two images
    descriptor: Mapped[str | None] = mapped_column(String)
    diverged_step: Mapped[int | None] = mapped_column(SmallInteger)  # first step whose D differs by > 1 grey level
    step_changes: Mapped[list] = mapped_column(JSON)  # per step: {step, t, mse, max_abs} of D(z_t)
    change_map: Mapped[bytes] = mapped_column(LargeBinary)  # float32 [C, H, W]: counterfactual - parent
    seconds: Mapped[float | None] = mapped_column(Double)  # the counterfactual's compute
    parent_seconds: Mapped[float | None] = mapped_column(Double)  # the parent's sampling time, when recorded
    created_at: Mapped[datetime] = mapped_column(DateTime)


class CounterfactualRemoved(Base):
    """A training image removed in a counterfactual run (its mirrored entry with it)."""

    __tablename__ = "counterfactual_removed"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    image_index: Mapped[int] = mapped_column(Integer, primary_key=True)
