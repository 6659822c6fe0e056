"""The attribution benchmark's statistics: ranks with ties, Spearman, LDS, bootstrap summaries, top-k."""

import itertools

import numpy as np
import pytest

from pspc.errors import InputError
from pspc.evaluation.attribution import lds, random_subsets, rank_average, spearman, summarise, top_k


def reference_ranks(values) -> list[float]:
    """Rank of each value = 1 + (number below) + (number of ties - 1) / 2."""
    return [1 + sum(v < x for v in values) + (sum(v == x for v in values) - 1) / 2 for x in values]


def reference_spearman(a, b) -> float:
    ra, rb = np.array(reference_ranks(a)), np.array(reference_ranks(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def test_ranks_average_ties():
    values = [3.0, 1.0, 3.0, 2.0, 3.0, 1.0]
    assert rank_average(values).tolist() == reference_ranks(values) == [5.0, 1.5, 5.0, 3.0, 5.0, 1.5]


def test_spearman_matches_pearson_of_average_ranks_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.integers(0, 4, 12).astype(float), rng.normal(size=12)
        if len(set(a)) > 1:
            assert spearman(a, b) == pytest.approx(reference_spearman(a, b), abs=1e-12)
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) == 0.0  # a constant has no ranking
    with pytest.raises(InputError, match="same length"):
        spearman([1, 2], [1, 2, 3])


def test_lds_correlates_summed_member_scores_with_the_output():
    subsets = np.array(list(itertools.product([False, True], repeat=4)))[1:]  # every non-empty subset of 4 images
    scores = np.array([4.0, 3.0, 2.0, 1.0])
    output = subsets @ scores  # an additive output: the scores predict it exactly
    assert lds(scores, subsets, output) == pytest.approx(1.0)
    assert lds(scores, subsets, -output) == pytest.approx(-1.0)
    expected = reference_spearman(list(subsets @ scores), list(output ** 2 - 3 * output))
    assert lds(scores, subsets, output ** 2 - 3 * output) == pytest.approx(expected)


def test_random_subsets_have_exactly_half_the_images_and_repeat_by_seed():
    subsets = random_subsets(11, 5, 0.5, seed=3)
    assert subsets.shape == (5, 11) and (subsets.sum(1) == 6).all()
    assert (subsets == random_subsets(11, 5, 0.5, seed=3)).all() and not (subsets == random_subsets(11, 5, 0.5, 4)).all()
    with pytest.raises(InputError, match="0 < fraction < 1"):
        random_subsets(10, 5, 1.0)


def test_summary_mean_standard_error_and_bootstrap_interval():
    values = np.array([0.1, 0.4, 0.35, 0.8, 0.5, 0.45])
    summary = summarise(values, draws=4000, seed=1)
    assert summary.mean == pytest.approx(values.mean())
    assert summary.se == pytest.approx(values.std(ddof=1) / np.sqrt(6))
    assert summary.low < summary.mean < summary.high
    assert summary.high - summary.low == pytest.approx(2 * 1.96 * summary.se * np.sqrt(5 / 6), rel=0.25)
    assert summary.to_dict()["ci95"] == [summary.low, summary.high]
    with pytest.raises(InputError, match="at least 2"):
        summarise([0.3])


def test_top_k_is_highest_first_with_ties_to_the_lowest_index():
    assert top_k(np.array([0.2, 0.5, 0.5, 0.1, 0.9]), 3).tolist() == [4, 1, 2]
    with pytest.raises(InputError, match="k must be in"):
        top_k(np.zeros(3), 4)
