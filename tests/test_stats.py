"""The one estimator: the median of the windows and its order-statistic interval."""

from __future__ import annotations

import random

import pytest

from energyprune import stats


@pytest.mark.parametrize("n, k, coverage", [(5, 1, 0.9375), (6, 1, 0.96875), (8, 1, 0.9921875),
                                            (9, 2, 0.9609375), (12, 3, 0.9614), (20, 6, 0.9586)])
def test_rank_and_coverage_are_the_binomial_ones(n, k, coverage):
    got_k, got_coverage = stats.median_rank(n)
    assert got_k == k
    assert got_coverage == pytest.approx(coverage, abs=1e-4)
    assert (got_coverage >= 0.95) == (n >= stats.MIN_VALUES_FOR_LEVEL)


def test_the_headline_is_always_inside_its_interval_even_with_an_outlier():
    # What a user saw with the mean's t interval: 5.05 J, 95% interval 5.505 .. 11.65 J.
    windows = [5.0, 5.05, 5.1, 4.98, 5.02, 30.0]
    interval = stats.median_interval(windows)
    assert interval.contains(stats.median(windows))
    assert interval.high == 30.0 and interval.low == 4.98  # six windows: [min, max]
    eleven = [5.0, 5.05, 5.1, 4.98, 5.02, 5.03, 4.99, 5.04, 5.01, 5.06, 30.0]
    interval = stats.median_interval(eleven)
    assert interval.contains(stats.median(eleven)) and interval.high == 5.1  # the outlier is outside


def test_a_positive_quantity_never_gets_a_negative_interval():
    interval = stats.median_interval([0.01, 0.02, 0.015, 0.012, 0.011, 0.013], extra_half_width=0.05,
                                     non_negative=True)
    assert interval.low == 0.0 and interval.high == pytest.approx(0.07)
    assert stats.median_interval([0.01, 0.02], extra_half_width=0.05).low < 0  # a difference may


def test_the_interval_covers_the_true_median_as_often_as_it_says():
    rng = random.Random(7)
    for n in (6, 9, 15):
        _, coverage = stats.median_rank(n)
        hits = 0
        for _ in range(4000):
            sample = [rng.lognormvariate(0.0, 0.5) for _ in range(n)]  # skewed; true median is 1.0
            hits += stats.median_interval(sample).contains(1.0)
        assert hits / 4000 == pytest.approx(coverage, abs=0.015)
        assert hits / 4000 >= 0.94


def test_interval_unpacks_like_a_pair():
    low, high = stats.median_interval([1.0, 2.0, 3.0])
    assert (low, high) == (1.0, 3.0)
    assert list(stats.median_interval([2.0])) == [2.0, 2.0]
