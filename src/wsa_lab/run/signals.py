"""Stop signals: a run stops at an iteration boundary with a checkpoint, and says how to resume.

`StopSignals` turns SIGINT (Ctrl-C), SIGTERM, SIGUSR1 and SIGUSR2 (what Slurm and submitit send before
ending a job) into a request to stop at the next iteration boundary; `train` then writes a checkpoint and
calls `StopSignals.stop()`, which hands the signal to a handler installed before (submitit's: it requeues
the job) or exits with 128 + the signal number (Ctrl-C: 130), printing one line on stderr that says how to
resume. A second Ctrl-C stops at once, without a new checkpoint (the last one stays intact).
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, Sequence

log = logging.getLogger(__name__)

REQUEUE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)  # submitit: USR2 by default (SUBMITIT_PREEMPT_SIGNAL)


def _hydra_job() -> dict[str, Any]:
    """The Hydra job running in this process: run folder, task overrides, multirun and sweep folder ({} if none)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return {}
        hc = HydraConfig.get()
        return {
            "run_dir": Path(str(hc.runtime.output_dir)), "overrides": [str(o) for o in hc.overrides.task],
            "multirun": hc.mode == RunMode.MULTIRUN, "sweep_dir": Path(str(hc.sweep.dir)).absolute(),
        }
    except Exception:  # noqa: BLE001 - no Hydra job (an in-process train(cfg)), or a partial config
        return {}


def resume_command(run_dir: str | Path, overrides: Sequence[str]) -> str:
    """`python -m wsa_lab <overrides> hydra.run.dir=<run_dir>`: the command that continues a stopped run."""
    kept = [o for o in overrides if not o.lstrip("+").startswith("hydra.run.dir=")]
    return shlex.join(["python", "-m", "wsa_lab", *kept, f"hydra.run.dir={run_dir}"])


def resume_hint(run_dir: str | Path | None = None) -> str:
    """How to continue this process's run: the command (CLI runs), the sweep to rerun (sweep jobs), or the folder."""
    job = _hydra_job()
    if job.get("multirun"):
        return f"rerun the sweep with hydra.sweep.dir={job['sweep_dir']} to resume it"
    folder = run_dir if run_dir is not None else job.get("run_dir")
    if job:
        return f"resume with: {resume_command(folder, job['overrides'])}"
    if folder is not None:
        return f"resume with the same settings and hydra.run.dir={folder}"
    return "rerun in the same folder to resume"


def _announce_here() -> bool:
    """Print the stop line here? Not in a sweep job run inside the sweep's own process: the sweep prints one."""
    job = _hydra_job()
    return not job.get("multirun") or "SUBMITIT_FOLDER" in os.environ


class CaughtSignals:
    """Context manager: while inside, `SIGNALS` call `_handle` instead of ending the process; the handlers that
    were installed before come back on exit. Handlers are only installed in the main thread (Python's rule);
    elsewhere this does nothing. Subclasses say which signals and what `_handle` does."""

    SIGNALS: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        raise NotImplementedError


class StopSignals(CaughtSignals):
    """Context manager: SIGINT / SIGTERM / SIGUSR1 / SIGUSR2 set `requested` instead of ending the process.

    The training loop checks `requested` between iterations, writes a checkpoint and calls `stop()`.
    A SIGINT that comes while a stop is already requested (a second Ctrl-C, or Ctrl-C after SIGTERM) stops
    at once instead: `Interrupted` is raised from wherever the loop is, without a new checkpoint (the
    checkpoint writer and the metrics writer leave complete files either way).

    `run_dir` (default: the Hydra job's output folder) goes into the line printed on stderr when the run stops.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, *REQUEUE_SIGNALS)

    def __init__(self, run_dir: str | Path | None = None) -> None:
        super().__init__()
        self.received: list[int] = []
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.stopped_at_once = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.stopped_at_once:
            return  # already on the way out
        if signum == signal.SIGINT and self.received:
            self.stopped_at_once = True
            self.received.append(signum)
            raise self._announce(Interrupted(signum, checkpoint=False, detail=self._at_once_detail()))
        if signum not in self.received:
            self.received.append(signum)
            again = " (Ctrl-C again: stop at once, without it)" if signum == signal.SIGINT else ""
            name = signal.Signals(signum).name
            log.warning("received %s: stopping after this iteration, with a checkpoint%s", name, again)

    @property
    def requested(self) -> bool:
        return bool(self.received)

    def _folder(self) -> Path | None:
        return self.run_dir if self.run_dir is not None else _hydra_job().get("run_dir")

    def _at_once_detail(self) -> str:
        folder = self._folder()
        if folder is None:
            return "without a new checkpoint (the last one written, if any, is intact)"
        last = folder / "checkpoints" / "last.pt"
        if last.is_file():
            return f"without a new checkpoint; the last one, {last}, is intact"
        if (last.parent / "prev.pt").is_file():
            return f"without a new checkpoint; the last one, {last.parent / 'prev.pt'}, is intact"
        return "without a checkpoint (none written yet: rerunning starts over)"

    def _announce(self, exc: "Interrupted") -> "Interrupted":
        exc.hint = resume_hint(self._folder())
        if _announce_here():
            print(f"wsa_lab: {exc}", file=sys.stderr, flush=True)
        return exc

    def stop(self) -> NoReturn:
        """After the checkpoint: let submitit requeue (its USR handler), else exit with 128 + signal."""
        previous = dict(self._previous)
        self.__exit__()
        for sig in self.received:
            handler = previous.get(sig)
            if sig in REQUEUE_SIGNALS and callable(handler):
                log.info("checkpoint written; handing %s to the job's own handler (requeue)", signal.Signals(sig).name)
                handler(sig, None)  # submitit: dumps the job, `scontrol requeue`, sys.exit(-1)
        folder = self._folder()
        where = f" in {folder / 'checkpoints' / 'last.pt'}" if folder is not None else ""
        raise self._announce(Interrupted(self.received[0], checkpoint=True, detail=f"after writing a checkpoint{where}"))


class Interrupted(SystemExit):
    """Training stopped on a signal (after writing a checkpoint unless `checkpoint` is False); rerunning resumes.

    The exit code is 128 + the signal number (SIGINT 130, SIGTERM 143), as a shell reports a process killed by it.
    """

    def __init__(self, signum: int, checkpoint: bool = True, detail: str = "", hint: str = "") -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.checkpoint = checkpoint
        self.detail = detail or ("checkpoint written" if checkpoint else "without a new checkpoint")
        self.hint = hint or "rerun in the same folder to resume"

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        how = f"by {name}" if self.checkpoint else f"at once by a second {name}"
        return f"run stopped {how} {self.detail}; {self.hint}"
