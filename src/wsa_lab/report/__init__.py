"""Side-by-side comparison of the ablation arms of a sweep: `python -m wsa_lab.report <folders...>`.

Reads only the run folders (`summary.json`, `metrics.jsonl`), so it works offline and on any copy of
`multirun/`, for runs of any env. The headline metric is the runs' own (`summary.json`'s `metric`, e.g.
`eval/<reference>_ratio`, or `eval/return` for an env without references; `--metric` overrides it). Per arm:
seeds, final `eval/return` and headline metric as mean and IQM with 95% stratified-bootstrap CIs (rliable's
definitions, fixed bootstrap seed), probability of improvement over a baseline arm (with >= 2 seeds per arm),
attention-health verdicts; figures of learning curves, attention weights and compute. Where the run folders hold
them, the PTM instruments (:mod:`wsa_lab.report.instruments`): a PTM contribution table and plot from
`ablation_<suite>.json`, and held-out states beside their per-PTM weights from `attention_states.json`. Failed and
unfinished runs, and second copies of a run (same arm, seed and files), are listed, never averaged in.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from wsa_lab import stats
from wsa_lab.run.atomic import write_text_atomic
from wsa_lab.report.analysis import (
    ArmStats, BootstrapSettings, Curve, arm_stats, attention_curves, choose_baseline, final_metrics, learning_curve,
    reference_gaps,
)
from wsa_lab.report.instruments import VARIANTS, Contribution, attention_samples, contributions
from wsa_lab.report.runs import Run, headline_metric, load_runs, require_metrics

__all__ = ["Report", "build_report", "contribution_table", "write_report"]


@dataclass
class Report:
    runs: list[Run]
    arms: dict[str, ArmStats]
    baseline: Optional[str]
    metric: str
    curve_statistic: str
    boot: BootstrapSettings
    curves: dict[str, dict[str, Optional[Curve]]] = field(default_factory=dict)
    attention: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    gaps: dict[str, dict[str, stats.Estimate]] = field(default_factory=dict)  # policy -> reference -> gap
    figures: dict[str, Path] = field(default_factory=dict)
    contributions: list[Contribution] = field(default_factory=list)  # per (arm, PTM), from ablation_<suite>.json
    attention_samples: dict[str, Any] = field(default_factory=dict)  # arm -> (run, attention_states.json)

    @property
    def excluded(self) -> list[Run]:
        return [r for r in self.runs if not r.included]

    @property
    def final_metrics(self) -> tuple[str, ...]:
        return final_metrics(self.metric)


def build_report(
    paths: Iterable[str | Path],
    baseline: Optional[str] = None,
    metric: Optional[str] = None,
    boot: Optional[BootstrapSettings] = None,
    curve_statistic: str = "iqm",
) -> Report:
    """Load every run under `paths` and compute the per-arm statistics and curves (no files written).

    `metric`: the comparison metric; None = the runs' own headline metric (a ValueError if they differ).
    """
    boot = boot or BootstrapSettings()
    runs, notes = load_runs(paths)
    if not runs:
        raise FileNotFoundError(f"no summary.json found under {', '.join(map(str, paths))}")
    metric = metric or headline_metric(runs)
    require_metrics(runs, final_metrics(metric))
    included_arms = list(dict.fromkeys(r.arm for r in sorted(runs, key=lambda r: (str(r.summary.get("phase")), r.arm)) if r.included))
    base = choose_baseline(included_arms, baseline)
    arms = arm_stats(runs, base, metric, boot)
    statistic = {"iqm": stats.iqm, "mean": stats.mean}[curve_statistic]
    report = Report(runs, arms, base, metric, curve_statistic, boot, notes=notes, gaps=reference_gaps(runs, boot))
    for arm in arms:
        members = [r for r in runs if r.included and r.arm == arm]
        report.curves[arm] = {m: learning_curve(members, m, statistic, boot) for m in report.final_metrics}
        report.attention[arm] = attention_curves(members)
    curves = [c for by_metric in report.curves.values() for c in by_metric.values() if c is not None]
    if curves and all(len(c.steps) < 2 for c in curves):
        steps = sorted({step for c in curves for step in c.steps})
        report.notes.append(
            f"no learning curves: every arm has a single evaluation (at step {', '.join(map(str, steps))}); a curve "
            "needs at least two, e.g. evaluation.interval=1 or a larger algo.total_timesteps"
        )
    report.contributions, notes = contributions(runs, boot)
    report.attention_samples, more = attention_samples(runs)
    report.notes += notes + more
    return report


# ---------------------------------------------------------------------------------------------- rendering
def fmt(x: Optional[float], digits: int = 3) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def fmt_estimate(e: Optional[stats.Estimate], digits: int = 3) -> str:
    if e is None:
        return "-"
    if not math.isfinite(e.low):
        return fmt(e.value, digits)
    return f"{fmt(e.value, digits)} [{fmt(e.low, digits)}, {fmt(e.high, digits)}]"


def arm_table(report: Report) -> list[list[str]]:
    header = [
        "arm", "phase", "PTMs", "seeds",
        *(f"{m} {stat} [95% CI]" for m in report.final_metrics for stat in ("IQM", "mean")),
        f"P({report.metric.split('/')[-1]} > {report.baseline})" if report.baseline else "P(improvement)",
        "attention health", "wall time (s)", "SPS",
    ]
    rows = [header]
    for arm, a in report.arms.items():
        ptms = ", ".join(a.ptm_names) if a.ptm_names else "standard actor"
        if a.fusion and a.fusion != "wsa":
            ptms += f" ({a.fusion})"
        seeds = f"{len(a.seeds)}" + (f" (+{a.excluded} left out)" if a.excluded else "")
        cells = [arm, str(a.phase or "-"), ptms, seeds]
        for m in report.final_metrics:
            est = a.final.get(m, {})
            cells += [fmt_estimate(est.get("iqm")), fmt_estimate(est.get("mean"))]
        cells.append(improvement_cell(report, arm, a))
        cells.append(", ".join(f"{v} x{n}" for v, n in sorted(a.health.items())) or "-")
        cells.append(fmt(float(sum(a.wall_time_s) / len(a.wall_time_s)), 1) if a.wall_time_s else "-")
        cells.append(fmt(float(sum(a.sps) / len(a.sps)), 1) if a.sps else "-")
        rows.append(cells)
    return rows


def gap_table(report: Report) -> list[list[str]]:
    """Each arm and each reference policy against each reference: gap = 1 - ratio (e.g. job shop's makespan
    gap); empty when the env has no references."""
    refs = list(dict.fromkeys(ref for row in report.gaps.values() for ref in row))
    if not refs:
        return []
    rows = [["policy", *(f"gap to {ref} (IQM [95% CI])" for ref in refs)]]
    order = [a for a in report.arms if a in report.gaps] + [p for p in report.gaps if p not in report.arms]
    for policy in order:  # the arms in the arm table's order, then the reference policies
        rows.append([policy, *(fmt_estimate(report.gaps[policy].get(ref)) for ref in refs)])
    return rows


def contribution_table(report: Report) -> list[list[str]]:
    """Per arm and PTM: seeds, mean attention weight and contribution per ablation variant (IQM [95% CI]); empty
    when no run folder holds an ablation file."""
    if not report.contributions:
        return []
    rows = [["arm", "PTM", "seeds", "mean attention weight", "contribution: removed", "contribution: mean feature", "metric", "suite"]]
    for c in report.contributions:
        rows.append([
            c.arm, c.ptm, str(len(c.seeds)), fmt_estimate(c.weight), *(fmt_estimate(c.contribution[v]) for v in VARIANTS),
            c.metric, c.suite,
        ])
    return rows


def improvement_cell(report: Report, arm: str, a: ArmStats) -> str:
    """P(arm > baseline) with its CI; `n/a (why)` when it cannot be estimated (e.g. one seed per arm)."""
    if arm == report.baseline:
        return "baseline"
    if a.improvement is None and a.improvement_note:
        return f"n/a ({a.improvement_note})"
    return fmt_estimate(a.improvement, 2)


def markdown_table(rows: list[list[str]]) -> str:
    esc = [[c.replace("|", "\\|") for c in row] for row in rows]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(esc[0])]
    lines += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    return "\n".join(lines)


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def runs_table(report: Report, out_dir: Path, included: bool) -> list[list[str]]:
    def rel(p: Path) -> str:
        try:
            return str(p.relative_to(out_dir.parent))
        except ValueError:
            return str(p)

    if included:
        rows = [["arm", "seed", *report.final_metrics, "health", "folder"]]
        for r in sorted((r for r in report.runs if r.included), key=lambda r: (r.arm, str(r.seed))):
            rows.append([
                r.arm, str(r.seed), *(fmt(r.summary.get(m)) for m in report.final_metrics),
                str(r.summary.get("wsa/health/verdict", "-")), rel(r.path),
            ])
        return rows
    rows = [["arm", "seed", "status", "why it is left out", "folder"]]
    for r in sorted(report.excluded, key=lambda r: (r.arm, str(r.seed))):
        rows.append([r.arm, str(r.seed), r.status, r.problem or "", rel(r.path)])
    return rows


def render_markdown(report: Report, out_dir: Path, sources: list[str]) -> str:
    b = report.boot
    n_in = sum(r.included for r in report.runs)
    lines = [
        "# WSA ablation report",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M')} by `python -m wsa_lab.report {' '.join(sources)}`: "
        f"{len(report.runs)} run folders, {n_in} completed runs in {sum(1 for a in report.arms.values() if a.seeds)} arms"
        + (f", {len(report.excluded)} left out (listed below)." if report.excluded else "."),
        "",
        f"Scores are the final evaluation of each run (`summary.json`). IQM = mean of the middle 50% of runs "
        f"(rliable); intervals are {b.confidence:.0%} percentile stratified-bootstrap CIs over seeds "
        f"({b.reps} resamples, bootstrap seed {b.seed}: rerunning gives the same numbers). "
        f"P(X > {report.baseline}) is the probability that a random run of the arm beats a random run of the "
        f"baseline on `{report.metric}` (Mann-Whitney, ties 1/2), with a bootstrap CI. "
        "With fewer than 2 seeds no interval is given, and P(X > baseline) needs >= 2 seeds in both arms "
        "(one run against one is a single comparison, 0, 1/2 or 1: shown as n/a).",
        "",
    ]
    for note in report.notes:
        lines += [f"> Note: {note}", ""]
    lines += ["## Arms", "", markdown_table(arm_table(report)), ""]
    if any(a.health for a in report.arms.values()):
        lines += [
            "Attention health: each run's final verdict (`wsa/health/verdict` in its summary.json) and how many of "
            "the arm's runs had it, e.g. `balanced x3`; `unknown` = the run ended before "
            "`logger.health.min_points` PPO iterations (default 5), too few to judge; `-` = no attention weights "
            "(Standard Actor, or a fusion without them).", "",
        ]
    if gaps := gap_table(report):
        lines += [
            "## Gap to each reference", "",
            "gap = 1 - `eval/<reference>_ratio` = (reference return - return) / |reference return|: 0 = as good as "
            "the reference, 0.05 = 5% short of it (for a cost such as job shop's makespan: 5% longer), negative = "
            "better. Arms: final evaluation, IQM over seeds; reference policies: on the same held-out episodes "
            "(`reference/<name>_return` at step 0).", "",
            markdown_table(gaps), "",
        ]
    if contribution := contribution_table(report):
        lines += [
            "## PTM contribution", "",
            "From `python -m wsa_lab.evaluate <runs> ablate=true` (`ablation_<suite>.json`): contribution = the "
            "deterministic agent's headline metric minus that of the agent with the PTM ablated, on the held-out "
            "episodes (> 0: the policy needs it); removed = its attention weight set to 0, the others renormalised; "
            "mean feature = its feature replaced by its mean over the held-out states. Per run each number is the "
            "mean over the suite's conditions; cells are the IQM over seeds [95% CI].", "",
            markdown_table(contribution), "",
        ]
    titles = {
        "learning_curves": "## Learning curves",
        "attention": "## Attention weight evolution",
        "attention_states": "## Where each PTM is used (held-out states, `attention_states.json`)",
        "contribution": "## Attention weight vs contribution",
        "compute": "## Wall-clock time and throughput",
    }
    for key, title in titles.items():
        if key in report.figures:
            lines += [title, "", f"![{key}]({report.figures[key].name})", ""]
    lines += ["## Runs", "", markdown_table(runs_table(report, out_dir, included=True)), ""]
    if report.excluded:
        lines += [
            "## Runs left out (failed, unfinished or duplicates)", "",
            markdown_table(runs_table(report, out_dir, included=False)), "",
        ]
    return "\n".join(lines)


def _estimate_json(e: Optional[stats.Estimate]) -> Any:
    if e is None:
        return None
    return {k: (v if math.isfinite(v) else None) for k, v in e._asdict().items()}


def report_json(report: Report) -> dict[str, Any]:
    arms = {}
    for arm, a in report.arms.items():
        d = {k: v for k, v in asdict(a).items() if k not in ("final", "improvement", "improvement_note")}
        d["final"] = {m: {k: _estimate_json(e) for k, e in est.items()} for m, est in a.final.items()}
        d["improvement_over_baseline"] = _estimate_json(a.improvement)
        d["improvement_note"] = a.improvement_note
        arms[arm] = d
    return {
        "baseline": report.baseline,
        "metric": report.metric,
        "final_metrics": list(report.final_metrics),
        "bootstrap": asdict(report.boot),
        "curve_statistic": report.curve_statistic,
        "arms": arms,
        "runs": [
            {"folder": str(r.path), "arm": r.arm, "seed": r.seed, "status": r.status, "included": r.included, "problem": r.problem}
            for r in report.runs
        ],
        "notes": report.notes,
        "gaps": {p: {ref: _estimate_json(e) for ref, e in row.items()} for p, row in report.gaps.items()},
        "contributions": [
            {"arm": c.arm, "ptm": c.ptm, "suite": c.suite, "metric": c.metric, "seeds": c.seeds,
             "mean_weight": _estimate_json(c.weight), **{v: _estimate_json(e) for v, e in c.contribution.items()},
             "per_seed": c.per_seed}
            for c in report.contributions
        ],
    }


def write_report(report: Report, out_dir: Path, sources: list[str], plots: bool = True) -> Path:
    """Write report.md, report.json and the PNG figures into `out_dir`; returns the Markdown file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if plots:
        from wsa_lab.report import plots as p

        figures = {
            "learning_curves": p.learning_curves(report.curves, list(report.final_metrics), report.curve_statistic, out_dir / "learning_curves.png"),
            "attention": p.attention_evolution(report.attention, out_dir / "attention.png"),
            "compute": p.compute_cost(report.arms, out_dir / "compute.png"),
            "attention_states": p.attention_states(report.attention_samples, out_dir / "attention_states.png"),
            "contribution": p.contribution_plot(report.contributions, out_dir / "contribution.png"),
        }
        report.figures = {k: v for k, v in figures.items() if v is not None}
    md = out_dir / "report.md"
    write_text_atomic(md, render_markdown(report, out_dir, sources) + "\n")
    write_text_atomic(out_dir / "report.json", json.dumps(report_json(report), indent=2, default=str) + "\n")
    return md
