"""Hydra launchers for `conf/hydra/launcher/{slurm,local_parallel}.yaml`, built on hydra-submitit-launcher.

Upstream's launcher (1.2.0) waits for the jobs in order and raises at the first one that ended without a
result (killed, cancelled, time limit), leaving the others unwatched. These wait for every job, turn a job
without a result into a failed `JobReturn`, and record it in the sweep index (`wsa_lab.run.sweep`). They
subclass upstream's launcher (its job side: the task runs as upstream runs it) and replace only its `launch`:

- `SlurmLauncher`: one Slurm job array per sweep (`array_parallelism` at once). Each array task re-reads
  the config from disk and re-runs `train`, which resumes from the job folder's checkpoint after a requeue.
- `LocalParallelLauncher`: jobs as processes on this machine, at most `max_parallel` at once
  (upstream's `submitit_local` starts them all together). Each job's controller runs in a session of its own
  (`_controller.py`), so Ctrl-C reaches only the submitting process; on SIGINT/SIGTERM it sends its running
  jobs SIGTERM (each writes a checkpoint at the end of its iteration and ends `interrupted`), waits
  `stop_grace_s`, kills what is left (a second Ctrl-C: the jobs stop at once; a third: killed now), marks the
  jobs in the index, prints one line and exits 128 + the signal (Ctrl-C: 130). A job killed by a signal is
  reported as such ("killed by signal 9 (SIGKILL)"), not as submitit's `state: FINISHED`.
- On Ctrl-C the `slurm` launcher only stops waiting: the jobs go on on the cluster (the index keeps their
  true state); it prints how to follow and cancel them and exits 130.

Both set torch's thread count to `cpus_per_task` inside each job when it is set. Neither upstream's
`submitit_local` nor `hydra-joblib-launcher` limits the jobs running at once while keeping the Ctrl-C behaviour
above (joblib's workers share the terminal's process group and report no killing signal), hence `local_parallel`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import OmegaConf

from wsa_lab.run import sweep
from wsa_lab.run.lock import describe, holder_of
from wsa_lab.run.reader import run_state
from wsa_lab.run.signals import CaughtSignals

log = logging.getLogger(__name__)


class JobKilledError(RuntimeError):
    """A local job's process ended without a result: killed by a signal, or exited before writing one."""


def describe_exit(code: int | None) -> str:
    """`killed by signal 9 (SIGKILL), exit code -9` / `exit code 1` / `did not end (timed out)`."""
    if code is None:
        return "did not end in time (timed out, then killed)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by signal {-code} ({name}), exit code {code}"
    if code > 128:
        try:
            return f"exit code {code} (128 + {signal.Signals(code - 128).name})"
        except ValueError:
            pass
    return f"exit code {code}"


class _StopRequest(CaughtSignals):
    """SIGINT / SIGTERM in the submitting process, counted instead of ending it (main thread only)."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what
        self.signals: list[int] = []
        self.raise_on_first = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signals.append(signum)
        if len(self.signals) == 1:
            log.warning("received %s: %s", signal.Signals(signum).name, self.what)
        if self.raise_on_first:
            raise _Stopped(signum)

    @property
    def requested(self) -> bool:
        return bool(self.signals)


class _Stopped(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _WaitForAll(BaseSubmititLauncher):
    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:  # runs inside the job
        cpus = self.params.get("cpus_per_task")
        if cpus:
            import torch

            torch.set_num_threads(int(cpus))
        return super().__call__(*args, **kwargs)

    def _executor(self) -> Any:
        """submitit's executor with this launcher's parameters (as upstream's `launch` builds it)."""
        import submitit

        specific_init_keys = {"max_num_timeout"}
        init_params = {"folder": self.params["submitit_folder"]}
        init_params.update({f"{self._EXECUTOR}_{k}": v for k, v in self.params.items() if k in specific_init_keys})
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init_params)
        baseparams = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{
            k if k in baseparams else f"{self._EXECUTOR}_{k}": v
            for k, v in self.params.items()
            if k not in specific_init_keys | {"submitit_folder"}
        })
        return executor

    def _prepare(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> tuple[Path, list[tuple]]:
        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
        params = []
        records = {r["num"]: r for r in sweep.read_jobs(sweep_dir)}
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            record = records.get(idx, {})
            holder = holder_of(sweep_dir / record["folder"]) if record.get("folder") else None
            if holder is not None:  # rerun while the job still runs elsewhere: its entry stays true; it refuses this one
                log.warning("job #%d is still running (%s); its index entry is left as it is", idx, describe(holder))
            else:
                sweep.update_job(sweep_dir, idx, overrides=list(filter_overrides(overrides)), state="pending")
            params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        return sweep_dir, params

    def _collect(self, job: Any, sweep_dir: Path, num: int, overrides: Sequence[str]) -> JobReturn:
        """The job's own JobReturn, or a failed one when it produced no result."""
        try:
            ret = job.results()[0]
        except Exception as exc:  # UncompletedJobError (killed, cancelled, ...), FailedJobError
            log.error("job #%d (%s) ended without a result: %s", num, job.job_id, str(exc).splitlines()[0])
            sweep.record_lost_job(sweep_dir, num, overrides, exc)
            return sweep.failed_return(overrides, exc)
        return ret


class SlurmLauncher(_WaitForAll):
    _EXECUTOR = "slurm"

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        sweep_dir, params = self._prepare(job_overrides, initial_job_idx)
        jobs: list[Any] = []
        stop = _StopRequest("the Slurm jobs go on; stopping to wait for them")
        stop.raise_on_first = True  # waiting happens inside submitit (sleeps, sacct calls): leave it at once
        try:
            with stop:
                jobs = self._executor().map_array(self, *zip(*params))
                log.info("submitted Slurm job array %s; waiting for %d jobs", jobs[0].job_id.split("_")[0], len(jobs))
                return [
                    self._collect(job, sweep_dir, idx, overrides)
                    for idx, (job, overrides) in enumerate(zip(jobs, job_overrides), start=initial_job_idx)
                ]
        except (_Stopped, KeyboardInterrupt) as exc:
            signum = exc.signum if isinstance(exc, _Stopped) else signal.SIGINT
            self._left_running(sweep_dir, jobs, len(job_overrides), signum)

    def _left_running(self, sweep_dir: Path, jobs: list[Any], count: int, signum: int) -> NoReturn:
        """Ctrl-C on the submitting process: the jobs are the cluster's now; say how to follow and cancel them."""
        if jobs:
            array = jobs[0].job_id.split("_")[0]
            line = (
                f"wsa_lab: stopped waiting; the {count} jobs of Slurm array {array} go on on the cluster and fill in "
                f"{sweep_dir} (index: {sweep_dir / 'index.md'}); follow them with `squeue -j {array}`, "
                f"cancel them with `scancel {array}`"
            )
        else:
            line = (
                f"wsa_lab: stopped while submitting the sweep; check `squeue --me --name={self.params.get('name')}` "
                f"for jobs that were submitted (`scancel <id>` cancels them); the index is {sweep_dir / 'index.md'}"
            )
        print(line, file=sys.stderr, flush=True)
        raise sweep.SweepStopped(128 + signum)


def _session_local_executor(folder: str) -> Any:
    """submitit's LocalExecutor, with each job's controller (`_controller.py`) in a session of its own.

    Built on first use: plugin discovery imports this module for every run, and submitit only matters here."""
    from submitit.local.local import LocalExecutor, LocalJob

    class SessionLocalExecutor(LocalExecutor):
        def _submit_command(self, command: str) -> Any:  # submitit's hook that starts a job's controller
            ntasks = self.parameters.get("tasks_per_node", 1)
            n_gpus = self.parameters.get("gpus_per_node", 0)
            visible_gpus = self.parameters.get("visible_gpus", ())
            gpus = range(n_gpus) if visible_gpus == () else visible_gpus[:n_gpus]
            env = dict(os.environ)
            env.update(  # as submitit's start_controller
                SUBMITIT_LOCAL_NTASKS=str(ntasks),
                SUBMITIT_LOCAL_COMMAND=command,
                SUBMITIT_LOCAL_TIMEOUT_S=str(int(60 * self.parameters.get("timeout_min", 2.0))),
                SUBMITIT_LOCAL_SIGNAL_DELAY_S=str(int(self.parameters.get("signal_delay_s", 30))),
                SUBMITIT_LOCAL_NODEID="0",
                SUBMITIT_LOCAL_JOB_NUM_NODES="1",
                SUBMITIT_STDERR_TO_STDOUT="1" if self.parameters.get("stderr_to_stdout", False) else "",
                SUBMITIT_EXECUTOR="local",
                CUDA_VISIBLE_DEVICES=",".join(str(k) for k in gpus),
                SUBMITIT_LOCAL_WITH_SHELL="1" if self.parameters.get("setup", ()) else "",
            )
            cmd: Any = [sys.executable, "-m", "hydra_plugins.wsa_lab_launcher._controller", str(self.folder)]
            setup = list(self.parameters.get("setup", ()))
            if setup:
                cmd = " && ".join([*setup, shlex.join(cmd)])
            process = subprocess.Popen(cmd, shell=bool(setup), env=env, start_new_session=True)  # noqa: S603
            return LocalJob(folder=self.folder, job_id=str(process.pid), process=process, tasks=list(range(ntasks)))

    return SessionLocalExecutor(folder)


# A local job's id is its controller's pid; the controller leads a session of its own (see above).
def _running(job: Any) -> bool:
    return not job.done()


def _signal_job(job: Any, sig: int) -> None:
    """Send `sig` to a local job's controller (it forwards SIGTERM/SIGINT to the job's process)."""
    if _running(job):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(job.job_id), sig)


def _kill_job(job: Any) -> None:
    """SIGKILL a local job's controller and everything in its session (the job's process), and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(int(job.job_id), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _running(job) and time.monotonic() < deadline:
        time.sleep(0.05)


def _task_exit(job: Any) -> int | None | str:
    """How the job's process ended, as its controller recorded it ('unknown' when it did not)."""
    try:
        codes = json.loads((job.paths.folder / f"{job.job_id}_exit.json").read_text())["exit_codes"]
    except (OSError, ValueError, KeyError):
        return "unknown"
    return codes[0] if codes else "unknown"


def _remove_literal_job_folder(folder: str) -> None:
    """submitit's local executor leaves an empty folder named like the template (`.submitit/%j`): remove it."""
    literal = Path(str(folder))
    if "%j" in literal.name and literal.is_dir() and not any(literal.iterdir()):
        literal.rmdir()


class LocalParallelLauncher(_WaitForAll):
    _EXECUTOR = "local"

    def __init__(self, max_parallel: int = 2, poll_s: float = 0.5, stop_grace_s: float = 60.0, **params: Any) -> None:
        if int(max_parallel) < 1:
            raise ValueError(f"hydra.launcher.max_parallel must be >= 1, got {max_parallel}")
        if float(stop_grace_s) < 0:
            raise ValueError(f"hydra.launcher.stop_grace_s must be >= 0, got {stop_grace_s}")
        super().__init__(**params)
        self.max_parallel, self.poll_s, self.stop_grace_s = int(max_parallel), float(poll_s), float(stop_grace_s)

    def _executor(self) -> Any:
        executor = _session_local_executor(self.params["submitit_folder"])
        executor.update_parameters(**{k: v for k, v in self.params.items() if k != "submitit_folder" and v is not None})
        return executor

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        sweep_dir, params = self._prepare(job_overrides, initial_job_idx)
        executor = self._executor()
        waiting = list(enumerate(params, start=initial_job_idx))
        running: dict[int, Any] = {}
        returns: dict[int, JobReturn] = {}
        what = (
            f"stopping the running jobs (each writes a checkpoint; at most {self.stop_grace_s:.0f} s; "
            "Ctrl-C again: at once)"
        )
        with _StopRequest(what) as stop:
            while (waiting or running) and not stop.requested:
                while waiting and len(running) < self.max_parallel and not stop.requested:
                    idx, job_params = waiting.pop(0)
                    running[idx] = executor.submit(self, *job_params)
                for idx, job in list(running.items()):
                    if job.done():
                        returns[idx] = self._collect(job, sweep_dir, idx, job_overrides[idx - initial_job_idx])
                        del running[idx]
                if waiting or running:
                    time.sleep(self.poll_s)
            if stop.requested:
                self._stop(stop, sweep_dir, running, len(waiting), job_overrides, initial_job_idx)
        _remove_literal_job_folder(self.params["submitit_folder"])
        return [returns[idx] for idx in sorted(returns)]

    def _collect(self, job: Any, sweep_dir: Path, num: int, overrides: Sequence[str]) -> JobReturn:
        """As the base class, but a job whose process ended without a result is reported by how it ended (exit
        code, killing signal) at once, instead of after submitit's wait for a result file."""
        if _running(job) or job.paths.result_pickle.exists():
            return super()._collect(job, sweep_dir, num, overrides)
        code = _task_exit(job)
        record = {r["num"]: r for r in sweep.read_jobs(sweep_dir)}.get(num, {})
        folder = run_state(sweep_dir / record["folder"]) if record.get("folder") else {}
        how = describe_exit(code) if code != "unknown" else f"ended without a result (state: {job.state})"
        if folder.get("status") == "interrupted" and record.get("state") == "running":  # e.g. someone's `kill <pid>`
            sweep.record_interrupted_job(sweep_dir, num, f"stopped by a signal with a checkpoint ({how})")
            exc: Exception = JobKilledError(f"job #{num} {how}; it stopped with a checkpoint")
        else:
            exc = JobKilledError(f"job #{num} {how}: it ended without a result")
            log.error("job #%d (%s) %s", num, job.job_id, how)
            sweep.record_lost_job(sweep_dir, num, overrides, f"{how}: the job ended without a result")
        return sweep.failed_return(overrides, exc)

    def _stop(
        self, stop: _StopRequest, sweep_dir: Path, running: dict[int, Any], not_submitted: int,
        job_overrides: Sequence[Sequence[str]], initial_job_idx: int,
    ) -> NoReturn:
        """Stop the running jobs (SIGTERM, then SIGKILL after the grace period), mark them, print one line, exit."""
        signum = stop.signals[0]
        for job in running.values():
            _signal_job(job, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace_s
        seen = 1
        while any(_running(job) for job in running.values()) and time.monotonic() < deadline:
            if len(stop.signals) > seen:
                seen = len(stop.signals)
                if seen > 2:
                    break  # a third Ctrl-C: kill them now
                name = signal.Signals(stop.signals[-1]).name
                log.warning("second %s: the jobs stop at once, without a new checkpoint", name)
                for job in running.values():
                    _signal_job(job, signal.SIGINT)  # a SIGINT after SIGTERM: train stops at once
                deadline = min(deadline, time.monotonic() + 10)
            time.sleep(0.1)
        killed = {idx for idx, job in running.items() if _running(job)}
        for idx in killed:
            _kill_job(running[idx])

        stopped = killed_count = 0
        not_started = not_submitted
        records = {r["num"]: r for r in sweep.read_jobs(sweep_dir)}
        for idx, job in running.items():
            overrides = job_overrides[idx - initial_job_idx]
            record = records.get(idx, {})
            if idx not in killed and job.paths.result_pickle.exists():
                super()._collect(job, sweep_dir, idx, overrides)  # it ended meanwhile: its own result
                continue
            if record.get("state") != "running" or not record.get("folder"):
                not_started += 1  # stopped before it reached training: still `pending`
                continue
            state = run_state(sweep_dir / record["folder"])
            resumes = f"resumes from {state['checkpoint']}" if state["checkpoint"] else "no checkpoint yet: starts over"
            if idx in killed:
                killed_count += 1
                why = f"killed after the {self.stop_grace_s:.0f} s grace period; {resumes}"
            elif state["status"] == "interrupted":
                stopped += 1
                why = (
                    f"stopped by the sweep's {signal.Signals(signum).name} with a checkpoint at global_step "
                    f"{state['global_step']}"
                )
            else:
                code = _task_exit(job)
                why = f"stopped ({describe_exit(code) if code != 'unknown' else 'no exit code'}); {resumes}"
            sweep.record_interrupted_job(sweep_dir, idx, why)
        print(
            sweep.interrupted_line(sweep_dir, stopped, killed_count, not_started, self.stop_grace_s),
            file=sys.stderr, flush=True,
        )
        raise sweep.SweepStopped(128 + signum)
