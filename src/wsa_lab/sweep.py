"""Sweep bookkeeping: an index of every job, failure markers, a closing line that names failed jobs, and the
run folder lock of every run (single or sweep job).

- `<sweep dir>/index.json` and `index.md` list each job: number, overrides, folder, state
  (`pending` -> `running` -> `done` | `failed` | `interrupted`), attempts (a Slurm requeue is a second attempt),
  host, Slurm job id and log file. They are rebuilt from one small record per job,
  `<sweep dir>/.jobs/<num>.json`, which whoever knows the job's state writes: the job itself (`SweepIndex`
  callback, also inside a Slurm task), or the launcher (a job killed before it could say so). A lock file
  serialises the rebuilds.
- A failed job's folder gets `FAILED`: its overrides and the traceback (any failed run gets one, sweep or not).
- `interrupted`: stopped by a signal (Ctrl-C on the sweep, SIGTERM) with a checkpoint, or killed after the
  launcher's grace period; rerunning the sweep with `hydra.sweep.dir=<sweep dir>` resumes it.
- `finish_sweep()` (called by `python -m wsa_lab` on exit) prints one line per failed or interrupted job; the
  process then exits non-zero.
- `SweepIndex` also takes the run folder's lock (`wsa_lab.runlock`): for a single run in `on_run_start`,
  before Hydra writes anything into the folder (a second process into a folder a live run holds stops there
  with one line, exit code 1); for a sweep job in `on_job_start` (a job whose folder is held leaves the
  holder's index entry and folder alone; `train` then refuses it).

The callback is configured in `conf/config.yaml` (`hydra.callbacks.sweep_index`).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
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

from wsa_lab.errors import RunFolderBusyError, WsaLabError
from wsa_lab.files import output_error, write_text_atomic
from wsa_lab.runlock import RunLock

JOBS = ".jobs"
FAILED = "FAILED"
STATES = ("pending", "running", "done", "failed", "interrupted")
WHERE = "hydra.sweep.dir"  # what to change when the sweep folder cannot be written

_current_sweep: Path | None = None  # the sweep this process launched (set in on_multirun_start)
_locks: dict[str, RunLock] = {}  # run/job folder -> the lock this process holds on it (SweepIndex callback)
_refused: list[str] = []  # jobs of this process refused because another process holds their folder


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


@contextlib.contextmanager
def _locked(sweep_dir: Path) -> Iterator[None]:
    try:
        (sweep_dir / JOBS).mkdir(parents=True, exist_ok=True)
        lock = open(sweep_dir / JOBS / ".lock", "a")
    except OSError as exc:
        error = output_error(sweep_dir / JOBS / ".lock", exc, WHERE)
        raise (error or exc) from exc
    with lock:
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
        write_text_atomic(path, json.dumps(record, indent=1, sort_keys=True) + "\n", WHERE)
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
    write_text_atomic(sweep_dir / "index.json", json.dumps(index, indent=1, sort_keys=True) + "\n", WHERE)
    common, own = varying_overrides(jobs)
    lines = [
        f"# Sweep `{sweep_dir}`",
        "",
        f"Updated {index['updated']}: " + (", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no jobs yet") + ".",
        "",
        f"Every job: `{' '.join(common)}`" if common else "",
        "",
        "| # | state | overrides | folder | attempts | job log | error / why it stopped |",
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
    write_text_atomic(sweep_dir / "index.md", "\n".join(lines) + "\n", WHERE)


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
        return f"{type(exc).__name__}: {first}"  # whole: wsa_lab's messages are one line
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else ""


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


def _lock_folder(folder: Path, hint: str) -> None:
    """Take (or keep) this process's lock on a run/job folder; RunFolderBusyError if a live process holds it."""
    key = os.path.abspath(folder)
    if key not in _locks:
        _locks[key] = RunLock(folder, hint=hint).acquire()


@atexit.register
def _unlock_all() -> None:
    """A run that ends by SystemExit (a signal's exit code, a refusal) skips Hydra's end callbacks."""
    for key in list(_locks):
        with contextlib.suppress(Exception):
            _locks.pop(key).release()


def _unlock_folder(folder: Path) -> None:
    lock = _locks.pop(os.path.abspath(folder), None)
    if lock is not None:
        lock.release()


def _refuse_run(exc: WsaLabError) -> None:
    """A single run into a folder a live run holds (or that cannot be written): one line, exit code 1
    (HYDRA_FULL_ERROR=1: the traceback)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise exc
    print(f"wsa_lab: error: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(1) from None


def run_folder_state(folder: str | Path) -> dict[str, Any]:
    """What a run folder says about its run: `status` and `global_step` (summary.json), `checkpoint` (newest file)."""
    folder = Path(folder)
    try:
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        summary = {}
    checkpoint = next((p for p in (folder / "checkpoints" / n for n in ("last.pt", "prev.pt")) if p.is_file()), None)
    return {"status": summary.get("status"), "global_step": summary.get("global_step"), "checkpoint": checkpoint}


class SweepIndex(Callback):
    """Keeps `index.json`/`index.md` of a sweep, writes `FAILED` markers and takes each run folder's lock
    (see the module docstring)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            folder = Path(os.path.abspath(str(config.hydra.run.dir)))
        except Exception:  # noqa: BLE001 - a run dir that needs Hydra's runtime: locked in on_job_start instead
            return
        try:
            _lock_folder(folder, "choose another hydra.run.dir")
        except WsaLabError as exc:  # busy, or the disk is full / read-only
            _refuse_run(exc)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        with contextlib.suppress(Exception):
            _unlock_folder(Path(str(config.hydra.runtime.output_dir)))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _current_sweep
        _current_sweep = Path(str(config.hydra.sweep.dir)).absolute()
        _current_sweep.mkdir(parents=True, exist_ok=True)
        with _locked(_current_sweep):
            _write_index(_current_sweep)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(str(config.hydra.runtime.output_dir))
        multirun = config.hydra.mode == RunMode.MULTIRUN
        try:
            _lock_folder(folder, "choose another hydra.sweep.dir" if multirun else "choose another hydra.run.dir")
        except WsaLabError as exc:
            if not multirun:
                _refuse_run(exc)
            if not isinstance(exc, RunFolderBusyError):
                raise
            # another process runs this job: leave its folder and index entry alone; `train` refuses this one
            logging.getLogger(__name__).error("job #%s not started: %s", config.hydra.job.num, exc)
            return
        (folder / FAILED).unlink(missing_ok=True)  # from an earlier attempt of this job
        if not multirun:
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
        multirun = config.hydra.mode == RunMode.MULTIRUN
        if multirun and os.path.abspath(folder) not in _locks:  # refused in on_job_start: not this process's job
            exc = job_return._return_value
            _refused.append(f"job #{config.hydra.job.num} was not run: {exc}")
            return
        overrides = list(filter_overrides(list(config.hydra.overrides.task)))
        failed = job_return.status != JobStatus.COMPLETED
        error = None
        if failed:
            exc = job_return._return_value
            text = "".join(traceback.format_exception(exc)) if isinstance(exc, BaseException) else str(exc)
            write_failure(folder, overrides, text)
            error = _one_line(exc)
        if multirun:
            update_job(
                Path(str(config.hydra.sweep.dir)).absolute(), int(config.hydra.job.num),
                state="failed" if failed else "done", ended=_now(), error=error,
            )
            _unlock_folder(folder)


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
    first = f"{name}: ended without a result (state: {state.group(1)})" if state else text.strip().split("\n")[0]
    update_job(sweep_dir, num, overrides=list(filter_overrides(list(overrides))), state="failed", ended=_now(), error=first)


def record_interrupted_job(sweep_dir: str | Path, num: int, why: str) -> None:
    """A job stopped by a signal (the sweep's Ctrl-C, SIGTERM): rerunning the sweep resumes it."""
    update_job(sweep_dir, num, state="interrupted", ended=_now(), error=why)


def note_refused(message: str) -> None:
    """A launcher's report of a job refused because another live process holds its folder."""
    _refused.append(message)


def interrupted_line(sweep_dir: Path, stopped: int, killed: int = 0, not_started: int = 0, grace_s: float = 0) -> str:
    """The one line a stopped sweep prints: what happened to its jobs and how to resume them."""
    parts = [f"{stopped} job{'s' * (stopped != 1)} stopped with a checkpoint"]
    if killed:
        parts.append(
            f"{killed} killed after the {grace_s:.0f} s grace period (resuming from their last periodic checkpoint)"
        )
    if not_started:
        parts.append(f"{not_started} not started")
    return (
        f"wsa_lab: sweep interrupted: {', '.join(parts)}; rerun the same command with hydra.sweep.dir={sweep_dir} to "
        f"resume them (index: {sweep_dir / 'index.md'})"
    )


def end_sweep_report() -> None:
    """A launcher has printed the sweep's outcome itself (an interrupted sweep): `finish_sweep` stays quiet."""
    global _current_sweep
    _current_sweep = None
    _refused.clear()


def finish_sweep() -> int:
    """After a sweep launched by this process: settle jobs that died with it, print the outcome.

    Returns the number of jobs that need another run: failed, interrupted or refused (0 also when no sweep
    ran). A job still `running` whose process was this one (the basic launcher runs jobs in-process) stopped
    with the sweep: `interrupted` when its folder says it stopped on a signal with a checkpoint (then the one
    line of an interrupted sweep is printed), else `failed`. Jobs of a cluster launcher keep their state (they
    may still run there).
    """
    global _current_sweep
    sweep_dir, _current_sweep = _current_sweep, None
    refused, _refused[:] = list(_refused), []
    if sweep_dir is None or not sweep_dir.is_dir():
        return 0
    stopped_here = 0
    for job in read_jobs(sweep_dir):
        if job["state"] == "running" and job.get("pid") == os.getpid() and job.get("host") == socket.gethostname():
            state = run_folder_state(sweep_dir / job["folder"]) if job.get("folder") else {}
            if state.get("status") == "interrupted":
                stopped_here += 1
                record_interrupted_job(
                    sweep_dir, job["num"], f"stopped by a signal with a checkpoint at global_step {state['global_step']}"
                )
            else:
                update_job(sweep_dir, job["num"], state="failed", ended=_now(), error="stopped with the sweep process")
    jobs = read_jobs(sweep_dir)
    with _locked(sweep_dir):
        _write_index(sweep_dir)
    if stopped_here:
        not_started = sum(j["state"] == "pending" for j in jobs)
        print(interrupted_line(sweep_dir, stopped_here, not_started=not_started), file=sys.stderr)
        return stopped_here
    failed = [j for j in jobs if j["state"] == "failed"]
    interrupted = [j for j in jobs if j["state"] == "interrupted"]
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
    for job in interrupted:
        print(
            f"wsa_lab: interrupted job #{job['num']} ({' '.join(own[job['num']])}): {job.get('error') or 'stopped'}; "
            f"rerun with hydra.sweep.dir={sweep_dir} to resume it",
            file=sys.stderr,
        )
    for line in refused:
        print(f"wsa_lab: {line}", file=sys.stderr)
    return len(failed) + len(interrupted) + len(refused)
