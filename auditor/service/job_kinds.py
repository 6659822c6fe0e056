"""The kinds of job the report service runs: one request model per kind, and JOB_KINDS, the registry.

A kind's request (a pydantic model whose `kind` is the kind's name) knows:
- `options()`: the workflow's options built from it (SamplingOptions, ComparisonOptions,
  AuditOptions, auditor.workflows.options): THE validation, the one the CLI's command
  builds too, so the API and the command line accept and refuse the same requests;
- `check(dataset, folders)`: what needs the store's dataset or the service's folders (a
  fixed patch size that must fit the images, the network file, the uploaded image read as
  `auditor audit` reads it);
- `cli_args(folders)`: the `auditor` command and every option its subprocess runs with (the
  run records them as its `command`, which reproduces it);
- `planned_steps()` and `resume_hint(run_id)`, for what the job shows.

Adding a kind (counterfactuals, once their workflow lands) is such a model and one entry in
JOB_KINDS: auditor.service.api.jobs adds its route POST /api/jobs/{name} (JSON, or
multipart/form-data when the kind has an `upload` form) and JobRunner runs it. No request
names a server path: datasets come from the store, networks and learned copy descriptors
(`learned:NAME`) by file name from the service's networks folder (settings.networks_dir),
images as uploads kept under the jobs folder by their sha256 (auditor.service.uploads). Exports need no job: they are synchronous GET routes
(auditor.service.api.provenance).
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from fastapi import UploadFile
from pydantic import BaseModel, ConfigDict, Field, model_validator

from auditor.errors import NotFoundError, UserError
from auditor.service.limits import MAX_ID, MAX_PIXEL
from auditor.service.uploads import UploadedImage, check_upload, upload_path
from auditor.workflows.options import (
    DEFAULT_NETWORK, DEFAULT_NOISE_LEVELS, DEFAULT_THRESHOLDS, MAX_REMOVED_IDS, AuditOptions, ComparisonOptions,
    CounterfactualOptions, ExplainOptions, SamplingOptions
)

__all__ = ["JOB_KINDS", "MAX_SAMPLES", "MAX_STEPS", "MAX_TOP_K", "AuditJobRequest", "AuditUpload",
           "CompareJobRequest", "CounterfactualJobRequest", "JobFolders", "JobKind", "JobRequest", "SampleJobRequest",
           "job_request"]

MAX_SAMPLES = 64
MAX_STEPS = 256
MAX_TOP_K = 1024
MAX_NOISE_LEVELS = 64
MAX_COPY_K = 100
DEFAULT_NETWORK_NAME = Path(DEFAULT_NETWORK).name

Denoiser = Literal["pspc-square", "pspc-flex", "empirical", "gaussian", "cfdm"]  # = ComparisonOptions' KINDS
Explainer = Literal["pspc-square", "pspc-flex", "empirical"]  # = RECORDABLE_KINDS (a test checks both)
FILE_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}"  # a file in a service folder, by name: no path, no dot first
NetworkName = Annotated[str, Field(
    pattern=rf"^{FILE_NAME}$",
    description="a network file in the service's networks folder (AUDITOR_NETWORKS_DIR, default ./checkpoints), "
                "by its name: a project checkpoint, a TorchScript net(z, sigma) or an EDM .pkl")]
# The descriptor specs a request may name: none reads a path from the request (learned:NAME is a file of the
# networks folder, by name; fmnist-copy is the committed checkpoint; sscd is the service's configured one)
SAFE_DESCRIPTOR = rf"auto|sscd|pixel-correlation(:[1-9][0-9]{{0,3}})?|fmnist-copy|learned:{FILE_NAME}"
LEARNED_HELP = ("fmnist-copy (the committed learned copy descriptor, 28x28 grayscale) or learned:NAME (a learned "
                "descriptor checkpoint in the service's networks folder, by file name)")


@dataclass(frozen=True)
class JobFolders:
    """Where a job's files are on the server: the jobs folder (logs, uploads) and the networks folder."""

    jobs_dir: Path
    networks_dir: Path

    def network(self, name: str, what: str = "network") -> Path:
        """The file `name` (a network, or `what`) in the networks folder; NotFoundError naming the ones there."""
        path = self.networks_dir / name
        if not path.is_file():
            there = sorted(p.name for p in self.networks_dir.glob("*") if p.is_file()) \
                if self.networks_dir.is_dir() else []
            raise NotFoundError(f"no {what} {name!r} in the service's networks folder (AUDITOR_NETWORKS_DIR); "
                                f"it holds: {', '.join(there) or 'nothing'}")
        return path.resolve()

    def descriptor_spec(self, spec: str) -> str:
        """A request's descriptor spec as the CLI takes it: learned:NAME becomes learned:PATH in the networks folder."""
        if spec.startswith("learned:"):
            return f"learned:{self.network(spec.removeprefix('learned:'), 'learned descriptor')}"
        return spec


class JobRequest(BaseModel):
    """What every job request has: the stored dataset it runs on, with or without mirrored images.
    A kind that runs (a JOB_KINDS entry) adds `cli_args(folders)`: the `auditor` command and its
    options, after `auditor --db ... --lock-timeout ...`; form-field models (AuditUpload) have none."""

    model_config = ConfigDict(extra="forbid")
    command: ClassVar[str]  # the `auditor` command the job runs

    dataset_id: int = Field(ge=1, le=MAX_ID,
                            description="a dataset in the store (GET /api/datasets); its stored pixels are used")
    xflip: bool = Field(True, description="include the mirrored training images")

    @model_validator(mode="after")
    def _valid_options(self):
        self.options()  # THE validation of the request, shared with the command line
        return self

    @abstractmethod
    def options(self):
        """The request as the workflow's options (raises UserError, a ValueError, when invalid)."""

    def check(self, dataset: dict, folders: JobFolders) -> None:
        """The checks that need the dataset (its row: height, width, channels) or the folders."""

    def check_store(self, db_path, timeout: float) -> None:
        """The checks that need the store's other records (a counterfactual's parent run)."""

    def planned_steps(self) -> int | None:
        """The steps the job's run records (its progress), until the run says."""
        return getattr(self, "steps", None)

    def resume_hint(self, run_id: int) -> str:
        """How to continue the job's failed run, if it can be ('' if not)."""
        return ""

    def _common_args(self) -> list[str]:
        return ["--dataset", str(self.dataset_id), *([] if self.xflip else ["--no-xflip"])]


class SampleJobRequest(JobRequest):
    """PSPC sampling on a dataset held in the store, every step recorded (as `auditor sample`)."""

    command: ClassVar[str] = "sample"
    kind: Literal["sample"] = "sample"
    num_samples: int = Field(4, ge=1, le=MAX_SAMPLES, description="samples to generate (sample i uses seed + i)")
    steps: int = Field(18, ge=1, le=MAX_STEPS, description="sampling steps on the EDM schedule")
    sampler: Literal["euler", "heun"] = "euler"
    denoiser: Explainer = "pspc-square"
    patch_size: int | None = Field(None, ge=1, le=MAX_PIXEL,
                                   description="pspc-square only: fixed s x s patches instead of s(t)")
    seed: int = Field(0, ge=0, le=2**53)
    top_k: int = Field(16, ge=1, le=MAX_TOP_K, description="kept posterior weights per sample and patch")
    mass: float = Field(0.99, gt=0, le=1, description="stop keeping weights once they hold this mass")

    def options(self) -> SamplingOptions:
        return SamplingOptions(denoiser_kind=self.denoiser, patch_size=self.patch_size, num_samples=self.num_samples,
                               steps=self.steps, sampler=self.sampler, seed=self.seed, top_k=self.top_k,
                               mass=self.mass)

    def check(self, dataset: dict, folders: JobFolders) -> None:
        self.options().check_fits(dataset["height"], dataset["width"])

    def cli_args(self, folders: JobFolders) -> list[str]:
        argv = ["sample", "--dataset", str(self.dataset_id), "--num", str(self.num_samples), "--steps",
                str(self.steps), "--sampler", self.sampler, "--denoiser", self.denoiser, "--seed", str(self.seed),
                "--top-k", str(self.top_k), "--mass", repr(float(self.mass))]
        if self.patch_size is not None:
            argv += ["--patch-size", str(self.patch_size)]
        return argv + ([] if self.xflip else ["--no-xflip"])

    def resume_hint(self, run_id: int) -> str:
        return f"; continue it with `auditor sample --dataset {self.dataset_id} --resume {run_id}`"


class ExplainJobRequest(JobRequest):
    """What a comparison and an audit share: how PSPC explains the network's states, and copy detection."""

    explainer: Explainer = Field("pspc-square", description="the PSPC denoiser whose posterior weights attribute "
                                                            "the states")
    patch_size: int | None = Field(None, ge=1, le=MAX_PIXEL,
                                   description="explainer pspc-square only: fixed s x s patches instead of s(t)")
    sensitivity_draws: int = Field(ExplainOptions.sensitivity_draws, ge=1, le=MAX_SAMPLES,
                                   description="pspc-flex with a network: draws per noise level of its Eq. 8 "
                                               "sensitivity")
    seed: int = Field(0, ge=0, le=2**53)
    top_k: int = Field(16, ge=1, le=MAX_TOP_K, description="kept posterior weights per sample and patch")
    mass: float = Field(0.99, gt=0, le=1, description="stop keeping weights once they hold this mass")
    descriptor: str = Field("auto", pattern=rf"^({SAFE_DESCRIPTOR})$",
                            description="copy-detection descriptor: auto (the service's SSCD checkpoint when "
                                        "configured, else pixel-correlation, which is not SSCD), sscd, "
                                        f"pixel-correlation[:SIZE], {LEARNED_HELP}")
    verdict_descriptor: str = Field(
        "configured", pattern=rf"^(configured|none|{SAFE_DESCRIPTOR})$",
        description="the copy verdict's descriptor-match descriptor (`--verdict-descriptor`): configured (the "
                    "service's $PSPC_COPY_DESCRIPTOR, else none), none, auto (fmnist-copy on the training set it was "
                    f"trained on only), {LEARNED_HELP}, or another descriptor above; the verdict then needs a "
                    "calibration with it (`auditor calibrate --verdict-descriptor`)")
    thresholds: list[Annotated[float, Field(ge=-1, le=1)]] = Field(
        list(DEFAULT_THRESHOLDS), min_length=1, max_length=8, description="copy thresholds on the descriptor "
                                                                          "similarity")
    copy_k: int = Field(5, ge=0, le=MAX_COPY_K, description="nearest training images stored per image (0: no copy "
                                                            "detection)")

    def _explain_options(self) -> dict:
        return dict(explainer=self.explainer, patch_size=self.patch_size, sensitivity_draws=self.sensitivity_draws,
                    seed=self.seed, top_k=self.top_k, mass=self.mass, descriptor=self.descriptor,
                    thresholds=tuple(self.thresholds), copy_k=self.copy_k, verdict_descriptor=self.verdict_descriptor)

    def _check_descriptors(self, folders: JobFolders) -> None:
        """A learned:NAME descriptor must be a file of the networks folder."""
        folders.descriptor_spec(self.descriptor)
        folders.descriptor_spec(self.verdict_descriptor)

    def _explain_args(self, folders: JobFolders) -> list[str]:
        argv = ["--explainer", self.explainer, "--sensitivity-draws", str(self.sensitivity_draws), "--seed",
                str(self.seed), "--top-k", str(self.top_k), "--mass", repr(float(self.mass)), "--descriptor",
                folders.descriptor_spec(self.descriptor), "--thresholds",
                ",".join(repr(float(t)) for t in self.thresholds), "--copy-k", str(self.copy_k)]
        if self.verdict_descriptor != "configured":  # configured: the service's own environment decides
            argv += ["--verdict-descriptor", folders.descriptor_spec(self.verdict_descriptor)]
        return argv + ([] if self.patch_size is None else ["--patch-size", str(self.patch_size)])


class CompareJobRequest(ExplainJobRequest):
    """A network and PSPC (and other denoisers) sampling from shared noise, the network's samples
    explained by PSPC at every step (as `auditor compare`)."""

    command: ClassVar[str] = "compare"
    kind: Literal["compare"] = "compare"
    network: NetworkName = DEFAULT_NETWORK_NAME
    num_samples: int = Field(4, ge=1, le=MAX_SAMPLES, description="samples per denoiser (sample i from seed + i)")
    steps: int = Field(ComparisonOptions.steps, ge=1, le=MAX_STEPS, description="sampling steps on the EDM schedule")
    sampler: Literal["euler", "heun"] = ComparisonOptions.sampler
    denoisers: list[Denoiser] = Field(list(ComparisonOptions.denoisers), min_length=1, max_length=5,
                                      description="denoisers sampled from the same noise: the PSPC kinds and empirical "
                                                  "with attribution, gaussian and cfdm final images only")

    def options(self) -> ComparisonOptions:
        return ComparisonOptions(**self._explain_options(), num_samples=self.num_samples, steps=self.steps,
                                 sampler=self.sampler, denoisers=tuple(self.denoisers))

    def check(self, dataset: dict, folders: JobFolders) -> None:
        folders.network(self.network)
        self._check_descriptors(folders)

    def cli_args(self, folders: JobFolders) -> list[str]:
        return ["compare", *self._common_args(), "--network", str(folders.network(self.network)), "--num",
                str(self.num_samples), "--steps", str(self.steps), "--sampler", self.sampler, "--denoisers",
                ",".join(self.denoisers), *self._explain_args(folders)]


class AuditJobFields(ExplainJobRequest):
    """An audit of an uploaded image (as `auditor audit IMAGE`): with a network, the image is
    inverted along its PF-ODE and the replay attributed step by step; `method: direct`
    attributes x + t eps at `noise_levels` without a network."""

    command: ClassVar[str] = "audit"
    kind: Literal["audit"] = "audit"
    method: Literal["inversion", "direct"] = Field("inversion", description="inversion (with `network`) or direct "
                                                                            "(no network: `--no-network`)")
    network: NetworkName = DEFAULT_NETWORK_NAME
    steps: int = Field(AuditOptions.steps, ge=1, le=MAX_STEPS, description="inversion: steps of the PF-ODE "
                                                                           "(at least 2)")
    sampler: Literal["euler", "heun"] = Field(AuditOptions.sampler, description="inversion: the integrator")
    noise_levels: list[Annotated[float, Field(gt=0)]] = Field(
        list(DEFAULT_NOISE_LEVELS), min_length=1, max_length=MAX_NOISE_LEVELS,
        description="direct: the noise levels t of x + t eps")
    draws: int = Field(AuditOptions.draws, ge=1, le=MAX_SAMPLES, description="direct: noise draws, one sample each")

    def options(self) -> AuditOptions:
        options = AuditOptions(**self._explain_options(), steps=self.steps, sampler=self.sampler,
                               noise_levels=tuple(self.noise_levels), draws=self.draws)
        if self.method == "inversion":
            options.check_inversion()
        return options

    def planned_steps(self) -> int:
        return self.steps if self.method == "inversion" else len(self.noise_levels)

    def _method_args(self, folders: JobFolders) -> list[str]:
        if self.method == "direct":
            return ["--no-network", "--noise-levels", ",".join(repr(float(t)) for t in self.noise_levels),
                    "--draws", str(self.draws)]
        return ["--network", str(folders.network(self.network)), "--steps", str(self.steps), "--sampler",
                self.sampler]


class AuditJobRequest(AuditJobFields):
    """An audit as the job keeps it: the options and the uploaded image's record."""

    image: UploadedImage

    def check(self, dataset: dict, folders: JobFolders) -> None:
        if self.method == "inversion":
            folders.network(self.network)
        self._check_descriptors(folders)
        check_upload(self.image, upload_path(folders.jobs_dir, self.image),
                     (dataset["channels"], dataset["height"], dataset["width"]))

    def cli_args(self, folders: JobFolders) -> list[str]:
        return ["audit", str(upload_path(folders.jobs_dir, self.image).resolve()), *self._common_args(),
                *self._method_args(folders), *self._explain_args(folders)]


class AuditUpload(AuditJobFields):
    """POST /api/jobs/audit (multipart/form-data): the image file and the audit's options as form fields."""

    image: UploadFile = Field(description="the image to audit: PNG, JPEG, BMP or WebP, or a .npy array, of the "
                                          "dataset's size and channels (at most the service's max_upload_bytes)")


class CounterfactualJobRequest(JobRequest):
    """Sample RUN/SAMPLE re-run without some training images, chosen in exactly one way (as `auditor
    counterfactual`): its images' weights are exactly zero; the change against the parent is stored."""

    command: ClassVar[str] = "counterfactual"
    kind: Literal["counterfactual"] = "counterfactual"
    xflip: Literal[True] = Field(True, description="counterfactuals keep their parent run's x-flip setting")
    run_id: int = Field(ge=1, le=MAX_ID, description="the parent run (GET /api/runs); it must be on dataset_id")
    sample_index: int = Field(ge=0, le=MAX_ID, description="the parent run's sample")
    without: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        None, min_length=1, max_length=MAX_REMOVED_IDS, description="training image ids to remove")
    owner: str | None = Field(None, min_length=1, max_length=256, description="remove every image of this owner")
    source_uri_prefix: str | None = Field(None, min_length=1, max_length=2048,
                                          description="remove the images whose source URI starts with this")
    top: int | None = Field(None, ge=1, le=MAX_ID, description="remove the sample's K largest sources (headline score)")
    random: int | None = Field(None, ge=1, le=MAX_ID, description="remove K random images (the control)")
    seed: int = Field(0, ge=0, le=2**53, description="the seed of `random`")
    verdict: bool = Field(True, description="also give the counterfactual image its copy verdict")

    def options(self) -> CounterfactualOptions:
        return CounterfactualOptions(without=tuple(self.without or ()), owner=self.owner,
                                     source_uri_prefix=self.source_uri_prefix, top=self.top, random=self.random,
                                     seed=self.seed, verdict=self.verdict)

    def check_store(self, db_path, timeout: float) -> None:
        """The parent must be a sample of a complete run on dataset_id."""
        from auditor.store.runs import check_sample_index, load_run

        run = load_run(db_path, self.run_id, timeout=timeout)[0]
        check_sample_index(db_path, run, self.sample_index)
        if run["dataset_id"] != self.dataset_id:
            raise UserError(f"run {self.run_id} was recorded on dataset {run['dataset_id']}, not on dataset "
                            f"{self.dataset_id}")
        if run["status"] != "complete":
            raise UserError(f"run {self.run_id} is {run['status']}, not complete: a counterfactual re-runs a "
                            f"complete sample")

    def cli_args(self, folders: JobFolders) -> list[str]:
        chosen = {"without": ",".join(self.without or ()), "owner": self.owner,
                  "source-uri-prefix": self.source_uri_prefix, "top": self.top, "random": self.random}
        name, value = next((k, v) for k, v in chosen.items() if v)
        return ["counterfactual", f"{self.run_id}/{self.sample_index}", "--dataset", str(self.dataset_id),
                f"--{name}", str(value), "--seed", str(self.seed), *([] if self.verdict else ["--no-verdict"])]


@dataclass(frozen=True)
class JobKind:
    """A kind of job: its name (the request's `kind`; the route POST /api/jobs/{name}), the
    request model the job row keeps, the route's summary, and the multipart form of a kind
    whose request comes with a file (its UploadFile fields become UploadedImage records)."""

    name: str
    request: type[JobRequest]
    summary: str
    upload: type[BaseModel] | None = None


JOB_KINDS: dict[str, JobKind] = {kind.name: kind for kind in (
    JobKind("sample", SampleJobRequest, "Submit PSPC sampling on a stored dataset (as `auditor sample`)"),
    JobKind("compare", CompareJobRequest, "Submit a network comparison on a stored dataset: the network vs PSPC from "
                                          "shared noise, its samples explained (as `auditor compare`)"),
    JobKind("counterfactual", CounterfactualJobRequest, "Submit a counterfactual: a recorded sample re-run without "
                                                        "some training images (as `auditor counterfactual`)"),
    JobKind("audit", AuditJobRequest, "Submit an audit of an uploaded image against a stored dataset (as `auditor "
                                      "audit IMAGE`; multipart/form-data)", upload=AuditUpload),
)}


def job_request(job: dict) -> JobRequest:
    """The validated request of a job row (its kind's model)."""
    return JOB_KINDS[job["kind"]].request.model_validate(job["request"])

