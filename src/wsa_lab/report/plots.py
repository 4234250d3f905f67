"""The report's PNG figures (matplotlib, Agg backend: no display, no network)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from wsa_lab.report.analysis import ArmStats, Curve


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _colors(arms: list[str]) -> dict[str, str]:
    plt = _pyplot()
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {arm: cycle[i % len(cycle)] for i, arm in enumerate(arms)}


def learning_curves(
    curves: dict[str, dict[str, Optional[Curve]]], metrics: list[str], statistic: str, path: Path
) -> Optional[Path]:
    """One panel per metric; per arm the `statistic` over seeds vs env steps with its 95% CI band. None when no arm
    has two evaluations: one dot per arm is not a curve (the report says so in a note)."""
    arms = [a for a in curves if any(curves[a].get(m) and len(curves[a][m].steps) > 1 for m in metrics)]
    if not arms:
        return None
    plt = _pyplot()
    colors = _colors(list(curves))
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for arm in arms:
            curve = curves[arm].get(metric)
            if curve is None:
                continue
            value = np.array([e.value for e in curve.estimates])
            low = np.array([e.low for e in curve.estimates])
            high = np.array([e.high for e in curve.estimates])
            ax.plot(curve.steps, value, marker="o", ms=3, color=colors[arm], label=f"{arm} (n={curve.runs})")
            if np.isfinite(low).any():
                ax.fill_between(curve.steps, low, high, color=colors[arm], alpha=0.2, linewidth=0)
        ax.set_xlabel("environment steps")
        ax.set_ylabel(f"{metric} ({statistic.upper()} over seeds)")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Learning curves: {statistic.upper()} over seeds, shaded 95% bootstrap CI", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def attention_evolution(attention: dict[str, dict[str, tuple[list[int], np.ndarray]]], path: Path) -> Optional[Path]:
    """One panel per WSA arm: each PTM's mean attention weight vs env steps (mean over seeds, min-max band)."""
    arms = [a for a, by_name in attention.items() if by_name]
    if not arms:
        return None
    plt = _pyplot()
    cols = min(3, len(arms))
    rows = (len(arms) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows + 0.4), squeeze=False)
    colors = _colors(list(dict.fromkeys(n for a in arms for n in attention[a])))  # one colour per PTM name
    for ax, arm in zip(axes.ravel(), arms):
        for name, (steps, weights) in attention[arm].items():
            ax.plot(steps, weights.mean(0), label=name, color=colors[name])
            if weights.shape[0] > 1:
                ax.fill_between(steps, weights.min(0), weights.max(0), color=colors[name], alpha=0.2, linewidth=0)
        p = len(attention[arm])
        ax.axhline(1 / p, color="grey", lw=0.8, ls="--")
        ax.set_ylim(0, 1)
        ax.set_title(f"{arm} (n={next(iter(attention[arm].values()))[1].shape[0]})", fontsize=10)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("mean attention weight")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(arms):]:
        ax.set_visible(False)
    fig.suptitle("Attention weight per PTM\nmean over seeds, shaded min-max; dashed = uniform 1/P", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def compute_cost(arms: dict[str, ArmStats], path: Path) -> Optional[Path]:
    """Bars per arm: wall-clock time and steps per second (mean over seeds, dots = seeds)."""
    names = [a for a, s in arms.items() if s.wall_time_s or s.sps]
    if not names:
        return None
    plt = _pyplot()
    colors = _colors(list(arms))
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(names) + 4), 4.2))
    for ax, attr, label in ((axes[0], "wall_time_s", "wall-clock time (s)"), (axes[1], "sps", "steps per second (charts/SPS)")):
        for i, arm in enumerate(names):
            values = getattr(arms[arm], attr)
            if not values:
                continue
            ax.bar(i, float(np.mean(values)), color=colors[arm], alpha=0.7)
            ax.scatter([i] * len(values), values, color="black", s=12, zorder=3)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Compute per arm (bars: mean over seeds; dots: seeds)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
