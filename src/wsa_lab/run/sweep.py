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
- `finish_sweep()` (called by the `wsa_lab` sweeper when the sweep ends) prints one line per failed, interrupted
  or refused job; the process then exits non-zero.
- `SweepIndex` also opens the run folder (`RunFolder`, its lock): for a single run in `on_run_start`, before
  Hydra writes anything into the folder (a second process into a folder a live run holds stops there with one
  line, exit code 1); for a sweep job in `on_job_start` (a job whose folder is held leaves the holder's index
  entry and folder alone; `train` then refuses it). The lock is held once per process, so `train`'s own
  `RunFolder` in the same process takes nothing more.

The callback is configured in `conf/config.yaml` (`hydra.callbacks.sweep_index`).
"""

from __future__ import annotations

import contextlib
import io
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

import filelock
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from wsa_lab.errors import RunFolderBusyError, WsaLabError, exit_with_one_line
from wsa_lab.run.atomic import output_error, write_text_atomic
from wsa_lab.run.folder import RunFolder
from wsa_lab.run.lock import NO_FLOCK, slurm_job
from wsa_lab.run.reader import run_state

JOBS = ".jobs"
FAILED = "FAILED"
STATES = ("pending", "running", "done", "failed", "interrupted")
WHERE = "hydra.sweep.dir"  # what to change when the sweep folder cannot be written


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


@contextlib.contextmanager
def _locked(sweep_dir: Path) -> Iterator[None]:
    """Serialise the index rebuilds of every process of a sweep (waits for the others)."""
    lock: filelock.FileLock | None = filelock.FileLock(sweep_dir / JOBS / ".lock", thread_local=False)
    try:
        (sweep_dir / JOBS).mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except OSError as exc:
        if exc.errno not in NO_FLOCK:
            raise output_error(sweep_dir / JOBS / ".lock", exc, WHERE) or exc from exc
        lock = None  # a file system without locks: rebuilds may race, each one is still complete
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


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


def job_error(job_return: JobReturn) -> BaseException | None:
    """The exception a failed job raised (None if it did not fail). Hydra's `JobReturn.return_value` raises it
    after writing a line of its own on stderr; that line is silenced: wsa_lab reports the failure itself."""
    if job_return.status != JobStatus.FAILED:
        return None
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            job_return.return_value
        except BaseException as exc:  # noqa: BLE001 - whatever the job raised
            return exc
    return None


def failed_return(overrides: Sequence[str], error: BaseException) -> JobReturn:
    """A launcher's JobReturn for a job that produced none (killed, cancelled, ...)."""
    job_return = JobReturn(overrides=list(overrides), status=JobStatus.FAILED)
    job_return.return_value = error
    return job_return


class SweepIndex(Callback):
    """Keeps `index.json`/`index.md` of a sweep, writes `FAILED` markers and opens each run folder (its lock)
    before Hydra or the run writes into it (see the module docstring)."""

    def __init__(self) -> None:
        self.folders: dict[str, RunFolder] = {}  # run/job folder -> the RunFolder this process opened

    def __getstate__(self) -> dict[str, Any]:
        """Without the open folders: their locks belong to this process (submitit pickles Hydra's callbacks with
        the launcher when it requeues a job; the next attempt opens the folder again)."""
        return {**self.__dict__, "folders": {}}

    def _open(self, folder: Path, hint: str) -> None:
        key = os.path.abspath(folder)
        if key not in self.folders:
            self.folders[key] = RunFolder(key, hint).open()

    def _close(self, folder: Path) -> None:
        opened = self.folders.pop(os.path.abspath(folder), None)
        if opened is not None:
            opened.close()

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            folder = Path(os.path.abspath(str(config.hydra.run.dir)))
        except Exception:  # noqa: BLE001 - a run dir that needs Hydra's runtime: locked in on_job_start instead
            return
        try:
            self._open(folder, "choose another hydra.run.dir")
        except WsaLabError as exc:  # busy, or the disk is full / read-only
            exit_with_one_line("wsa_lab", exc)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        with contextlib.suppress(Exception):
            self._close(Path(str(config.hydra.runtime.output_dir)))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        with _locked(sweep_dir):
            _write_index(sweep_dir)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(str(config.hydra.runtime.output_dir))
        multirun = config.hydra.mode == RunMode.MULTIRUN
        try:
            self._open(folder, "choose another hydra.sweep.dir" if multirun else "choose another hydra.run.dir")
        except WsaLabError as exc:
            if not multirun:
                exit_with_one_line("wsa_lab", exc)
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
            host=socket.gethostname(), pid=os.getpid(), slurm_job_id=slurm_job(), log=_submitit_log(sweep_dir),
            error=None,
        )

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        folder = Path(str(config.hydra.runtime.output_dir))
        multirun = config.hydra.mode == RunMode.MULTIRUN
        if multirun and os.path.abspath(folder) not in self.folders:  # refused in on_job_start: another's job
            return  # the sweeper reports it (`refusal`)
        overrides = list(filter_overrides(list(config.hydra.overrides.task)))
        exc = job_error(job_return)
        if exc is not None:
            write_failure(folder, overrides, "".join(traceback.format_exception(exc)))
        if multirun:
            update_job(
                Path(str(config.hydra.sweep.dir)).absolute(), int(config.hydra.job.num),
                state="failed" if exc is not None else "done", ended=_now(),
                error=_one_line(exc) if exc is not None else None,
            )
            self._close(folder)


def refusal(num: int, job_return: JobReturn) -> str | None:
    """`job #N was not run: <why>` for a job refused because another live process holds its folder, else None."""
    exc = job_error(job_return)
    return f"job #{num} was not run: {exc}" if isinstance(exc, RunFolderBusyError) else None


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


class SweepStopped(SystemExit):
    """A launcher stopped the sweep on a signal and printed its outcome itself; exits 128 + the signal."""


def finish_sweep(sweep_dir: Path, refused: Sequence[str] = ()) -> int:
    """After a sweep launched by this process: settle jobs that died with it, print the outcome (`refused`: one
    line per job another live process's folder lock refused).

    Returns the number of jobs that need another run: failed, interrupted or refused (0 also when the sweep
    folder is missing). A job still `running` whose process was this one (the basic launcher runs jobs in-process) stopped
    with the sweep: `interrupted` when its folder says it stopped on a signal with a checkpoint (then the one
    line of an interrupted sweep is printed), else `failed`. Jobs of a cluster launcher keep their state (they
    may still run there).
    """
    if not sweep_dir.is_dir():
        return 0
    stopped_here = 0
    for job in read_jobs(sweep_dir):
        if job["state"] == "running" and job.get("pid") == os.getpid() and job.get("host") == socket.gethostname():
            state = run_state(sweep_dir / job["folder"]) if job.get("folder") else {}
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
