"""`metrics.jsonl` + `summary.json`: the run folder's own record, the source of truth offline.

`MetricsWriter` appends one line per `log` call with a single `write` on an `O_APPEND` descriptor, so a line
is either in the file or not (a process killed mid-call leaves at most a torn last line, which resume drops).
Before each line it checks that `metrics.jsonl` is still the file it opened: one deleted or replaced while
the run writes (a user's `rm`, an editor's save, a sync tool) is noticed, reported once and reopened, so the
later lines land in the file at that path instead of vanishing into a deleted one. A disk-full, quota or
read-only error is one line (`OutputFolderError`), with the file cut back to its last complete line.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping

from wsa_lab.run.atomic import output_error, write_text_atomic

log = logging.getLogger(__name__)


def _clean(value: Any) -> Any:
    """JSON has no NaN/Inf: write them as null so every line stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsWriter:
    """Appends one JSON object per `log` call to `metrics.jsonl`: `{"global_step": s, "<key>": value, ...}`."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self.reopened = 0  # how many times the file was found deleted or replaced and reopened
        self._fd: int | None = None
        self._open()

    def _open(self) -> None:
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            error = output_error(self.path, exc)
            if error is not None:
                raise error from exc
            raise

    def _check_path(self, step: int) -> None:
        """Reopen `metrics.jsonl` when the path no longer names the file this writer appends to."""
        assert self._fd is not None
        mine = os.fstat(self._fd)
        try:
            there = os.stat(self.path)
        except FileNotFoundError:
            what = "deleted"
        else:
            if (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino):
                return
            what = "replaced"
        log.warning(
            "%s was %s while the run wrote it; continuing in %s from global_step %d; the earlier lines are lost "
            "unless you restore them",
            self.path, what, "a new file" if what == "deleted" else "the file now at that path", step,
        )
        os.close(self._fd)
        self._fd = None
        self.reopened += 1
        self._open()

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        record = {"global_step": int(step), **{k: _clean(float(v)) for k, v in metrics.items()}}
        data = (json.dumps(record) + "\n").encode("utf-8")
        if self._fd is None:
            raise ValueError(f"{self.path}: the writer is closed")
        self._check_path(int(step))
        size = os.fstat(self._fd).st_size
        try:
            written = os.write(self._fd, data)
            while written < len(data):  # a short write (rare on local disks): append the rest
                written += os.write(self._fd, data[written:])
        except OSError as exc:
            try:
                os.ftruncate(self._fd, size)  # no torn line: the file ends with its last complete line
            except OSError:
                pass
            error = output_error(self.path, exc)
            if error is not None:
                raise error from exc
            raise

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_json_atomic(data: Mapping[str, Any], path: str | Path) -> Path:
    """Write JSON via a temp file + rename, so readers never see a half-written summary."""
    return write_text_atomic(path, json.dumps({k: _clean(v) for k, v in data.items()}, indent=2, sort_keys=True) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of a run's `metrics.jsonl`, in order."""
    with (Path(run_dir) / "metrics.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
