"""Per-arm statistics over seeds: final scores (mean, IQM, 95% CIs), probability of improvement, curves."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from wsa_lab import stats
from wsa_lab.report.runs import Run

RETURN_METRIC = "eval/return"
#: P(arm > baseline) from one run per arm is one comparison (0, 1/2 or 1), not an estimate.
NEEDS_SEEDS = "needs >= 2 seeds per arm"


def final_metrics(metric: str) -> tuple[str, ...]:
    """The final scores the report shows per arm and run: `eval/return` and the headline metric."""
    return tuple(dict.fromkeys((RETURN_METRIC, metric)))


@dataclass
class BootstrapSettings:
    reps: int = 10_000
    """bootstrap resamples (rliable's default is 50,000; 10,000 gives CIs stable to ~0.005)"""
    confidence: float = 0.95
    seed: int = 0
    """fixed seed: the same runs always give the same report"""


@dataclass
class ArmStats:
    arm: str
    phase: Optional[str]
    ptm_names: list[str]
    fusion: Optional[str]
    seeds: list[Any]
    final: dict[str, dict[str, stats.Estimate]] = field(default_factory=dict)  # metric -> {"mean", "iqm"}
    improvement: Optional[stats.Estimate] = None  # P(this arm > baseline) on the comparison metric
    improvement_note: Optional[str] = None  # why there is no improvement estimate (e.g. NEEDS_SEEDS)
    health: dict[str, int] = field(default_factory=dict)  # verdict -> runs
    wall_time_s: list[float] = field(default_factory=list)
    sps: list[float] = field(default_factory=list)
    excluded: int = 0


def final_scores(runs: list[Run], metric: str) -> np.ndarray:
    """(runs,) final value of `metric` from each run's summary.json."""
    return np.array([float(r.summary[metric]) for r in runs], dtype=float)


@dataclass
class Curve:
    steps: list[int]
    estimates: list[stats.Estimate]
    runs: int


def _final_sps(run: Run) -> float:
    sps = run.series("charts/SPS")
    if sps:
        return sps[max(sps)]
    steps, wall = run.summary.get("global_step"), run.summary.get("wall_time_s")
    return float(steps) / float(wall) if steps and wall else float("nan")


def arm_stats(
    runs: list[Run], baseline: Optional[str], metric: str, boot: BootstrapSettings
) -> dict[str, ArmStats]:
    """One `ArmStats` per arm (in order of first appearance after sorting by phase then arm)."""
    included: dict[str, list[Run]] = {}
    excluded = Counter(r.arm for r in runs if not r.included)
    for run in sorted((r for r in runs if r.included), key=lambda r: (str(r.summary.get("phase")), r.arm, str(r.seed))):
        included.setdefault(run.arm, []).append(run)
    out: dict[str, ArmStats] = {}
    for arm, members in included.items():
        first = members[0].summary
        a = ArmStats(
            arm=arm, phase=first.get("phase"), ptm_names=list(first.get("ptm_names") or []), fusion=first.get("fusion"),
            seeds=[r.seed for r in members], excluded=excluded.get(arm, 0),
        )
        for m in final_metrics(metric):
            x = final_scores(members, m)
            a.final[m] = {
                "mean": stats.bootstrap_ci(x, stats.mean, boot.reps, boot.confidence, boot.seed),
                "iqm": stats.bootstrap_ci(x, stats.iqm, boot.reps, boot.confidence, boot.seed),
            }
        a.health = dict(Counter(str(r.summary["wsa/health/verdict"]) for r in members if "wsa/health/verdict" in r.summary))
        a.wall_time_s = [float(r.summary["wall_time_s"]) for r in members if r.summary.get("wall_time_s") is not None]
        a.sps = [s for s in (_final_sps(r) for r in members) if math.isfinite(s)]
        out[arm] = a
    for arm in excluded:  # arms with no usable run still appear (with 0 seeds)
        if arm not in out:
            out[arm] = ArmStats(arm=arm, phase=None, ptm_names=[], fusion=None, seeds=[], excluded=excluded[arm])
    if baseline is not None and baseline in included:
        y = final_scores(included[baseline], metric)
        for arm, members in included.items():
            if arm == baseline:
                continue
            if min(len(members), len(y)) < 2:
                out[arm].improvement_note = NEEDS_SEEDS
                continue
            x = final_scores(members, metric)
            out[arm].improvement = stats.probability_of_improvement_ci(x, y, boot.reps, boot.confidence, boot.seed)
    return out


# ---------------------------------------------------------------------------------------------- references
def reference_names(runs: list[Run]) -> list[str]:
    """The env's reference policies, as the runs logged them (`eval/<name>_ratio` in summary.json), in order."""
    names: dict[str, None] = {}
    for run in runs:
        for key in run.summary:
            if key.startswith("eval/") and key.endswith("_ratio"):
                names[key[len("eval/"):-len("_ratio")]] = None
    return list(names)


def reference_gaps(runs: list[Run], boot: BootstrapSettings) -> dict[str, dict[str, stats.Estimate]]:
    """{policy: {reference: gap}}: how far each arm (final evaluation, IQM over seeds with its CI) and each
    reference policy falls short of each reference, as a fraction of the reference's return.

    gap = 1 - ratio = (reference - agent) / |reference| (`contract.ratio_to_reference`), whatever the sign of
    the returns: for job shop (return = -makespan) it is the makespan gap, agent makespan / reference - 1.
    A reference's own row comes from the returns the runs logged at step 0 (`reference/<name>_return`, the
    same held-out episodes), averaged over the runs; 0 against itself.
    """
    from wsa_lab.contract import ratio_to_reference  # here: the contract imports torch, the rest of the report does not

    included = [r for r in runs if r.included]
    names = reference_names(included)
    out: dict[str, dict[str, stats.Estimate]] = {}
    for arm in dict.fromkeys(r.arm for r in included):
        members = [r for r in included if r.arm == arm]
        out[arm] = {}
        for ref in names:
            ratios = [float(r.summary[f"eval/{ref}_ratio"]) for r in members if f"eval/{ref}_ratio" in r.summary]
            if ratios:
                out[arm][ref] = stats.bootstrap_ci(1.0 - np.array(ratios), stats.iqm, boot.reps, boot.confidence, boot.seed)
    logged = [(r.metrics[0] if r.metrics else {}) for r in included]
    for policy in names:
        row: dict[str, stats.Estimate] = {}
        for ref in names:
            gaps = [1.0 - ratio_to_reference(float(m[f"reference/{policy}_return"]), float(m[f"reference/{ref}_return"]))
                    for m in logged if f"reference/{policy}_return" in m and f"reference/{ref}_return" in m]
            if gaps:
                value = float(np.mean(gaps))
                row[ref] = stats.Estimate(value, float("nan"), float("nan"))
        if row:
            out[f"{policy} (reference)"] = row
    return out


def choose_baseline(arms: list[str], requested: Optional[str]) -> Optional[str]:
    """The requested arm, else the first arm whose name contains 'baseline', else the first arm."""
    if requested is not None:
        if requested not in arms:
            raise ValueError(f"baseline arm {requested!r} not found; arms: {', '.join(arms) or 'none'}")
        return requested
    for arm in arms:
        if "baseline" in arm:
            return arm
    return arms[0] if arms else None


def learning_curve(members: list[Run], metric: str, statistic, boot: BootstrapSettings) -> Optional[Curve]:
    """`statistic` (IQM or mean) with a bootstrap CI at every step that all `members` logged `metric` at."""
    series = [r.series(metric) for r in members]
    series = [s for s in series if s]
    if not series:
        return None
    steps = sorted(set.intersection(*(set(s) for s in series)))
    if not steps:
        return None
    matrix = np.array([[s[t] for t in steps] for s in series])
    return Curve(steps, stats.curve_estimates(matrix, statistic, boot.reps, boot.confidence, boot.seed), len(series))


def attention_curves(members: list[Run]) -> dict[str, tuple[list[int], np.ndarray]]:
    """{PTM name: (steps, (runs, steps) weights)} over the steps every run of the arm logged."""
    per_run = [r.attention_series() for r in members]
    per_run = [a for a in per_run if a]
    if not per_run:
        return {}
    names = [n for n in per_run[0] if all(n in a for a in per_run)]
    out = {}
    for name in names:
        steps = sorted(set.intersection(*(set(a[name]) for a in per_run)))
        if steps:
            out[name] = (steps, np.array([[a[name][t] for t in steps] for a in per_run]))
    return out
