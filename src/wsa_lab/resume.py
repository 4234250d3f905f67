"""Resuming a run in its own folder: what a checkpoint must match, trimming the metrics, stop signals.

A run whose folder holds `checkpoints/last.pt` (or `prev.pt`) continues from it: `train` restores the model,
optimiser, RNG states, the env's episodes in flight, the step counters and the evaluation history, and
`metrics.jsonl` keeps only the lines up to the checkpoint's step, so the history has no gap and no duplicate.
This is how a Slurm job that is preempted, times out or is requeued continues: submitit re-runs the task in
the same job folder.

`StopSignals` turns SIGTERM, SIGUSR1 and SIGUSR2 (what Slurm and submitit send before ending a job) into a
request to stop at the next iteration boundary; `train` then writes a checkpoint and calls
`StopSignals.stop()`, which hands the signal to a handler installed before (submitit's: it requeues the
job) or exits with 128 + the signal number.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from omegaconf import DictConfig, OmegaConf

from wsa_lab.files import write_text_atomic

log = logging.getLogger(__name__)

# Keys that may differ between the run that wrote a checkpoint and the one resuming it: where files go,
# how progress is shown, which device (a GPU run may resume on another GPU), how often to checkpoint/evaluate.
MAY_CHANGE_ON_RESUME = ("paths", "logger", "device", "resume", "checkpoint", "evaluation.interval")


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


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`key: <in checkpoint> -> <now>` for every setting that differs, except those that may change."""

    def relevant(key: str) -> bool:
        if key.endswith("weights_path"):  # where a PTM's file lives on this machine
            return False
        return not any(key == k or key.startswith(k + ".") for k in MAY_CHANGE_ON_RESUME)

    old, new = _flatten(saved), _flatten(current)
    missing = object()
    return [
        f"{key}: {old.get(key, '<unset>')!r} -> {new.get(key, '<unset>')!r}"
        for key in sorted(set(old) | set(new))
        if relevant(key) and old.get(key, missing) != new.get(key, missing)
    ]


def truncate_metrics(path: str | Path, step: int) -> int:
    """Keep the lines of `metrics.jsonl` with `global_step <= step` (atomic rewrite); return how many went.

    Lines after a checkpoint were logged by iterations the resumed run repeats; a torn last line (a
    process killed mid-write) is dropped too.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
                keep = line.endswith("\n") and int(record["global_step"]) <= step
            except (ValueError, KeyError, TypeError):
                keep = False
            if keep:
                kept.append(line)
            elif line.strip():
                dropped += 1
    if dropped:
        write_text_atomic(path, "".join(kept))
    return dropped


# ---------------------------------------------------------------------------------------------- signals
REQUEUE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)  # submitit: USR2 by default (SUBMITIT_PREEMPT_SIGNAL)


class StopSignals:
    """Context manager: SIGTERM / SIGUSR1 / SIGUSR2 set `requested` instead of ending the process.

    The training loop checks `requested` between iterations, writes a checkpoint and calls `stop()`.
    Handlers are only installed in the main thread (Python's rule); elsewhere this does nothing.
    """

    SIGNALS = (signal.SIGTERM, *REQUEUE_SIGNALS)

    def __init__(self) -> None:
        self.received: list[int] = []
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum not in self.received:
            self.received.append(signum)
            log.warning("received %s: stopping after this iteration, with a checkpoint", signal.Signals(signum).name)

    @property
    def requested(self) -> bool:
        return bool(self.received)

    def stop(self) -> NoReturn:
        """After the checkpoint: let submitit requeue (its USR handler), else exit with 128 + signal."""
        previous = dict(self._previous)
        self.__exit__()
        for sig in self.received:
            handler = previous.get(sig)
            if sig in REQUEUE_SIGNALS and callable(handler):
                log.info("checkpoint written; handing %s to the job's own handler (requeue)", signal.Signals(sig).name)
                handler(sig, None)  # submitit: dumps the job, `scontrol requeue`, sys.exit(-1)
        sig = self.received[0]
        raise Interrupted(sig)


class Interrupted(SystemExit):
    """Training stopped on a signal after writing a checkpoint; restarting the run resumes it."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"stopped by {signal.Signals(self.signum).name} (checkpoint written; rerun in the same folder to resume)"
