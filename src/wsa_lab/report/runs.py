"""Find and load run folders (`summary.json` + `metrics.jsonl`) for the comparison report."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

SKIP_DIRS = {"wandb", "tensorboard", "checkpoints", ".hydra", ".submitit", "report"}


@dataclass
class Run:
    """One run folder as the report sees it."""

    path: Path
    summary: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    arm: str = ""
    problem: Optional[str] = None  # why the run is left out of the statistics (None = included)

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
    """Every folder holding a `summary.json`: the given run folders, or any found below the given folders."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file() and p.name == "summary.json":
            found.append(p.parent)
        elif (p / "summary.json").is_file():
            found.append(p)
        elif p.is_dir():
            for summary in sorted(p.rglob("summary.json")):
                if not SKIP_DIRS.intersection(summary.relative_to(p).parts[:-1]):
                    found.append(summary.parent)
        else:
            raise FileNotFoundError(f"{p}: no such run folder, sweep folder or summary.json")
    return sorted(dict.fromkeys(d.resolve() for d in found))


def _read_metrics(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Records of metrics.jsonl; a torn last line (a killed run) is skipped and counted."""
    records, bad = [], 0
    if not path.is_file():
        return records, bad
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            bad += 1
    return records, bad


def load_run(run_dir: Path, metrics: tuple[str, ...]) -> Run:
    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        return Run(run_dir, {}, arm="?", problem=f"unreadable summary.json ({exc})")
    records, _bad = _read_metrics(run_dir / "metrics.jsonl")
    run = Run(run_dir, summary, records, arm=str(summary.get("name") or run_dir.name))
    status = run.status
    if status == "failed":
        error = summary.get("error") or "no error message"
        run.problem = f"failed at step {summary.get('global_step', '?')}: {error}"
    elif status != "completed":
        last = max((int(r["global_step"]) for r in records if "global_step" in r), default=0)
        run.problem = f"unfinished (status {status!r}, last logged step {last})"
    else:
        missing = [m for m in metrics if not isinstance(summary.get(m), (int, float))]
        if missing:
            run.problem = f"completed but summary.json lacks {', '.join(missing)}"
    return run


def split_heterogeneous_arms(runs: list[Run]) -> list[str]:
    """Runs that share an arm name but differ in PTMs or fusion (e.g. a sweep over `ptm=` without renaming
    the arm) become separate arms, `<name> [<what differs>]`. Returns one note per split arm."""
    notes = []
    by_arm: dict[str, list[Run]] = {}
    for run in runs:
        by_arm.setdefault(run.arm, []).append(run)
    for arm, members in by_arm.items():
        def key(run: Run) -> tuple:
            s = run.summary
            return (tuple(s.get("ptm_names") or []), s.get("fusion"))

        variants = {key(r) for r in members}
        if len(variants) <= 1:
            continue
        ptms_differ = len({v[0] for v in variants}) > 1
        fusion_differs = len({v[1] for v in variants}) > 1
        for run in members:
            ptms, fusion = key(run)
            parts = []
            if ptms_differ:
                parts.append("ptm=" + ",".join(ptms) if ptms else "standard")
            if fusion_differs:
                parts.append(f"fusion={fusion}")
            run.arm = f"{arm} [{'; '.join(parts)}]"
        notes.append(f"runs named {arm!r} differ in {'PTMs' if ptms_differ else 'fusion'}; split into {len(variants)} arms")
    return notes


def load_runs(paths: Iterable[str | Path], metrics: tuple[str, ...] = ("eval/return", "eval/greedy_ratio")) -> tuple[list[Run], list[str]]:
    """All runs under `paths`, each marked included or not (with why), and notes on how arms were formed."""
    runs = [load_run(d, metrics) for d in find_run_dirs(paths)]
    notes = split_heterogeneous_arms(runs)
    return runs, notes
