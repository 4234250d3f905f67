"""Reading run folders: the one reader behind `wsa_lab.evaluate`, the report and the sweep index.

A run folder (see the README, "What a run leaves behind") holds `summary.json`, `resolved_config.yaml`,
`metrics.jsonl` and `checkpoints/{last,prev}.pt`. Files that cannot be read raise `RunFileError`, a one-line
`ConfigError` naming the folder and the file (its `why` is the reason alone, for callers that word it their way).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from wsa_lab import errors
from wsa_lab.errors import ConfigError
from wsa_lab.run.checkpoint import LAST, PREVIOUS

SUMMARY, RESOLVED_CONFIG, METRICS, CHECKPOINTS = "summary.json", "resolved_config.yaml", "metrics.jsonl", "checkpoints"
#: Folders inside a run or sweep folder that never hold runs.
SKIP_DIRS = {"wandb", "tensorboard", CHECKPOINTS, ".hydra", ".submitit", "report"}


class RunFileError(ConfigError):
    """A file of a run folder exists but cannot be read."""

    def __init__(self, folder: Path, name: str, why: str) -> None:
        kind = "JSON" if name.endswith(".json") else "YAML"
        super().__init__(f"{folder}: {name} is not readable {kind} ({why})")
        self.why = why


def first_line(exc: BaseException) -> str:
    """A parse error in one line: ``<problem> at line L, column C`` for YAML and JSON, else the message's first line."""
    mark = getattr(exc, "problem_mark", None)
    if isinstance(exc, yaml.MarkedYAMLError) and mark is not None:
        return f"{exc.problem} at line {mark.line + 1}, column {mark.column + 1}"
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno}, column {exc.colno}"
    return errors.first_line(exc)


def _json_object(folder: Path, name: str, data: bytes) -> dict[str, Any]:
    """The bytes of a run folder's JSON file `name` as a dict; RunFileError when they are not a JSON object."""
    try:
        value = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunFileError(folder, name, first_line(exc)) from exc
    if not isinstance(value, dict):
        raise RunFileError(folder, name, f"a {type(value).__name__}, not an object")
    return value


def read_summary_bytes(folder: Path) -> tuple[dict[str, Any], bytes]:
    """`summary.json` as a dict and its bytes; FileNotFoundError when absent, RunFileError when unreadable."""
    data = (folder / SUMMARY).read_bytes()
    return _json_object(folder, SUMMARY, data), data


def read_json(folder: Path, name: str) -> dict[str, Any] | None:
    """A run folder's JSON file `name` (e.g. `eval_<suite>.json`, `ablation_<suite>.json`, `attention_states.json`)
    as a dict; None when absent, RunFileError when unreadable."""
    try:
        data = (folder / name).read_bytes()
    except FileNotFoundError:
        return None
    return _json_object(folder, name, data)


def read_summary(folder: Path) -> dict[str, Any]:
    """`summary.json` ({} when absent); RunFileError when unreadable."""
    try:
        return read_summary_bytes(folder)[0]
    except FileNotFoundError:
        return {}


def read_resolved_config(folder: Path) -> DictConfig:
    """`resolved_config.yaml`, a run's config (a mapping with an `env`); ConfigError when missing or unreadable."""
    path = folder / RESOLVED_CONFIG
    if not path.is_file():
        raise ConfigError(f"{folder}: no {RESOLVED_CONFIG} (written by wsa_lab at the start of each run)")
    try:
        cfg = OmegaConf.load(path)
    except (yaml.YAMLError, UnicodeDecodeError, OmegaConfBaseException) as exc:
        raise RunFileError(folder, RESOLVED_CONFIG, first_line(exc)) from exc
    if not isinstance(cfg, DictConfig):
        raise RunFileError(folder, RESOLVED_CONFIG, "a list, not a mapping")
    if not isinstance(cfg.get("env"), DictConfig):
        raise ConfigError(f"{folder}: {RESOLVED_CONFIG} is not a run's config (no env section)")
    return cfg


def read_metrics_text(text: str) -> tuple[list[dict[str, Any]], int]:
    """Records of `metrics.jsonl`'s text, and how many lines were unreadable: a torn last line of a killed run, or a
    damaged one (not a JSON object, a `global_step` that is not a whole number)."""
    records, bad = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or ("global_step" in record and int(record["global_step"]) != record["global_step"]):
                raise ValueError("not a metrics record")
        except (ValueError, TypeError):  # json.JSONDecodeError is a ValueError
            bad += 1
            continue
        records.append(record)
    return records, bad


def newest_checkpoint(folder: Path) -> Path | None:
    """`checkpoints/last.pt`, else `checkpoints/prev.pt` (a crash between the two renames), else None."""
    return next((p for p in (folder / CHECKPOINTS / n for n in (LAST, PREVIOUS)) if p.is_file()), None)


def run_state(folder: str | Path) -> dict[str, Any]:
    """What a (possibly running) folder says about its run: `status` and `global_step` (summary.json, None when
    unreadable yet) and `checkpoint` (the newest file)."""
    folder = Path(folder)
    try:
        summary = read_summary(folder)
    except (OSError, RunFileError):  # being replaced right now
        summary = {}
    return {
        "status": summary.get("status"), "global_step": summary.get("global_step"),
        "checkpoint": newest_checkpoint(folder),
    }


def run_folders_below(root: Path, is_run: Callable[[Path], bool]) -> Iterator[Path]:
    """Run folders under `root` (not `root` itself), in sorted order; a run folder's subfolders are not searched."""
    for here, dirs, _files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        path = Path(here)
        if path != root and is_run(path):
            dirs.clear()
            yield path
