"""Aggregate statistics over seeds, after rliable (Agarwal et al., 2021): mean, IQM, stratified
bootstrap confidence intervals, probability of improvement. Plain numpy with an explicit RNG, so every
report is reproducible (rliable 1.2 ignores its `random_state` argument and samples with the global numpy
RNG, and it pins `arch<8`, which fails to import with pandas 3).

Scores are (runs,) or (runs, tasks). As in rliable, an aggregate (mean, IQM) is taken over all runs x tasks
together, and the stratified bootstrap resamples runs with replacement within each task; confidence
intervals are percentile intervals of the bootstrap distribution (rliable's default method).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean: mean of the middle 50% (scipy's trim_mean(0.25), rliable's definition)."""
    x = np.asarray(scores, dtype=float)
    return float(_iqm_batched(x[None])[0]) if x.size else float("nan")


def mean(scores: np.ndarray) -> float:
    return float(np.mean(scores)) if np.size(scores) else float("nan")


def _iqm_batched(samples: np.ndarray) -> np.ndarray:
    """`iqm` of each sample in a (reps, ...) stack."""
    flat = np.sort(samples.reshape(samples.shape[0], -1), axis=1)
    n = flat.shape[1]
    cut = int(0.25 * n)  # trim_mean drops int(0.25 n) values at each end
    return flat[:, cut : n - cut].mean(axis=1)


def _mean_batched(samples: np.ndarray) -> np.ndarray:
    return samples.reshape(samples.shape[0], -1).mean(axis=1)


_BATCHED: dict[Callable[[np.ndarray], float], Callable[[np.ndarray], np.ndarray]] = {
    iqm: _iqm_batched,
    mean: _mean_batched,
}


class Estimate(NamedTuple):
    value: float
    low: float
    high: float


def _as_runs_by_tasks(scores: np.ndarray) -> np.ndarray:
    x = np.asarray(scores, dtype=float)
    return x[:, None] if x.ndim == 1 else x


def _resample(x: np.ndarray, reps: int, rng: np.random.Generator) -> np.ndarray:
    """(reps, runs, tasks): runs drawn with replacement, independently within each task (stratified)."""
    runs, tasks = x.shape
    idx = rng.integers(0, runs, size=(reps, runs, tasks))
    return np.take_along_axis(np.broadcast_to(x, (reps, runs, tasks)), idx, axis=1)


def _percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1 - confidence) / 2
    low, high = np.quantile(samples, [alpha, 1 - alpha])
    return float(low), float(high)


def bootstrap_ci(
    scores: np.ndarray,
    statistic: Callable[[np.ndarray], float],
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """Percentile bootstrap CI of `statistic` over runs, resampling runs within each task (stratified).

    `scores` is (runs,) or (runs, tasks); each task's column is resampled with replacement separately.
    With fewer than two runs there is no interval (NaN bounds). `iqm` and `mean` are vectorised.
    """
    x = _as_runs_by_tasks(scores)
    point = statistic(x)
    if x.shape[0] < 2:
        return Estimate(point, float("nan"), float("nan"))
    samples = _resample(x, reps, np.random.default_rng(seed))
    batched = _BATCHED.get(statistic)
    values = batched(samples) if batched else np.array([statistic(s) for s in samples])
    return Estimate(point, *_percentile_interval(values, confidence))


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """P(X > Y) over runs of two arms, ties counting 1/2 (rliable's per-task Mann-Whitney statistic).

    For (runs, tasks) scores it is averaged over tasks, as in rliable.
    """
    x, y = _as_runs_by_tasks(x), _as_runs_by_tasks(y)
    if x.size == 0 or y.size == 0:
        return float("nan")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y need the same number of tasks; got {x.shape[1]} and {y.shape[1]}")
    greater = (x[:, None, :] > y[None, :, :]).mean(axis=(0, 1))
    ties = (x[:, None, :] == y[None, :, :]).mean(axis=(0, 1))
    return float((greater + 0.5 * ties).mean())


def probability_of_improvement_ci(
    x: np.ndarray, y: np.ndarray, reps: int = 2000, confidence: float = 0.95, seed: int = 0
) -> Estimate:
    """P(X > Y) with a percentile CI from resampling the runs of X and of Y independently, within each task
    (rliable's StratifiedIndependentBootstrap)."""
    x, y = _as_runs_by_tasks(x), _as_runs_by_tasks(y)
    point = probability_of_improvement(x, y)
    if x.shape[0] < 2 or y.shape[0] < 2:
        return Estimate(point, float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    xs, ys = _resample(x, reps, rng), _resample(y, reps, rng)  # (reps, n, tasks), (reps, m, tasks)
    greater = (xs[:, :, None, :] > ys[:, None, :, :]).mean(axis=(1, 2))
    ties = (xs[:, :, None, :] == ys[:, None, :, :]).mean(axis=(1, 2))
    values = (greater + 0.5 * ties).mean(axis=1)
    return Estimate(point, *_percentile_interval(values, confidence))


def curve_estimates(
    curves: np.ndarray,
    statistic: Callable[[np.ndarray], float] = iqm,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[Estimate]:
    """`bootstrap_ci` at each point of a (runs, points) array of learning curves (one task)."""
    c = np.asarray(curves, dtype=float)
    return [bootstrap_ci(c[:, j], statistic, reps, confidence, seed) for j in range(c.shape[1])]
