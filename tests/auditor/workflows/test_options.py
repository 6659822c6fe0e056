"""SamplingOptions is the one validation of a sampling request (CLI, API jobs, library)."""

import pytest

from auditor.errors import UserError
from auditor.workflows.options import SAMPLERS, SamplingOptions
from pspc.samplers import SAMPLER_METHODS


def test_samplers_match_the_engine():
    assert SAMPLERS == SAMPLER_METHODS


@pytest.mark.parametrize("changes, message", [
    ({"num_samples": 0}, "num_samples must be an integer >= 1, got 0"),
    ({"steps": 2.5}, "steps must be an integer >= 1"),
    ({"top_k": True}, "top_k must be an integer >= 1"),
    ({"seed": -1}, "seed must be an integer >= 0"),
    ({"patch_size": 0}, "patch_size must be an integer >= 1"),
    ({"patch_size": 3, "denoiser_kind": "empirical"}, "patch_size applies to the pspc-square denoiser"),
    ({"sampler": "rk4"}, "unknown sampler 'rk4'"),
    ({"mass": 0}, "mass must be in (0, 1]"),
    ({"mass": float("nan")}, "mass must be in (0, 1]"),
])
def test_bad_options_are_refused_when_built(changes, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        SamplingOptions(**changes)


def test_a_fixed_patch_size_must_fit_the_images():
    SamplingOptions(patch_size=28).check_fits(28, 28)
    SamplingOptions().check_fits(8, 8)  # the s(t) schedule clips itself
    with pytest.raises(UserError, match="patch_size 29 does not fit the 28x32 images; use at most 28"):
        SamplingOptions(patch_size=29).check_fits(28, 32)
