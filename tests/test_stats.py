"""`wsa_lab.stats` against values worked out by hand (rliable's definitions)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from wsa_lab import stats


def test_iqm_is_the_mean_of_the_middle_half():
    assert stats.iqm(np.arange(1, 9)) == pytest.approx(4.5)  # drops 2 at each end: mean(3, 4, 5, 6)
    assert stats.iqm([1, 2, 3, 4, 100]) == pytest.approx(3.0)  # int(0.25 * 5) = 1 dropped each end
    assert stats.iqm([0.3, 0.7]) == pytest.approx(0.5)  # 2 runs: nothing trimmed
    assert math.isnan(stats.iqm([]))


def test_iqm_over_runs_and_tasks_pools_all_scores():
    scores = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]])  # 4 runs x 2 tasks
    assert stats.iqm(scores) == pytest.approx(np.mean([3, 4, 10, 20]))


def test_bootstrap_ci_matches_the_exact_bootstrap_distribution():
    # Runs [0, 0, 0, 1]: the number of 1s in a resample is Binomial(4, 1/4):
    # P(0)=.316 P(1)=.422 P(2)=.211 P(3)=.047 P(4)=.004 -> CDF .316 .738 .949 .996 1.
    # Mean of a resample = k/4: 2.5% quantile 0, 97.5% quantile 3/4.
    # IQM of a resample (middle two of four sorted) = 0, 0, 1/2, 1, 1 for k = 0..4 -> 97.5% quantile 1.
    scores = np.array([0.0, 0.0, 0.0, 1.0])
    assert stats.bootstrap_ci(scores, stats.mean, reps=20_000, seed=3) == pytest.approx((0.25, 0.0, 0.75))
    assert stats.bootstrap_ci(scores, stats.iqm, reps=20_000, seed=3) == pytest.approx((0.0, 0.0, 1.0))


def test_bootstrap_ci_two_runs_and_one_run():
    # [0, 1]: resample means 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4 -> 95% interval [0, 1]
    assert stats.bootstrap_ci([0.0, 1.0], stats.mean, reps=5000) == pytest.approx((0.5, 0.0, 1.0))
    one = stats.bootstrap_ci([0.7], stats.mean)
    assert one.value == 0.7 and math.isnan(one.low) and math.isnan(one.high)


def test_bootstrap_is_reproducible_and_vectorised_like_the_generic_path():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(7, 3))
    a = stats.bootstrap_ci(scores, stats.iqm, reps=500, seed=11)
    b = stats.bootstrap_ci(scores, stats.iqm, reps=500, seed=11)
    generic = stats.bootstrap_ci(scores, lambda x: stats.iqm(x), reps=500, seed=11)  # not in the batched table
    assert a == b
    assert a == pytest.approx(generic)
    assert stats.bootstrap_ci(scores, stats.iqm, reps=500, seed=12) != a


def test_stratified_bootstrap_resamples_within_each_task():
    # task 0 is constant 0, task 1 constant 1: any within-task resample has mean exactly 0.5
    scores = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    assert stats.bootstrap_ci(scores, stats.mean, reps=200) == (0.5, 0.5, 0.5)


def test_probability_of_improvement_counts_ties_half():
    # pairs (x, y): 1>0, 1<2, 2>0, 2=2, 3>0, 3>2 -> (4 + 0.5) / 6
    assert stats.probability_of_improvement([1, 2, 3], [0, 2]) == pytest.approx(0.75)
    assert stats.probability_of_improvement([1, 1], [1, 1]) == 0.5
    assert stats.probability_of_improvement([5, 6], [1, 2]) == 1.0


def test_probability_of_improvement_ci():
    est = stats.probability_of_improvement_ci([5.0, 6.0, 7.0], [1.0, 2.0, 3.0], reps=1000)
    assert est == (1.0, 1.0, 1.0)  # every resample still separates the arms
    est = stats.probability_of_improvement_ci([0.0, 1.0], [0.5, 0.5], reps=4000, seed=2)
    # x resamples: {0,0} -> 0, {0,1} -> 1/2, {1,1} -> 1 with prob 1/4, 1/2, 1/4
    assert est == pytest.approx((0.5, 0.0, 1.0))
    assert math.isnan(stats.probability_of_improvement_ci([1.0], [0.0, 1.0]).low)


def test_curve_estimates_per_point():
    curves = np.array([[0.0, 1.0], [0.0, 3.0]])  # 2 runs x 2 points
    est = stats.curve_estimates(curves, stats.mean, reps=2000)
    assert est[0] == (0.0, 0.0, 0.0)
    assert est[1] == pytest.approx((2.0, 1.0, 3.0))
