"""Sweep bookkeeping: an index of every job, failure markers, and a closing line that names failed jobs.

- `<sweep dir>/index.json` and `index.md` list each job: number, overrides, folder, state
  (`pending` -> `running` -> `done` | `failed`), attempts (a Slurm requeue is a second attempt),
  host, Slurm job id and log file. They are rebuilt from one small record per job,
  `<sweep dir>/.jobs/<num>.json`, which whoever knows the job's state writes: the job itself (`SweepIndex`
  callback, also inside a Slurm task), or the launcher (a job killed before it could say so). A lock file
  serialises the rebuilds.
- A failed job's folder gets `FAILED`: its overrides and the traceback (any failed run gets one, sweep or not).
- `finish_sweep()` (called by `python -m wsa_lab` on exit) prints one line per failed job; the process then
  exits non-zero.

The callback is configured in `conf/config.yaml` (`hydra.callbacks.sweep_index`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Iterator, Sequence

from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from wsa_lab.files import write_text_atomic

JOBS = ".jobs"
FAILED = "FAILED"
STATES = ("pending", "running", "done", "failed")

_current_sweep: Path | None = None  # the sweep this process launched (set in on_multirun_start)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


@contextlib.contextmanager
def _locked(sweep_dir: Path) -> Iterator[None]:
    (sweep_dir / JOBS).mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / JOBS / ".lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError:  # a file system without locks: rebuilds may race, each one is still complete
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_jobs(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Every job record of a sweep, by job number."""
    records = []
    for path in (Path(sweep_dir) / JOBS).glob("*.json"):
        try:
            records.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue  # being replaced right now; the next rebuild sees it
    return sorted(records, key=lambda r: r["num"])


def update_job(sweep_dir: str | Path, num: int, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into job `num`'s record (`attempts=+1` counts up) and rebuild the index."""
    sweep_dir = Path(sweep_dir)
    with _locked(sweep_dir):
        path = sweep_dir / JOBS / f"{num}.json"
        record: dict[str, Any] = {"num": num, "state": "pending", "attempts": 0}
        if path.is_file():
            record.update(json.loads(path.read_text(encoding="utf-8")))
        if fields.pop("attempts", None) == "+1":
            record["attempts"] += 1
        record.update(fields, updated=_now())
        write_text_atomic(path, json.dumps(record, indent=1, sort_keys=True) + "\n")
        _write_index(sweep_dir)
    return record


def varying_overrides(jobs: list[dict[str, Any]]) -> tuple[list[str], dict[int, list[str]]]:
    """(overrides every job shares, {job number: the overrides that set it apart})."""
    lists = [j.get("overrides", []) for j in jobs]
    common = [o for o in lists[0] if all(o in other for other in lists[1:])] if len(lists) > 1 else []
    return common, {j["num"]: [o for o in j.get("overrides", []) if o not in common] for j in jobs}


def _write_index(sweep_dir: Path) -> None:
    jobs = read_jobs(sweep_dir)
    counts = {state: sum(j["state"] == state for j in jobs) for state in STATES}
    index = {"sweep_dir": str(sweep_dir), "updated": _now(), "counts": counts, "jobs": jobs}
    write_text_atomic(sweep_dir / "index.json", json.dumps(index, indent=1, sort_keys=True) + "\n")
    common, own = varying_overrides(jobs)
    lines = [
        f"# Sweep `{sweep_dir}`",
        "",
        f"Updated {index['updated']}: " + (", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no jobs yet") + ".",
        "",
        f"Every job: `{' '.join(common)}`" if common else "",
        "",
        "| # | state | overrides | folder | attempts | job log | error |",
        "|---|---|---|---|---|---|---|",
    ]
    for j in jobs:
        cells = [
            str(j["num"]), j["state"], f"`{' '.join(own[j['num']])}`",
            f"[{j['folder']}]({j['folder']}/)" if j.get("folder") else "", str(j.get("attempts", 0)),
            f"[{j.get('slurm_job_id') or 'log'}]({j['log']})" if j.get("log") else (j.get("slurm_job_id") or ""),
            (j.get("error") or "")[:160],
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    write_text_atomic(sweep_dir / "index.md", "\n".join(lines) + "\n")


def write_failure(folder: str | Path, overrides: Sequence[str], text: str) -> Path:
    """`<folder>/FAILED`: when, where, the job's overrides and the traceback (or the launcher's message)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FAILED
    header = f"failed at {_now()} on {socket.gethostname()}\noverrides: {' '.join(overrides)}\n\n"
    write_text_atomic(path, header + text.rstrip() + "\n")
    return path


def _one_line(exc: BaseException | str) -> str:
    """`Type: first line of the message` (an exception), else the last line (a traceback's text)."""
    if isinstance(exc, BaseException):
        first = next((line for line in str(exc).splitlines() if line.strip()), "")
        return f"{type(exc).__name__}: {first}"[:300]
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _submitit_log(sweep_dir: Path) -> str | None:
    """The job's stderr file under `.submitit/` (relative to the sweep folder) when submitit runs it."""
    if "SUBMITIT_FOLDER" not in os.environ:
        return None
    try:
        import submitit

        return os.path.relpath(submitit.JobEnvironment().paths.stderr, sweep_dir)
    except Exception:  # not a submitit job after all
        return None


def _slurm_job_id() -> str | None:
    if "SLURM_ARRAY_JOB_ID" in os.environ:
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
    return os.environ.get("SLURM_JOB_ID")


class SweepIndex(Callback):
    """Keeps `index.json`/`index.md` of a sweep and writes `FAILED` markers (see the module docstring)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _current_sweep
        _current_sweep = Path(str(config.hydra.sweep.dir)).absolute()
        _current_sweep.mkdir(parents=True, exist_ok=True)
        with _locked(_current_sweep):
            _write_index(_current_sweep)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(str(config.hydra.runtime.output_dir))
        (folder / FAILED).unlink(missing_ok=True)  # from an earlier attempt of this job
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
        update_job(
            sweep_dir, int(config.hydra.job.num),
            overrides=list(filter_overrides(list(config.hydra.overrides.task))),
            folder=os.path.relpath(folder.absolute(), sweep_dir), state="running", started=_now(), attempts="+1",
            host=socket.gethostname(), pid=os.getpid(), slurm_job_id=_slurm_job_id(), log=_submitit_log(sweep_dir),
            error=None,
        )

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        folder = Path(str(config.hydra.runtime.output_dir))
        overrides = list(filter_overrides(list(config.hydra.overrides.task)))
        failed = job_return.status != JobStatus.COMPLETED
        error = None
        if failed:
            exc = job_return._return_value
            text = "".join(traceback.format_exception(exc)) if isinstance(exc, BaseException) else str(exc)
            write_failure(folder, overrides, text)
            error = _one_line(exc)
        if config.hydra.mode == RunMode.MULTIRUN:
            update_job(
                Path(str(config.hydra.sweep.dir)).absolute(), int(config.hydra.job.num),
                state="failed" if failed else "done", ended=_now(), error=error,
            )


def record_lost_job(sweep_dir: str | Path, num: int, overrides: Sequence[str], error: BaseException | str) -> None:
    """A launcher's report of a job that ended without a result (killed, cancelled, out of memory, time limit)."""
    sweep_dir = Path(sweep_dir)
    record = {r["num"]: r for r in read_jobs(sweep_dir)}.get(num, {})
    text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
    if record.get("folder"):
        where = f"the job's output: {sweep_dir / record['log']}" if record.get("log") else "the job's .submitit logs"
        write_failure(sweep_dir / record["folder"], overrides, f"{text}\n\n(see {where})")
    state = re.search(r"\(state: ([^)]*)\)", text)  # submitit: "... has not produced any output (state: CANCELLED)"
    name = type(error).__name__ if isinstance(error, BaseException) else "error"
    first = f"{name}: ended without a result (state: {state.group(1)})" if state else text.strip().split("\n")[0][:300]
    update_job(sweep_dir, num, overrides=list(filter_overrides(list(overrides))), state="failed", ended=_now(), error=first)


def finish_sweep() -> int:
    """After a sweep launched by this process: settle jobs that died with it, print the outcome.

    Returns the number of failed jobs (0 also when no sweep ran). A job still `running` whose process was
    this one (the basic launcher runs jobs in-process) stopped with the sweep: it is marked failed. Jobs of
    a cluster launcher keep their state (they may still run there).
    """
    global _current_sweep
    sweep_dir, _current_sweep = _current_sweep, None
    if sweep_dir is None or not sweep_dir.is_dir():
        return 0
    for job in read_jobs(sweep_dir):
        if job["state"] == "running" and job.get("pid") == os.getpid() and job.get("host") == socket.gethostname():
            update_job(sweep_dir, job["num"], state="failed", ended=_now(), error="stopped with the sweep process")
    jobs = read_jobs(sweep_dir)
    with _locked(sweep_dir):
        _write_index(sweep_dir)
    failed = [j for j in jobs if j["state"] == "failed"]
    _, own = varying_overrides(jobs)
    counts = ", ".join(f"{sum(j['state'] == s for j in jobs)} {s}" for s in STATES if any(j["state"] == s for j in jobs))
    print(
        f"wsa_lab: sweep {sweep_dir}: {len(jobs)} jobs: {counts or 'none ran'} (index: {sweep_dir / 'index.md'})",
        file=sys.stderr,
    )
    for job in failed:
        where = sweep_dir / job["folder"] / FAILED if job.get("folder") else sweep_dir / "index.json"
        print(
            f"wsa_lab: failed job #{job['num']} ({' '.join(own[job['num']])}): {job.get('error') or 'no result'} -> {where}",
            file=sys.stderr,
        )
    return len(failed)
