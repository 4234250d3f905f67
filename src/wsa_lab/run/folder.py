"""`RunFolder`: one run's folder, opened by the one process that writes it.

    with RunFolder(run_dir) as folder:      # the lock (RunFolderBusyError if a live run holds the folder)
        found = folder.accept_resume(snapshot, resume=cfg.resume, required=KEYS)   # reads only; may refuse
        folder.write_resolved_config(cfg)   # accepted: from here on the run writes
        if found is None: folder.start_over(...)  else: folder.resume_metrics_at(step)
        folder.save_checkpoint(state)       # as often as the run likes

A run whose folder holds `checkpoints/last.pt` (or `prev.pt`) continues from it: `train` restores the model,
optimiser, RNG states, the env's episodes in flight, the step counters and the evaluation history, and
`metrics.jsonl` keeps only the lines up to the checkpoint's step, so the history has no gap and no duplicate.
This is how a Slurm job that is preempted, times out or is requeued continues: submitit re-runs the task in
the same job folder. A checkpoint of another config is refused before anything is written.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from wsa_lab.errors import ConfigError
from wsa_lab.run.atomic import write_text_atomic
from wsa_lab.run.checkpoint import LAST, PREVIOUS, load_latest, save_rotating
from wsa_lab.run.lock import RunLock
from wsa_lab.run.reader import CHECKPOINTS, METRICS, RESOLVED_CONFIG

log = logging.getLogger(__name__)

# Keys that may differ between the run that wrote a checkpoint and the one resuming it: where files go,
# how progress is shown, which device (a GPU run may resume on another GPU), how often to checkpoint/evaluate.
MAY_CHANGE_ON_RESUME = ("paths", "logger", "device", "resume", "checkpoint", "evaluation.interval")
#: what a resume may change to recover from a divergence (recorded in summary.json's `resume_changes`)
ADJUSTABLE_ON_RESUME = ("algo.learning_rate", "algo.max_grad_norm")
#: keys added to the config after runs were checkpointed without them: absent from a checkpoint means this value, so
#: those runs still resume
ADDED_LATER = {"init_from": None}

Checkpoint = tuple[dict[str, Any], Path]  # a loaded checkpoint and its file


def config_snapshot(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain containers (stored in checkpoints; loads with weights_only=True)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list):
        items = ((str(i), v) for i, v in enumerate(node))
    else:
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in items:
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    if not flat and prefix:
        flat[prefix] = node  # keep empty containers visible
    return flat


def resume_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`key: <in checkpoint> -> <now>` for the settings a resume may adjust (ADJUSTABLE_ON_RESUME) that it did."""
    old, new = _flatten(saved), _flatten(current)
    return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in ADJUSTABLE_ON_RESUME if old.get(key) != new.get(key)]


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`key: <in checkpoint> -> <now>` for every setting that differs, except those that may change."""

    def relevant(key: str) -> bool:
        if key.endswith("weights_path"):  # where a PTM's file lives on this machine
            return False
        return not any(key == k or key.startswith(k + ".") for k in (*MAY_CHANGE_ON_RESUME, *ADJUSTABLE_ON_RESUME))

    new = _flatten(current)
    old = {**{k: v for k, v in ADDED_LATER.items() if k in new}, **_flatten(saved)}
    missing = object()
    return [
        f"{key}: {old.get(key, '<unset>')!r} -> {new.get(key, '<unset>')!r}"
        for key in sorted(set(old) | set(new))
        if relevant(key) and old.get(key, missing) != new.get(key, missing)
    ]


def truncate_metrics(path: str | Path, step: int) -> tuple[int, int]:
    """Keep the lines of `metrics.jsonl` with `global_step <= step` (atomic rewrite); return how many went and the
    last step logged before (what TensorBoard and W&B already hold).

    Lines after a checkpoint were logged by iterations the resumed run repeats; a torn last line (a process killed
    mid-write) and a damaged line (bytes that are not UTF-8, a `global_step` that is not a number) are dropped too,
    with a warning: a damaged metrics file never stops a run from resuming.
    """
    path = Path(path)
    if not path.is_file():
        return 0, step
    kept, dropped, damaged, last = [], 0, 0, step
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                logged = int(json.loads(line)["global_step"])
            except (ValueError, KeyError, TypeError):
                damaged += line.endswith("\n") and bool(line.strip())  # not the torn last line of a killed run
                logged = None
            if logged is not None:
                last = max(last, logged)
            if logged is not None and line.endswith("\n") and logged <= step:
                kept.append(line)
            elif line.strip():
                dropped += 1
    if damaged:
        log.warning("%s: %d damaged line(s) dropped (not JSON with a numeric global_step)", path, damaged)
    if dropped:
        write_text_atomic(path, "".join(kept))
    return dropped, last


class RunFolder:
    """A run folder held by this process: its lock, resume decision, checkpoints, metrics and resolved config."""

    def __init__(self, path: str | Path, hint: str = "choose another hydra.run.dir") -> None:
        self.path = Path(path)
        self.checkpoints = self.path / CHECKPOINTS
        self.lock = RunLock(self.path, hint)

    def open(self) -> "RunFolder":
        """Take the folder's lock (held once per process); RunFolderBusyError if a live run holds it."""
        self.lock.acquire()
        return self

    def close(self) -> None:
        self.lock.release()

    def __enter__(self) -> "RunFolder":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def accept_resume(
        self, snapshot: dict[str, Any], resume: bool, required: tuple[str, ...] = (), what: str = "a checkpoint",
        other: str = "hydra.run.dir",
    ) -> Checkpoint | None:
        """The checkpoint this run continues from (None: a fresh start), or a ConfigError refusing a checkpoint of
        another config (`what`; `other`: what the user may choose instead of this folder). Reads only: nothing in
        the folder is written before the run is accepted."""
        if not resume:
            return None
        found = load_latest(self.checkpoints, required=required)
        if found is None:
            return None
        differences = config_differences(found[0]["config"], snapshot)
        if differences:
            raise ConfigError(
                f"{self.path} holds {what} of another config ({'; '.join(differences[:5])}"
                f"{'; ...' if len(differences) > 5 else ''}); resume with the same settings, pass resume=false to "
                f"start over there, or choose another {other}"
            )
        return found

    def write_resolved_config(self, cfg: DictConfig) -> None:
        write_text_atomic(self.path / RESOLVED_CONFIG, OmegaConf.to_yaml(cfg, resolve=True))

    def start_over(self, drop_checkpoints: bool) -> None:
        """A fresh start: no metrics from an earlier attempt (and, with resume=false, no old checkpoints)."""
        metrics = self.path / METRICS
        if metrics.is_file():
            log.warning("starting over in %s: replacing its metrics.jsonl", self.path)
            metrics.unlink()
        for name in (LAST, PREVIOUS) if drop_checkpoints else ():
            path = self.checkpoints / name
            if path.is_file():
                log.warning("resume=false: deleting %s", path)
                path.unlink()

    def resume_metrics_at(self, step: int) -> tuple[int, int]:
        """Drop the metrics lines logged after the checkpoint at `step`; return how many went and the last step
        an earlier attempt logged."""
        return truncate_metrics(self.path / METRICS, step)

    def save_checkpoint(self, state: dict[str, Any]) -> Path:
        """`checkpoints/last.pt`, written atomically; the one it replaces stays as `prev.pt`."""
        return save_rotating(state, self.checkpoints)
