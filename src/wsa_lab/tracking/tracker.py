"""`Tracker`: the one object training talks to for logging; backends plug in behind it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from omegaconf import DictConfig

from wsa_lab.tracking.metrics import MetricsWriter, write_json_atomic


class Tracker:
    """Fans metrics out to `metrics.jsonl` (always) and to optional backends; owns `summary.json`.

    Backends are objects with `log(metrics, step)`, `log_attention(weights, names, step)` and
    `finish(summary)`; they are closed in `finish` also when training raised.
    """

    def __init__(self, run_dir: str | Path, backends: Optional[list[Any]] = None) -> None:
        self.run_dir = Path(run_dir)
        self.writer = MetricsWriter(self.run_dir)
        self.backends = list(backends or [])

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.writer.log(metrics, step)
        for backend in self.backends:
            backend.log(metrics, step)

    def log_attention(self, weights: torch.Tensor, names: list[str], step: int) -> None:
        """Per-state attention weights of one rollout, (states, P), for histograms."""
        for backend in self.backends:
            backend.log_attention(weights, names, step)

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        write_json_atomic(summary, self.run_dir / "summary.json")

    def finish(self, summary: Mapping[str, Any]) -> None:
        """Write the final summary and close every backend (safe to call once, also after an error)."""
        self.write_summary(summary)
        self.writer.close()
        for backend in self.backends:
            backend.finish(summary)


def build_tracker(cfg: DictConfig, run_dir: str | Path) -> Tracker:
    """The run's tracker: metrics.jsonl plus one backend per entry of `cfg.logger` that has one."""
    return Tracker(run_dir, backends=[])
