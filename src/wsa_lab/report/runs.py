"""Find and load run folders (`summary.json` + `metrics.jsonl`) for the comparison report."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from wsa_lab.run.reader import METRICS, SUMMARY, RunFileError, read_metrics_text, read_summary_bytes, run_folders_below


@dataclass
class Run:
    """One run folder as the report sees it."""

    path: Path
    summary: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    arm: str = ""
    problem: Optional[str] = None  # why the run is left out of the statistics (None = included)
    fingerprint: str = ""  # sha256 of metrics.jsonl + summary.json: a copied run folder has the same
    damaged_lines: int = 0  # metrics.jsonl lines that could not be read (left out of the curves)

    @property
    def metric(self) -> Optional[str]:
        """The run's headline metric (summary.json's `metric`, written by train), or None for older runs."""
        value = self.summary.get("metric")
        return str(value) if value else None

    @property
    def seed(self) -> Any:
        return self.summary.get("seed")

    @property
    def status(self) -> str:
        return str(self.summary.get("status", "unknown"))

    @property
    def included(self) -> bool:
        return self.problem is None

    def series(self, key: str) -> dict[int, float]:
        """{global_step: value} of `key` in metrics.jsonl; a step logged twice (a resumed run) keeps the last."""
        out: dict[int, float] = {}
        for record in self.metrics:
            value = record.get(key)
            if value is not None and "global_step" in record:
                out[int(record["global_step"])] = float(value)
        return out

    def attention_series(self) -> dict[str, dict[int, float]]:
        """{PTM name: {global_step: mean attention weight}}, from `wsa/attention/<name>` or, for runs
        logged before those existed, from `wsa/attention_weights_<i>` and summary.json's `ptm_names`."""
        names = list(self.summary.get("ptm_names") or [])
        by_name = {n: self.series(f"wsa/attention/{n}") for n in names}
        if names and all(by_name.values()):
            return by_name
        return {n: s for i, n in enumerate(names) if (s := self.series(f"wsa/attention_weights_{i}"))}


def find_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Every folder holding a `summary.json`: the given run folders, or any found below the given folders (sorted),
    in the order of `paths`."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file() and p.name == SUMMARY:
            found.append(p.parent)
        elif (p / SUMMARY).is_file():
            found.append(p)
        elif p.is_dir():
            found.extend(run_folders_below(p, lambda d: (d / SUMMARY).is_file()))
        else:
            raise FileNotFoundError(f"{p}: no such run folder, sweep folder or summary.json")
    return list(dict.fromkeys(d.resolve() for d in found))  # in the order given (a run given twice: the first stays)


def load_run(run_dir: Path) -> Run:
    """One run folder; a failed or unfinished run is marked left out (with why)."""
    try:
        summary, summary_bytes = read_summary_bytes(run_dir)
    except OSError as exc:
        return Run(run_dir, {}, arm="?", problem=f"unreadable summary.json ({exc})")
    except RunFileError as exc:
        return Run(run_dir, {}, arm="?", problem=f"unreadable summary.json ({exc.why})")
    metrics_file = run_dir / METRICS
    metrics_bytes = metrics_file.read_bytes() if metrics_file.is_file() else b""
    records, bad = read_metrics_text(metrics_bytes.decode("utf-8", errors="replace"))
    fingerprint = hashlib.sha256(metrics_bytes + b"\0" + summary_bytes).hexdigest()
    run = Run(run_dir, summary, records, arm=str(summary.get("name") or run_dir.name), fingerprint=fingerprint)
    run.damaged_lines = bad  # a torn last line (a killed run) or a damaged one: left out, named in the report's notes
    status = run.status
    if status == "failed":
        error = summary.get("error") or "no error message"
        run.problem = f"failed at step {summary.get('global_step', '?')}: {error}"
    elif status != "completed":
        last = max((int(r["global_step"]) for r in records if "global_step" in r), default=0)
        run.problem = f"unfinished (status {status!r}, last logged step {last})"
    return run


def require_metrics(runs: list[Run], metrics: tuple[str, ...]) -> None:
    """Leave out the included runs whose summary.json lacks one of `metrics` (with why)."""
    for run in runs:
        missing = [m for m in metrics if not isinstance(run.summary.get(m), (int, float))]
        if run.included and missing:
            run.problem = f"completed but summary.json lacks {', '.join(missing)}"


def skip_duplicates(runs: list[Run]) -> list[str]:
    """Count a run given twice (e.g. a copied run folder) once: of the included runs with the same arm, seed and
    metrics.jsonl + summary.json content, the first (in the order given) stays and the others are left out naming it.
    Returns one note per arm and seed that still has several (different) runs: both are counted."""
    kept: dict[tuple[str, str, str], Run] = {}
    for run in runs:
        if not run.included:
            continue
        key = (run.arm, str(run.seed), run.fingerprint)
        if key in kept:
            run.problem = f"duplicate of {kept[key].path} (same arm, seed, metrics.jsonl and summary.json)"
        else:
            kept[key] = run
    seeds = Counter((r.arm, str(r.seed)) for r in runs if r.included)
    return [
        f"arm {arm!r} has {n} different completed runs with seed {seed}: all are counted (not independent seeds)"
        for (arm, seed), n in seeds.items() if n > 1
    ]


def headline_metric(runs: list[Run]) -> str:
    """The headline metric the included runs name in summary.json (`eval/return` when none does); runs naming
    different ones are a ValueError (one line) that suggests --metric."""
    counts = Counter(r.metric for r in runs if r.included and r.metric)
    if len(counts) > 1:
        listed = ", ".join(f"{m}: {n} run{'s' if n > 1 else ''}" for m, n in counts.most_common())
        raise ValueError(
            f"the runs have different headline metrics ({listed}); choose the one to compare with --metric "
            "(runs without it are left out), or report them separately"
        )
    return next(iter(counts), "eval/return")


def split_heterogeneous_arms(runs: list[Run]) -> list[str]:
    """Runs that share an arm name but differ in env, PTMs or fusion (e.g. `phase3_hybrid` on two envs, or a sweep
    over `ptm=` without renaming the arm) become separate arms, `<name> [<what differs>]`: runs of different envs are
    never pooled, even when their headline metrics share a name. Returns one note per split arm."""
    notes = []
    by_arm: dict[str, list[Run]] = {}
    for run in runs:
        by_arm.setdefault(run.arm, []).append(run)
    fields = ("env", "PTMs", "fusion")
    for arm, members in by_arm.items():
        def key(run: Run) -> tuple:
            s = run.summary
            return (s.get("env"), tuple(s.get("ptm_names") or []), s.get("fusion"))

        variants = {key(r) for r in members}
        if len(variants) <= 1:
            continue
        differ = [i for i in range(len(fields)) if len({v[i] for v in variants}) > 1]
        for run in members:
            env, ptms, fusion = key(run)
            labels = {0: f"env={env}", 1: "ptm=" + ",".join(ptms) if ptms else "standard", 2: f"fusion={fusion}"}
            run.arm = f"{arm} [{'; '.join(labels[i] for i in differ)}]"
        notes.append(f"runs named {arm!r} differ in {' and '.join(fields[i] for i in differ)}; split into {len(variants)} arms")
    return notes


def load_runs(paths: Iterable[str | Path]) -> tuple[list[Run], list[str]]:
    """All runs under `paths`, each marked included or not (with why; duplicates too), and notes on how arms were
    formed. The caller then leaves out the runs that lack the metrics it compares (:func:`require_metrics`)."""
    runs = [load_run(d) for d in find_run_dirs(paths)]
    notes = split_heterogeneous_arms(runs)
    notes += skip_duplicates(runs)
    notes += [f"{r.path / METRICS}: {r.damaged_lines} unreadable line(s) left out" for r in runs if r.damaged_lines]
    return runs, notes
