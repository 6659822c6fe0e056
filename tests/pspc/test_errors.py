"""pspc.errors: every error the engine raises for input a caller can fix is an InputError."""

import pytest
import torch

from pspc.cli import CLIError
from pspc.data.images import save_grid
from pspc.data.training_set import TrainingSetError
from pspc.denoisers import DenoiserInputError, GaussianDenoiser, build_denoiser
from pspc.errors import InputError
from pspc.evaluation.fidelity import FidelityError
from pspc.networks import EDMPrecond, NetworkConfig, NetworkError
from pspc.networks.training import TrainingError
from pspc.posterior.patch_sets import PatchSetError
from pspc.posterior.sensitivity import SensitivityError
from pspc.posterior.weights import WeightRequest
from pspc.samplers import SamplerConfig
from pspc.schedules import Schedule, ScheduleError, edm_time_steps
from tests.support.data import random_training_set


@pytest.mark.parametrize("error", [TrainingSetError, DenoiserInputError, PatchSetError, ScheduleError, NetworkError,
                                   FidelityError, TrainingError, CLIError, SensitivityError])
def test_engine_errors_are_input_errors(error):
    assert issubclass(error, InputError) and issubclass(error, ValueError)


def test_bad_options_raise_input_errors(tmp_path):
    training_set = random_training_set(count=4, height=6, width=6)
    net = EDMPrecond(NetworkConfig(image_channels=1, resolution=(8, 8), model_channels=8, channel_mult=(1, 2),
                                   attention_levels=(1,), groups=4))
    cases = [
        (lambda: SamplerConfig(method="rk4"), "unknown sampler 'rk4'"),
        (lambda: WeightRequest(top_k=0), "top_k must be >= 1"),
        (lambda: edm_time_steps(0), "num_steps must be >= 1"),
        (lambda: Schedule((1.0,), (3, 5)), "one value per time"),
        (lambda: build_denoiser("pspc-round", training_set), "unknown denoiser 'pspc-round'"),
        (lambda: GaussianDenoiser(training_set, rank=0), "rank must be in"),
        (lambda: save_grid(torch.zeros(1, 2, 3, 3), tmp_path / "grid.png"), "C = 1 or 3"),
        (lambda: net(torch.zeros(2, 1, 8, 8), torch.ones(3)), "one value per sample"),
    ]
    for make, message in cases:
        with pytest.raises(InputError, match=message):
            make()
