"""TensorBoard backend: event files in `<run folder>/tensorboard/` (`tensorboard --logdir multirun/...`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from wsa_lab.errors import ConfigError
from wsa_lab.config.schema import TensorBoardConfig
from wsa_lab.tracking.identity import Continuation, RunIdentity


class TensorBoardBackend:
    """Scalars and attention histograms against `global_step`; the config and summary as text.

    A resumed run opens its event files with `purge_step` one past the checkpoint: TensorBoard hides what an earlier
    attempt logged after it, so every step is shown once (the resumed run logs those steps again).
    """

    def __init__(
        self, settings: TensorBoardConfig, run_dir: Path, identity: RunIdentity, config: Mapping[str, Any],
        continuation: Optional[Continuation] = None,
    ) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ConfigError("logger=tensorboard needs the tensorboard package: pip install tensorboard") from exc
        self.log_dir = Path(settings.log_dir) if settings.log_dir else Path(run_dir) / "tensorboard"
        purge = None if continuation is None else continuation.step + 1
        self.writer = SummaryWriter(log_dir=str(self.log_dir), flush_secs=settings.flush_secs, purge_step=purge)
        if continuation is not None:
            return  # the run and config texts are in the first attempt's events
        header = {**identity.flat_fields(), "seed": identity.seed}
        self.writer.add_text("run", _code_block(json.dumps(header, indent=2)), 0)
        self.writer.add_text("config", _code_block(json.dumps(config, indent=2, default=str)), 0)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            if value is not None and math.isfinite(float(value)):
                self.writer.add_scalar(key, float(value), int(step))

    def log_attention(self, weights: torch.Tensor, names: list[str], step: int) -> None:
        for i, name in enumerate(names):
            self.writer.add_histogram(f"wsa/attention_hist/{name}", weights[:, i], int(step))

    def finish(self, summary: Mapping[str, Any]) -> None:
        self.writer.add_text("summary", _code_block(json.dumps(summary, indent=2, default=str)), int(summary.get("global_step") or 0))
        self.writer.close()


def _code_block(text: str) -> str:
    """TensorBoard renders text as Markdown: indent by 4 spaces to show JSON verbatim."""
    return "\n".join("    " + line for line in text.splitlines())
