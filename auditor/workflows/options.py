"""The workflows' options: one small frozen dataclass per workflow, with the defaults of the
command line, and `Runtime` for how a call runs (its command line, progress, device, lock
timeout). Light on purpose (no torch): the CLI builds them from its arguments.

  record_sampling_run(db, training_set, options=SamplingOptions(...), runtime=Runtime(...))
  record_comparison(db, training_set, network, options=ComparisonOptions(...), runtime=...)
  record_audit(db, training_set, image, network=None, options=AuditOptions(...), runtime=...)
  record_explained_run(db, training_set, network, z, options=ExplainOptions(...), ...)
  run_study(StudyOptions(...), ...)
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from auditor.errors import UserError
from auditor.store.database import DEFAULT_TIMEOUT
from auditor.store.studies import StudyError

if TYPE_CHECKING:
    import torch

    from auditor.similarity.descriptors import Descriptor

__all__ = ["COUNTERFACTUAL_SELECTORS", "CounterfactualOptions", "DEFAULT_NETWORK", "DEFAULT_NOISE_LEVELS", "DEFAULT_THRESHOLDS", "FULL", "KINDS", "QUICK",
           "RECORDABLE_KINDS", "SAMPLERS", "AuditOptions", "ComparisonOptions", "ExplainOptions", "Runtime", "SamplingOptions",
           "StudyOptions", "parse_floats"]

RECORDABLE_KINDS = ("pspc-square", "pspc-flex", "empirical")  # the denoisers that give posterior weights
SAMPLERS = ("euler", "heun")  # = pspc.samplers' PF-ODE integrators (a test checks it)
DEFAULT_NETWORK = "checkpoints/fmnist-unet.pt"  # what `auditor train-network` writes for Fashion-MNIST
DEFAULT_NOISE_LEVELS = (3.0, 1.0, 0.3, 0.05)  # the paper's range 0.3-3, and near-clean patches
DEFAULT_THRESHOLDS = (0.5, 0.6)  # = auditor.similarity.copy_detection.DEFAULT_THRESHOLDS (a test checks it)


@dataclass(frozen=True, kw_only=True)
class Runtime:
    """How a workflow call runs: the command line recorded with its results, progress(n)
    after every n sampling steps, the torch device, and seconds to wait for the store's lock."""

    command: Sequence[str] | None = None
    progress: Callable[[int], None] | None = None
    device: str | torch.device = "cpu"
    timeout: float = DEFAULT_TIMEOUT


@dataclass(frozen=True, kw_only=True)
class SamplingOptions:
    """A recorded PSPC sampling run (`auditor sample`): sample i starts from seed + i; top_k
    and mass say which posterior weights are kept."""

    denoiser_kind: str = "pspc-square"
    patch_size: int | None = None  # pspc-square: fixed s x s patches (None: the paper's s(t))
    num_samples: int = 16
    steps: int = 18
    sampler: str = "euler"
    seed: int = 0
    top_k: int = 16
    mass: float = 0.99

    def __post_init__(self):
        """THE validation of a sampling request: the CLI, the API's jobs and library callers all
        build a SamplingOptions, so they accept and refuse the same requests."""
        for name in ("num_samples", "steps"):
            _check_count(getattr(self, name), name)
        _check_sampler(self.sampler)
        _check_kept(self, self.denoiser_kind, "denoiser")

    def check_fits(self, height: int, width: int) -> None:
        """Refuse a fixed patch size larger than the images (s(t) schedules clip to the side,
        but a size the user asked for that cannot be honoured is an error, not a silent clip)."""
        if self.patch_size is not None and self.patch_size > min(height, width):
            raise UserError(f"patch_size {self.patch_size} does not fit the {height}x{width} images; "
                            f"use at most {min(height, width)}")


def _check_count(value, name: str, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_sampler(sampler: str) -> None:
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")


def _check_kept(options, kind: str, role: str) -> None:
    """What sampling and explaining share: the seed, the kept weights (top_k, mass) and a fixed
    patch size, which only the pspc-square `kind` (the denoiser or explainer: `role`) takes."""
    _check_count(options.top_k, "top_k")
    _check_count(options.seed, "seed", low=0)
    if options.patch_size is not None:
        _check_count(options.patch_size, "patch_size")
        if kind != "pspc-square":
            raise UserError(f"patch_size applies to the pspc-square {role}, not {kind}")
    if not (isinstance(options.mass, (int, float)) and 0 < options.mass <= 1):
        raise UserError(f"mass must be in (0, 1], got {options.mass}")


def _check_copies(options) -> None:
    """copy_k and the copy thresholds of a comparison or an audit (copy detection's own check)."""
    from auditor.similarity.copy_detection import check_thresholds  # faiss and torch: only when checked

    _check_count(options.copy_k, "copy_k", low=0)
    check_thresholds(options.thresholds)


@dataclass(frozen=True, kw_only=True)
class ExplainOptions:
    """How PSPC explains a network's states: the explaining denoiser (explainer, patch_size,
    a tuned schedule file, the draws of the network's Eq. 8 sensitivity for pspc-flex), the
    seed and the kept weights (top_k, mass); the copy verdict's descriptor (verdict_descriptor:
    an auditor.similarity.calibration.verdict_descriptor spec; "configured": $PSPC_COPY_DESCRIPTOR)."""

    explainer: str = "pspc-square"
    patch_size: int | None = None
    schedule: str | Path | None = None
    sensitivity_draws: int = 4
    seed: int = 0
    top_k: int = 16
    mass: float = 0.99
    verdict_descriptor: str = "configured"

    def __post_init__(self):
        """THE validation of how a network is explained: `auditor compare` / `auditor audit` and
        the API's comparison and audit jobs build these options, so they refuse the same requests
        (the checks that need the data, the network or a file stay in the workflows)."""
        if self.explainer not in RECORDABLE_KINDS:
            raise UserError(f"the explaining denoiser must give posterior weights ({', '.join(RECORDABLE_KINDS)}), "
                            f"got {self.explainer!r}")
        _check_kept(self, self.explainer, "explainer")
        _check_count(self.sensitivity_draws, "sensitivity_draws")

    def explain(self) -> ExplainOptions:
        """Only the ExplainOptions part (of a ComparisonOptions or AuditOptions)."""
        return ExplainOptions(**{f.name: getattr(self, f.name) for f in fields(ExplainOptions)})


@dataclass(frozen=True, kw_only=True)
class ComparisonOptions(ExplainOptions):
    """A network comparison (`auditor compare`): num_samples x steps from shared noise, the
    network explained by `explainer` and sampled against `denoisers`; descriptor (spec or
    Descriptor; None: SSCD when configured, else pixel correlation), thresholds and copy_k
    (0: no copy detection) for the similarity and copy matches."""

    num_samples: int = 16
    steps: int = 18
    sampler: str = "euler"
    denoisers: Sequence[str] = ("pspc-square",)
    descriptor: Descriptor | str | None = None
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS
    copy_k: int = 5

    def __post_init__(self):
        """THE validation of a comparison (with ExplainOptions'): counts, sampler, denoisers, copies."""
        super().__post_init__()
        for name in ("num_samples", "steps"):
            _check_count(getattr(self, name), name)
        _check_sampler(self.sampler)
        kinds = [str(kind).strip() for kind in self.denoisers]
        unknown = [kind for kind in kinds if kind not in KINDS]
        if unknown or not kinds:
            raise UserError(f"unknown denoiser(s) {unknown}; choose from {', '.join(KINDS)}" if unknown else
                            "name at least one denoiser to compare the network with")
        if len(set(kinds)) != len(kinds):
            raise UserError(f"denoisers repeat: {kinds}")
        _check_copies(self)


@dataclass(frozen=True, kw_only=True)
class AuditOptions(ExplainOptions):
    """An audit (`auditor audit`): with a network, inversion and replay with `steps` /
    `sampler`; without, direct attribution at `noise_levels` with `draws` noise draws."""

    steps: int = 18
    sampler: str = "heun"
    noise_levels: Sequence[float] = DEFAULT_NOISE_LEVELS
    draws: int = 1
    descriptor: Descriptor | str | None = None
    copy_k: int = 5
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS

    def __post_init__(self):
        """THE validation of an audit (with ExplainOptions'): steps, sampler, noise levels, draws, copies."""
        from pspc.schedules import check_noise_levels  # torch: only when checked

        super().__post_init__()
        for name in ("steps", "draws"):
            _check_count(getattr(self, name), name)
        _check_sampler(self.sampler)
        levels = check_noise_levels(self.noise_levels, UserError)  # the engine's range
        if len(set(levels)) != len(levels):
            raise UserError(f"noise levels repeat: {levels}")
        _check_copies(self)

    def check_inversion(self) -> None:
        """An audit with a network inverts its PF-ODE from t_min to t_max: at least 2 steps."""
        if self.steps < 2:
            raise UserError(f"inversion needs steps >= 2 (t_max down to t_min), got {self.steps}")


# ---------------------------------------------------------------------------------------
# Fidelity studies (auditor.workflows.fidelity; bench/fidelity.py and `auditor fidelity run`)
# ---------------------------------------------------------------------------------------
KINDS = ("empirical", "gaussian", "cfdm", "pspc-square", "pspc-flex")
FULL = {"limit": None, "test_images": 64, "samples": 64, "steps": 18, "ts": "0.01,0.03,0.1,0.3,1,3,10,30",
        "sensitivity_grid": "0.01,0.03,0.1,0.3,1,3,10,30", "sensitivity_samples": 16, "tune_states": 16}
QUICK = {"limit": 5000, "test_images": 8, "samples": 8, "steps": 18, "ts": "0.03,0.1,0.3,1,3,10",
         "sensitivity_grid": "0.03,0.1,0.3,1,3,10", "sensitivity_samples": 8, "tune_states": 4}


COUNTERFACTUAL_SELECTORS = ("without", "owner", "source_uri_prefix", "top", "random")
MAX_REMOVED_IDS = 100_000  # ids listed in one request (owners and prefixes select any number)


@dataclass(frozen=True, kw_only=True)
class CounterfactualOptions:
    """A counterfactual of one recorded sample (`auditor counterfactual`): exactly one way to
    choose the removed training images: `without` (image ids), `owner` (every image of that
    owner), `source_uri_prefix`, `top` (the K highest by the headline score of that sample)
    or `random` (K drawn with `seed`: the control). `verdict`: give the counterfactual image
    its copy verdict too (the parent's is compared with it); `descriptor`: the similarity of
    the two images (auditor.similarity.descriptors.load_descriptor spec)."""

    without: tuple[str, ...] = ()
    owner: str | None = None
    source_uri_prefix: str | None = None
    top: int | None = None
    random: int | None = None
    seed: int = 0
    verdict: bool = True
    descriptor: str = "pixel-correlation"

    def __post_init__(self):
        """THE validation of a counterfactual request (the CLI and the API's job build these)."""
        chosen = [name for name in COUNTERFACTUAL_SELECTORS if getattr(self, name) not in (None, (), "")]
        if len(chosen) != 1:
            names = ", ".join(name.replace("_", "-") for name in COUNTERFACTUAL_SELECTORS)
            raise UserError(f"choose the removed training images in exactly one way ({names}); got "
                            f"{', '.join(chosen) if chosen else 'none'}")
        if self.without:
            object.__setattr__(self, "without", tuple(str(i).strip() for i in self.without))
            if any(not i for i in self.without):
                raise UserError("an empty training image id in the removal list")
            if len(self.without) > MAX_REMOVED_IDS:
                raise UserError(f"at most {MAX_REMOVED_IDS} image ids in one removal list, got {len(self.without)}")
        for name in ("top", "random"):
            if getattr(self, name) is not None:
                _check_count(getattr(self, name), name)
        _check_count(self.seed, "seed", low=0)

    def selector(self) -> dict:
        """How the removed set was chosen, as the run records it."""
        for name in COUNTERFACTUAL_SELECTORS:
            value = getattr(self, name)
            if value not in (None, (), ""):
                record = {"by": name, "value": list(value) if name == "without" else value}
                if name == "top":
                    from auditor.store.scores import HEADLINE_SCORE  # numpy and the engine: only when recorded

                    return {**record, "score": HEADLINE_SCORE}
                return {**record, "seed": self.seed} if name == "random" else record
        raise AssertionError("validated in __post_init__")


def parse_floats(text: str, option: str) -> list[float]:
    """Comma-separated numbers of an option; StudyError naming it."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise StudyError(f"{option} takes comma-separated numbers, got {text!r}") from None
    if not values:
        raise StudyError(f"{option} is empty")
    return values


@dataclass(frozen=True, kw_only=True)
class StudyOptions:
    """A fidelity study's options, named as the command-line options (--test-images is
    test_images). None: the preset's value (`resolved()`: QUICK with quick=True, else FULL).
    The record's configuration holds every field, in this order."""

    network: str | Path = DEFAULT_NETWORK
    data: str = "fashion-mnist"
    limit: int | None = None
    no_xflip: bool = False
    test_data: str = "fashion-mnist:test"
    test_images: int | None = None
    samples: int | None = None
    steps: int | None = None
    ts: str | None = None
    sensitivity_samples: int | None = None
    sensitivity_grid: str | None = None
    denoisers: str = ",".join(KINDS)
    schedule: str | Path | None = None
    tune: bool = False
    tune_process: str = "reverse"
    tune_states: int | None = None
    tune_sizes: str | None = None
    tune_lambdas: str | None = None
    descriptor: str = "auto"
    no_sampling: bool = False
    seed: int = 0
    batch: int = 64
    device: str = "cpu"
    threads: int | None = None
    quick: bool = False

    @property
    def times(self) -> list[float]:
        """The forward-process noise levels (--ts)."""
        return parse_floats(self.ts, "--ts")

    @property
    def grid(self) -> list[float]:
        """The levels where G(t) is computed (--sensitivity-grid)."""
        return parse_floats(self.sensitivity_grid, "--sensitivity-grid")

    @property
    def kinds(self) -> list[str]:
        """The denoisers compared (--denoisers)."""
        return [k.strip() for k in self.denoisers.split(",") if k.strip()]

    def resolved(self) -> StudyOptions:
        """These options with unset ones from the preset (--quick or full), checked; StudyError
        names the option."""
        preset = QUICK if self.quick else FULL
        options = replace(self, **{key: value for key, value in preset.items() if getattr(self, key) is None})
        for key in ("test_images", "samples", "steps", "sensitivity_samples", "tune_states", "batch"):
            if getattr(options, key) < 1:
                raise StudyError(f"--{key.replace('_', '-')} must be >= 1")
        if options.limit is not None and options.limit < 1:
            raise StudyError("--limit must be >= 1")
        if options.threads is not None and options.threads < 1:
            raise StudyError("--threads must be >= 1")
        parse_floats(options.ts, "--ts")  # a bad list fails here, not hours later
        parse_floats(options.sensitivity_grid, "--sensitivity-grid")
        unknown = sorted(set(options.kinds) - set(KINDS))
        if unknown or not options.kinds:
            raise StudyError(f"unknown denoiser(s) {unknown}; choose from {', '.join(KINDS)}")
        if options.schedule is not None and not Path(options.schedule).is_file():
            raise StudyError(f"no schedule file at {options.schedule}")
        return options

    def configuration(self, out: Path | None = None) -> dict:
        """What a study's record keeps of its options: every field (paths as text), the output
        folder when there is one, and the parsed times, grid and kinds."""
        record = {f.name: getattr(self, f.name) for f in fields(self)}
        if out is not None:
            record["out"] = out
        record.update(times=self.times, grid=self.grid, kinds=self.kinds)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in record.items()}
