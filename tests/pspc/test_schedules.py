"""EDM time schedule, patch-size and Flex schedules as data."""

import math

import pytest

from pspc.schedules import (CIFAR10_FLEX_LAMBDAS, CIFAR10_PATCH_SIZES, Schedule, default_flex_schedule,
                            default_patch_schedule, edm_time_steps)


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
