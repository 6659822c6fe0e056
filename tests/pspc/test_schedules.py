"""EDM time schedule, patch-size and Flex schedules as data."""

import math

import pytest

from pspc.schedules import (
    CIFAR10_FLEX_LAMBDAS, CIFAR10_PATCH_SIZES, Schedule, default_flex_schedule, default_patch_schedule,
    edm_time_steps
)


def test_edm_time_steps_follow_the_formula():
    t = edm_time_steps(18).tolist()
    assert len(t) == 19 and t[-1] == 0.0
    assert t[0] == pytest.approx(80.0) and t[17] == pytest.approx(0.002)
    for i in range(18):
        expected = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
        assert t[i] == pytest.approx(expected, rel=1e-12)
    assert all(a > b for a, b in zip(t, t[1:]))
    with pytest.raises(ValueError, match="num_steps"):
        edm_time_steps(0)


def test_cifar10_schedules_reproduce_the_official_lists():
    times = edm_time_steps(18)[:-1].tolist()
    patch, flex = default_patch_schedule(32, 32), default_flex_schedule()
    assert [patch(t) for t in times] == list(CIFAR10_PATCH_SIZES)
    assert [flex(t) for t in times] == list(CIFAR10_FLEX_LAMBDAS)


def test_paper_64x64_knots_interpolate_in_log_t():
    schedule = default_patch_schedule(64, 64)
    assert [schedule(t) for t in (0.05, 0.1, 1.0, 3.0, 10.0, 30.0, 80.0)] == [3, 3, 9, 27, 43, 64, 64]
    between = schedule(math.sqrt(0.1 * 1.0))  # halfway in log t between 3 and 9 -> 6 -> odd 5
    assert between == 5


def test_other_resolutions_scale_the_cifar_list():
    times = edm_time_steps(18)[:-1].tolist()
    fashion = default_patch_schedule(28, 28)
    sizes = [fashion(t) for t in times]
    assert sizes[:7] == [28] * 7 and sizes[-6:] == [3] * 6
    assert sizes == [28] * 7 + [21, 13, 9, 7, 5] + [3] * 6
    assert all(s % 2 == 1 for s in sizes if s != 28)


def test_schedules_reject_bad_input():
    with pytest.raises(ValueError, match="t > 0"):
        default_flex_schedule()(0.0)
    with pytest.raises(ValueError, match="one value per time"):
        Schedule((1.0, 2.0), (3,))
    with pytest.raises(ValueError, match="finite and > 0"):
        Schedule((0.0,), (3,))
    with pytest.raises(ValueError, match="interpolation"):
        Schedule((1.0,), (3,), "cubic")
    record = default_patch_schedule(28, 28).describe()
    assert record["name"] == "cifar10-scaled-to-28" and len(record["values"]) == 18


# -- schedule files (pspc.evaluation.tuning writes them; Schedule.load reads them) ----------------------
def _tuned_file(path, steps=None, **overrides):
    import json

    content = {"format": "pspc-schedule", "version": 1, "name": "tuned-test", "interpolation": "nearest",
               "resolution": [28, 28],
               "steps": steps if steps is not None else [{"t": 80.0, "patch_size": 28, "lambda": 1.0, "errors": {"patch_size": {"28": 0.1}}},
                                  {"t": 1.0, "patch_size": 9, "lambda": 0.5},
                                  {"t": 0.01, "patch_size": 3, "lambda": 0.3}],
               "record": {"network": {"sha256": "ab" * 32}}}
    content.update(overrides)
    path.write_text(json.dumps(content) if isinstance(content, dict) else content)
    return path


def test_schedule_file_round_trip(tmp_path):
    import torch

    from pspc.evaluation.fidelity import forward_process_states
    from pspc.denoisers import EmpiricalDenoiser, NetworkDenoiser
    from pspc.schedules import read_schedule_file
    from pspc.evaluation.tuning import tune_schedule
    from tests.support.data import random_training_set

    # Schedule.save / Schedule.load
    sizes = default_patch_schedule(28, 28)
    path = sizes.save(tmp_path / "sizes.json", "patch_size", resolution=(28, 28), record={"why": "test"})
    loaded = Schedule.load(path, "patch_size", resolution=(28, 28))
    assert loaded == sizes
    assert read_schedule_file(path)["record"] == {"why": "test"}
    lambdas = default_flex_schedule()
    assert Schedule.load(lambdas.save(tmp_path / "lambda.json", "lambda"), "lambda") == lambdas

    # A tuned schedule (pspc.evaluation.tuning) written with every candidate's error, loaded by the engine
    data = random_training_set(8, 1, 6, 6, seed=1)

    class Net(torch.nn.Module):
        def forward(self, z, sigma):
            return EmpiricalDenoiser(data)(z, sigma)

    network = NetworkDenoiser(Net(), (1, 6, 6), record={"sha256": "cd" * 32})
    forward = forward_process_states(network, random_training_set(3, 1, 6, 6, seed=2), [2.0, 0.5], 2)
    tuned = tune_schedule(data, forward.levels, sizes=(3, 5, 6), record={"network": network.describe()})
    path = tuned.save(tmp_path / "tuned.json")
    content = read_schedule_file(path, (6, 6))
    assert [row["t"] for row in content["steps"]] == [2.0, 0.5]
    assert content["steps"][0]["errors"]["patch_size"].keys() == {"3", "5", "6"}
    assert content["record"]["network"]["network"]["sha256"] == "cd" * 32
    assert content["record"]["dataset"]["fingerprint"] == data.fingerprint
    schedule = Schedule.load(path, "patch_size", (6, 6))
    assert [schedule(t) for t in (2.0, 0.5)] == tuned.sizes

    # build_denoiser and `pspc denoise --schedule` use it
    from pspc.denoisers import build_denoiser

    square = build_denoiser("pspc-square", data, schedule=path)
    assert square.describe()["schedule"]["patch_size"]["values"] == list(schedule.values)
    with pytest.raises(ValueError, match="not both"):
        build_denoiser("pspc-square", data, schedule=path, patch_size=3)
    with pytest.raises(ValueError, match="not gaussian"):
        build_denoiser("gaussian", data, schedule=path)
    with pytest.raises(ValueError, match="no 'lambda' column"):
        build_denoiser("pspc-flex", data, schedule=path)


def test_pspc_cli_takes_a_schedule_file(tmp_path):
    import json

    import numpy as np

    from pspc.cli import main

    images = np.random.default_rng(0).integers(0, 256, size=(10, 1, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "tiny.npz", images=images)
    schedule = Schedule((0.3, 2.0), (3, 5)).save(tmp_path / "s.json", resolution=(8, 8))
    out = tmp_path / "run"
    assert main(["denoise", "--data", str(tmp_path / "tiny.npz"), "--t", "0.3", "--num", "2",
                 "--schedule", str(schedule), "--out", str(out)]) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["denoiser"]["schedule"]["patch_size"]["values"] == [3, 5]
    wrong = Schedule((0.3,), (3,)).save(tmp_path / "w.json", resolution=(28, 28))
    assert main(["denoise", "--data", str(tmp_path / "tiny.npz"), "--t", "0.3", "--num", "2",
                 "--schedule", str(wrong), "--out", str(tmp_path / "bad")]) == 2


@pytest.mark.parametrize("write, needle", [
    (lambda p: p.write_text("{not json"), "not a JSON schedule file"),
    (lambda p: p.write_text('{"format": "other"}'), "not a pspc-schedule file"),
    (lambda p: _tuned_file(p, version=2), "version 2"),
    (lambda p: _tuned_file(p, steps=[{"t": 1.0, "patch_size": 5}, {"t": 3.0, "patch_size": 3}]),
     "t must decrease"),
    (lambda p: _tuned_file(p, steps=[{"t": 1.0, "patch_size": 5}, {"t": 1.0, "patch_size": 3}]), "t must decrease"),
    (lambda p: _tuned_file(p, steps=[{"t": -1.0, "patch_size": 5}]), "t > 0"),
    (lambda p: _tuned_file(p, steps=[{"t": 1.0, "patch_size": 29}]), "integer in [1, 28]"),
    (lambda p: _tuned_file(p, steps=[{"t": 1.0, "patch_size": 4.5}]), "integer in [1, 28]"),
    (lambda p: _tuned_file(p, steps=[{"t": 1.0, "patch_size": 5, "lambda": 1.5}]), "in (0, 1]"),
    (lambda p: _tuned_file(p, steps=[{"t": 2.0, "patch_size": 5}, {"t": 1.0, "lambda": 0.5}]), "same quantities"),
    (lambda p: _tuned_file(p, steps=[]), "non-empty list"),
    (lambda p: _tuned_file(p, resolution=None), "must record its resolution"),
    (lambda p: _tuned_file(p, resolution=[32, 32]), "chosen for 32x32 images, the training set is 28x28"),
    (lambda p: None, "no such schedule file"),
])
def test_schedule_file_errors_name_the_file_and_the_problem(tmp_path, write, needle):
    from pspc.schedules import ScheduleError

    path = tmp_path / "schedule.json"
    write(path)
    with pytest.raises(ScheduleError) as caught:
        Schedule.load(path, "patch_size", resolution=(28, 28))
    assert str(path) in str(caught.value) and needle in str(caught.value)


def test_writing_a_bad_schedule_leaves_the_existing_file_alone(tmp_path):
    from pspc.schedules import ScheduleError, write_schedule_file

    path = Schedule((1.0,), (5,)).save(tmp_path / "s.json", resolution=(28, 28))
    before = path.read_text()
    with pytest.raises(ScheduleError, match="t must decrease"):
        write_schedule_file(path, [{"t": 1.0, "patch_size": 3}, {"t": 2.0, "patch_size": 5}], resolution=(28, 28))
    with pytest.raises(ScheduleError, match="must record the resolution"):
        write_schedule_file(path, [{"t": 1.0, "patch_size": 3}])
    with pytest.raises(ScheduleError, match="unknown schedule quantity"):
        Schedule((1.0,), (5,)).save(path, "size")
    assert path.read_text() == before
    assert Schedule.load(path, "patch_size").values == (5,)
