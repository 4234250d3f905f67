"""`hydra/sweeper=wsa_lab` (the default of `python -m wsa_lab -m`): Hydra's basic sweeper, minus the traceback.

Hydra's basic sweeper ends a sweep by re-raising the first failed job's exception, which prints its traceback on
screen. wsa_lab has already recorded every failure (`<job folder>/FAILED` holds the traceback, the sweep index
the state) and `python -m wsa_lab` ends with one line per failed job and exit code 1 (`wsa_lab.sweep`), so here a
failed job's result is handed back without being raised. Grids (`hydra.sweeper.params`) work as with `basic`.
"""

from __future__ import annotations

from typing import Any, Sequence

from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper


class _Quiet(Launcher):
    """The sweep's launcher, its failed results marked done so that the basic sweeper does not raise them."""

    def __init__(self, launcher: Launcher) -> None:
        self.launcher = launcher
        self.failed: list[JobReturn] = []

    def setup(self, **kwargs: Any) -> None:  # pragma: no cover - the wrapped launcher is set up already
        self.launcher.setup(**kwargs)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        results = self.launcher.launch(job_overrides, initial_job_idx)
        for result in results:
            if result.status == JobStatus.FAILED:
                self.failed.append(result)
                result.status = JobStatus.COMPLETED  # its value is the exception; wsa_lab.sweep reports it
        return results


class WsaLabSweeper(BasicSweeper):
    def setup(self, *args: Any, **kwargs: Any) -> None:
        super().setup(*args, **kwargs)
        self.launcher = _Quiet(self.launcher)
