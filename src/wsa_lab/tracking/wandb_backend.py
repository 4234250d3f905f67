"""Weights & Biases backend: one W&B run per wsa_lab run, offline unless asked otherwise.

- group = the sweep (or phase), job_type = the ablation arm, name = <arm>_seed<seed>, tags = phase + PTM names;
  `config` = the resolved config plus flat `arm`, `phase`, `ptm_names`, `ptm_count`, `fusion`, `wsa_enabled`.
- Every metric is plotted against `global_step` (env steps) via `define_metric`.
- The run id lives in `<run folder>/wandb_run_id.txt`: a resumed (restarted, requeued) job continues the same run
  (`resume="allow"`) and does not log again the steps an earlier attempt logged after the checkpoint (a resumed run
  repeats them with the same numbers); a run that starts over gets a new id, so two runs never merge. Offline, each
  attempt is its own `offline-run-*` folder: the closing line names every one to `wandb sync`.
- `reinit="finish_previous"` + `finish()` in the tracker's `finish` (also after an error): sequential
  multirun jobs in one process each get their own run (a second `init` without `finish` would return the
  first run: wandb 0.31 returns the same run from a second `init`).
- No API key is ever read from or written to the config: `wandb login` or WANDB_API_KEY in the environment.
"""

from __future__ import annotations

import logging
import math
import secrets
import string
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from wsa_lab.config.schema import WandbConfig
from wsa_lab.errors import first_line
from wsa_lab.tracking.identity import Continuation, RunIdentity
from wsa_lab.tracking.probe import TrackingError

log = logging.getLogger("wsa_lab")

RUN_ID_FILE = "wandb_run_id.txt"


def run_id_for(run_dir: Path, new: bool = False) -> str:
    """The W&B run id stored in the run folder; a new one is created (and stored) on the first call or if `new`."""
    path = run_dir / RUN_ID_FILE
    if path.is_file() and not new:
        stored = path.read_text().strip()
        if stored:
            return stored
    alphabet = string.ascii_lowercase + string.digits
    run_id = "".join(secrets.choice(alphabet) for _ in range(8))
    path.write_text(run_id + "\n")
    return run_id


def _summary_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class WandbBackend:
    """`log`, `log_attention`, `finish`: the tracker's backend interface, on top of one `wandb.Run`."""

    def __init__(
        self, settings: WandbConfig, run_dir: Path, identity: RunIdentity, config: Mapping[str, Any],
        continuation: Optional[Continuation] = None,
    ) -> None:
        import wandb  # imported here: W&B is only loaded by runs that use it

        self._wandb = wandb
        self.mode = settings.resolved_mode()
        self.run_dir = Path(run_dir)
        self.run_id = run_id_for(self.run_dir, new=continuation is None)
        # steps an earlier attempt of this run already sent (the resumed run logs them again, with the same numbers)
        self.logged_until = -1 if continuation is None else continuation.logged_until
        root = Path(settings.dir) if settings.dir else self.run_dir
        root.mkdir(parents=True, exist_ok=True)
        tags = list(dict.fromkeys([*identity.tags, *settings.tags]))
        try:
            self.run = wandb.init(
                project=settings.project,
                entity=settings.entity,
                group=(settings.group or identity.default_group)[:128],
                job_type=(settings.job_type or identity.arm)[:64],
                name=settings.name or identity.default_name,
                tags=[t[:64] for t in tags],
                config={**config, **identity.flat_fields()},
                dir=str(root),
                id=self.run_id,
                resume="allow",
                mode=self.mode,
                reinit="finish_previous",
            )
        except Exception as exc:  # W&B raises several types (UsageError, CommError, ...)
            hint = (
                "run `wandb login` once (or export WANDB_API_KEY in the job's environment), or use "
                "logger.wandb.mode=offline and `wandb sync` later" if self.mode == "online" else
                "use logger.wandb.mode=disabled to train without W&B"
            )
            raise TrackingError(f"logger.wandb: W&B could not start in {self.mode} mode ({first_line(exc)}); {hint}") from exc
        self.run.define_metric("global_step")
        self.run.define_metric("*", step_metric="global_step")
        self.sync_dir: Optional[str] = None
        if self.mode == "offline":
            self.sync_dir = str(Path(self.run.settings.sync_dir).resolve())

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        if step > self.logged_until:
            self.run.log({**metrics, "global_step": int(step)})

    def log_attention(self, weights: torch.Tensor, names: list[str], step: int) -> None:
        """One histogram per PTM of its attention weight across the rollout's states."""
        data: dict[str, Any] = {
            f"wsa/attention_hist/{name}": self._wandb.Histogram(weights[:, i].numpy(), num_bins=32)
            for i, name in enumerate(names)
        }
        if step > self.logged_until:
            self.run.log({**data, "global_step": int(step)})

    def finish(self, summary: Mapping[str, Any]) -> None:
        self.run.summary.update({k: _summary_value(v) for k, v in summary.items()})
        self.run.finish(exit_code=0 if summary.get("status") == "completed" else 1)
        if self.sync_dir:
            # every attempt of this run (a resumed run adds one folder per start), oldest first
            attempts = sorted(Path(self.sync_dir).parent.glob(f"offline-run-*-{self.run_id}")) or [Path(self.sync_dir)]
            log.info("W&B offline run %s saved; upload it with: wandb sync %s", self.run_id, " ".join(map(str, attempts)))
