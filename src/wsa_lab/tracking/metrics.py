"""`metrics.jsonl` + `summary.json`: the run folder's own record, the source of truth offline."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from wsa_lab.files import write_text_atomic


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
        self._file = self.path.open("a", encoding="utf-8")

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        record = {"global_step": int(step), **{k: _clean(float(v)) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()  # a killed run keeps every line written so far

    def close(self) -> None:
        self._file.close()

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
