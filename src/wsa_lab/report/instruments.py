"""The report's PTM instruments, read from run folders (never computed here):

- PTM contribution: `ablation_<suite>.json`, written by `python -m wsa_lab.evaluate <runs> ablate=true`
  (:mod:`wsa_lab.ablation`). Per run and PTM, its mean attention weight and its contribution (the headline metric
  of the agent minus that of the agent without it: ``removed``, or with its feature at its held-out mean:
  ``mean_feature``), each averaged over the suite's conditions; per arm the IQM over seeds with a 95% CI.
- Where each PTM is used: `attention_states.json`, written at the end of training
  (:mod:`wsa_lab.rl.attention_probe`): a few held-out states with the per-PTM weights the agent gave them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from wsa_lab import stats
from wsa_lab.report.runs import Run
from wsa_lab.run.reader import RunFileError, read_json

ATTENTION_STATES = "attention_states.json"  # wsa_lab.rl.attention_probe.ATTENTION_STATES (no torch import here)
PREFERRED_SUITE = "in_distribution"
VARIANTS = ("removed", "mean_feature")


@dataclass
class Contribution:
    """One PTM of one arm across seeds (estimates: IQM over seeds with a 95% stratified-bootstrap CI)."""

    arm: str
    ptm: str
    suite: str
    metric: str
    seeds: list[Any]
    weight: stats.Estimate
    contribution: dict[str, stats.Estimate]  # variant -> estimate
    per_seed: list[dict[str, float]] = field(default_factory=list)  # {"weight", <variant>...} of each run


def ablation_file(run: Run) -> Optional[str]:
    """The run's ablation file: `ablation_in_distribution.json` when it has one, else the first by name."""
    names = sorted(p.name for p in run.path.glob("ablation_*.json"))
    preferred = f"ablation_{PREFERRED_SUITE}.json"
    return preferred if preferred in names else (names[0] if names else None)


def _run_contribution(data: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{ptm: {"weight", <variant>: contribution}}, each the mean over the file's conditions."""
    out: dict[str, dict[str, list[float]]] = {}
    for cell in data["conditions"].values():
        for ptm, entry in cell["ptms"].items():
            values = out.setdefault(ptm, {"weight": [], **{v: [] for v in VARIANTS}})
            values["weight"].append(float(entry["mean_weight"]))
            for v in VARIANTS:
                values[v].append(float(entry[f"{v}_contribution"]))
    return {ptm: {k: float(np.mean(v)) for k, v in values.items()} for ptm, values in out.items()}


def contributions(runs: list[Run], boot: Any) -> tuple[list[Contribution], list[str]]:
    """Every (arm, PTM) with ablation files among the included runs, and notes on files left out."""
    notes: list[str] = []
    by_arm: dict[str, list[tuple[Run, str, dict[str, Any]]]] = {}
    for run in (r for r in runs if r.included):
        name = ablation_file(run)
        if name is None:
            continue
        try:
            data = read_json(run.path, name)
            per_ptm = _run_contribution(data)
        except RunFileError as exc:
            notes.append(f"{exc}: left out of the PTM contribution table")
            continue
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            notes.append(f"{run.path / name}: not an ablation file ({type(exc).__name__}: {exc}); left out")
            continue
        by_arm.setdefault(run.arm, []).append((run, name, {"data": data, "per_ptm": per_ptm}))
    out = []
    for arm, members in by_arm.items():
        members.sort(key=lambda m: str(m[0].seed))
        suites = {m[2]["data"].get("suite") for m in members}
        if len(suites) > 1:
            notes.append(f"arm {arm!r}: ablation files of different suites ({', '.join(map(str, sorted(suites)))}) pooled")
        ptms = list(dict.fromkeys(p for m in members for p in m[2]["per_ptm"]))
        for ptm in ptms:
            rows = [(m[0], m[2]["per_ptm"][ptm]) for m in members if ptm in m[2]["per_ptm"]]
            per_seed = [values for _, values in rows]

            def estimate(key: str) -> stats.Estimate:
                x = np.array([v[key] for v in per_seed])
                return stats.bootstrap_ci(x, stats.iqm, boot.reps, boot.confidence, boot.seed)

            first = members[0][2]["data"]
            out.append(Contribution(
                arm, ptm, str(first.get("suite")), str(first.get("metric")), [r.seed for r, _ in rows],
                estimate("weight"), {v: estimate(v) for v in VARIANTS}, per_seed,
            ))
    return out, notes


def attention_samples(runs: list[Run]) -> tuple[dict[str, tuple[Run, dict[str, Any]]], list[str]]:
    """{arm: (run, attention_states.json)}: per arm, the included run of the lowest seed that has the file."""
    notes: list[str] = []
    out: dict[str, tuple[Run, dict[str, Any]]] = {}
    for run in sorted((r for r in runs if r.included), key=lambda r: (r.arm, str(r.seed))):
        if run.arm in out:
            continue
        try:
            data = read_json(run.path, ATTENTION_STATES)
        except RunFileError as exc:
            notes.append(f"{exc}: left out of the attention-per-state figure")
            continue
        if data and data.get("states"):
            out[run.arm] = (run, data)
    return out, notes
