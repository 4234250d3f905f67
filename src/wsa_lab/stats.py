"""Aggregate statistics over seeds, after rliable (Agarwal et al., 2021): mean, IQM, stratified
bootstrap confidence intervals, probability of improvement. Plain numpy with an explicit RNG, so every
report is reproducible (rliable itself samples with the global numpy RNG, see FACTS.md)."""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean: mean of the middle 50% (scipy's trim_mean(0.25), rliable's definition)."""
    x = np.sort(np.asarray(scores, dtype=float).ravel())
    n = len(x)
    if n == 0:
        return float("nan")
    cut = int(0.25 * n)  # trim_mean drops int(0.25 n) values at each end
    return float(x[cut : n - cut].mean())


def mean(scores: np.ndarray) -> float:
    return float(np.mean(scores)) if np.size(scores) else float("nan")


class Estimate(NamedTuple):
    value: float
    low: float
    high: float


def bootstrap_ci(
    scores: np.ndarray,
    statistic: Callable[[np.ndarray], float],
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """Percentile bootstrap CI of `statistic` over runs, resampling runs within each task (stratified).

    `scores` is (runs,) or (runs, tasks); each task's column is resampled with replacement separately.
    """
    x = np.asarray(scores, dtype=float)
    if x.ndim == 1:
        x = x[:, None]
    point = statistic(x)
    if x.shape[0] < 2:
        return Estimate(point, float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    runs, tasks = x.shape
    idx = rng.integers(0, runs, size=(reps, runs, tasks))
    samples = np.array([statistic(np.take_along_axis(x, i, axis=0)) for i in idx])
    alpha = (1 - confidence) / 2
    low, high = np.quantile(samples, [alpha, 1 - alpha])
    return Estimate(point, float(low), float(high))


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """P(X > Y) over runs of two arms, ties counting 1/2 (rliable's per-task Mann-Whitney statistic)."""
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if len(x) == 0 or len(y) == 0:
        return float("nan")
    greater = (x[:, None] > y[None, :]).mean()
    ties = (x[:, None] == y[None, :]).mean()
    return float(greater + 0.5 * ties)
