"""The controller of one `hydra/launcher=local_parallel` job: submitit's local controller, plus two things.

- SIGINT is forwarded to the job like SIGTERM (submitit's would die of it and SIGKILL the job a second later).
  The launcher starts each controller in a session of its own, so a Ctrl-C in the terminal reaches only the
  submitting process, which decides what the jobs get.
- How the job's process ended (its exit code; negative: the signal that killed it) is written to
  `<job folder>/<job id>_exit.json`, so the launcher can say "killed by signal 9 (SIGKILL)" instead of
  submitit's `state: FINISHED` (its controller exits 0 whatever happened to the job).

Run as `python -m hydra_plugins.wsa_lab_launcher._controller <submitit folder>` (see `launchers.py`).
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from submitit.core import utils
from submitit.local.local import Controller

from wsa_lab.run.atomic import write_text_atomic


def exit_file(folder: str | Path, job_id: str) -> Path:
    return utils.JobPaths(folder, job_id, 0).folder / f"{job_id}_exit.json"


class ReportingController(Controller):
    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        signal.signal(signal.SIGINT, signal.getsignal(signal.SIGTERM))  # the base class's: forward to the job
        self.exit_codes: list[Any] = []

    def wait(self, freq: int = 24) -> Sequence[Optional[int]]:
        self.exit_codes = list(super().wait(freq))  # of the last attempt (a requeue starts another)
        return self.exit_codes

    def run(self, max_retry: int = 6) -> None:
        try:
            super().run(max_retry)
        finally:
            path = exit_file(self.folder, self.pid)
            with contextlib.suppress(OSError):  # the launcher then reports submitit's state instead
                path.parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(path, json.dumps({"exit_codes": self.exit_codes}) + "\n")


if __name__ == "__main__":
    assert len(sys.argv) == 2, "Usage: python -m hydra_plugins.wsa_lab_launcher._controller <submitit_folder>"
    ReportingController(Path(sys.argv[1])).run()
