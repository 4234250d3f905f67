"""The report's PNG figures (matplotlib, Agg backend: no display, no network)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

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


def _draw_state(ax: Any, state: dict[str, Any]) -> None:
    """The state's graph (nodes at their positions, coloured by the first node feature; masked nodes grey, the chosen
    node ringed), else the env's image."""
    positions = state.get("positions")
    if positions:
        xy = np.asarray(positions, dtype=float)
        value = np.asarray(state.get("node_feature") or np.zeros(len(xy)), dtype=float)
        allowed = np.asarray(state.get("mask") or np.ones(len(xy)), dtype=bool)
        ax.scatter(xy[~allowed, 0], xy[~allowed, 1], s=14, color="lightgrey", marker="x", linewidths=1)
        points = ax.scatter(xy[allowed, 0], xy[allowed, 1], s=18, c=value[allowed], cmap="viridis", edgecolors="none")
        chosen = state.get("chosen")
        if chosen is not None and 0 <= chosen < len(xy):
            ax.scatter(*xy[chosen], s=90, facecolors="none", edgecolors="red", linewidths=1.5)
        ax.set_xlim(-0.03, 1.03)
        ax.set_ylim(-0.03, 1.03)
        ax.set_aspect("equal")
        cbar = ax.figure.colorbar(points, ax=ax, fraction=0.046, pad=0.02)
        cbar.ax.tick_params(labelsize=6)
    elif state.get("image") is not None:
        image = np.asarray(state["image"], dtype=float)
        ax.imshow(image.transpose(1, 2, 0) if image.shape[0] == 3 else image[0], cmap="viridis", origin="lower")
    else:
        ax.text(0.5, 0.5, "no positions\nor image", ha="center", va="center", fontsize=8, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"episode {state.get('episode')}, step {state.get('step')}", fontsize=8)


def attention_states(samples: dict[str, tuple[Any, dict[str, Any]]], path: Path, per_arm: int = 4) -> Optional[Path]:
    """Per arm (one run: its lowest seed), a few held-out states beside the per-PTM attention weights they got."""
    if not samples:
        return None
    plt = _pyplot()
    arms = list(samples)
    colors = _colors(list(dict.fromkeys(n for _, data in samples.values() for n in data["ptm_names"])))
    cols = min(per_arm, max(len(data["states"]) for _, data in samples.values()))
    fig = plt.figure(figsize=(4.8 * cols, 2.1 * len(arms) + 0.8))
    outer = fig.add_gridspec(len(arms), cols, hspace=0.45, wspace=0.25)
    for row, arm in enumerate(arms):
        run, data = samples[arm]
        states = data["states"]
        picked = [states[round(i * (len(states) - 1) / max(cols - 1, 1))] for i in range(min(cols, len(states)))]
        for col, state in enumerate(picked):
            inner = outer[row, col].subgridspec(1, 2, width_ratios=[1.2, 1], wspace=0.55)
            _draw_state(fig.add_subplot(inner[0]), state)
            bars = fig.add_subplot(inner[1])
            bars.set_box_aspect(1)  # as tall as the state beside it
            names = list(state["weights"])
            weights = [state["weights"][n] for n in names]
            bars.barh(range(len(names)), weights, color=[colors[n] for n in names], alpha=0.55)
            for i, (name, w) in enumerate(zip(names, weights)):  # labels inside the panel: no clash with the colour bar
                bars.text(0.03, i, f"{name} {w:.2f}", va="center", fontsize=7)
            bars.axvline(1 / len(names), color="grey", lw=0.8, ls="--")
            bars.set_yticks([])
            bars.invert_yaxis()
            bars.set_xlim(0, 1)
            bars.set_xlabel("attention weight", fontsize=7)
            bars.tick_params(axis="x", labelsize=7)
            bars.set_title(f"{arm}, seed {run.seed}" if col == 0 else "", fontsize=8, fontweight="bold")
    fig.suptitle(
        "Where each PTM is used: held-out states beside their per-PTM attention weights\n"
        "(colour = first node feature, grey x = not allowed, red ring = chosen node; dashed = uniform 1/P)", fontsize=10,
    )
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def contribution_plot(rows: list[Any], path: Path) -> Optional[Path]:
    """Per ablation variant, each (arm, PTM)'s mean attention weight vs its contribution: IQM over seeds with 95% CI
    bars, seeds as faint dots."""
    if not rows:
        return None
    plt = _pyplot()
    colors = _colors(list(dict.fromkeys(r.ptm for r in rows)))
    markers = dict(zip(dict.fromkeys(r.arm for r in rows), "osD^vP*Xh<>"))
    titles = {"removed": "PTM removed (weight 0, others renormalised)", "mean_feature": "feature replaced by its held-out mean"}
    fig, axes = plt.subplots(1, len(titles), figsize=(6.2 * len(titles), 4.6), squeeze=False)
    for ax, (variant, title) in zip(axes[0], titles.items()):
        for r in rows:
            ax.scatter([s["weight"] for s in r.per_seed], [s[variant] for s in r.per_seed], color=colors[r.ptm],
                       marker=markers[r.arm], alpha=0.25, s=14)
            est, w = r.contribution[variant], r.weight
            xerr = None if not np.isfinite(w.low) else [[w.value - w.low], [w.high - w.value]]
            yerr = None if not np.isfinite(est.low) else [[est.value - est.low], [est.high - est.value]]
            ax.errorbar(w.value, est.value, xerr=xerr, yerr=yerr, fmt=markers[r.arm], color=colors[r.ptm], ms=7,
                        capsize=3, label=f"{r.arm}: {r.ptm} (n={len(r.per_seed)})")
        ax.axhline(0, color="grey", lw=0.8, ls="--")
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel("mean attention weight on held-out states")
        ax.set_ylabel(f"contribution: {rows[0].metric.removeprefix('eval/')}, agent - ablated")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Attention weight vs causal contribution per PTM (IQM over seeds, 95% CI; faint dots = seeds)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
