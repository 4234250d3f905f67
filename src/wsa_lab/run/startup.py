"""Checks that must pass before Hydra writes anything: a Hydra callback (`hydra.callbacks.startup_guard`).

Hydra creates the run folder, writes `.hydra/{config,overrides,hydra}.yaml` and opens its log file before the
task function (`wsa_lab.__main__.main`) runs. What must never reach the disk, or never be created, is
therefore checked in `on_run_start` / `on_multirun_start`, which Hydra calls before any of that:

- a secret in the config (an API key, a token, a password): refused, so it is written nowhere;
- `name` that is not a plain name (``name=../../x`` would put the run folder outside `runs/`);
- ``ptm=[a,a]``: the `ptm` group keeps one entry per name, so the second would be dropped silently;
- an output folder that is a file, or sits under a read-only or missing-permission folder.

Each prints one line (``wsa_lab: error: ...``) and exits with code 1. A run refused later, at start-up (a
config error found by `train`), leaves no folder either: the folders this callback saw Hydra about to create
are removed when the process ends, if they hold nothing but Hydra's own files.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from wsa_lab.errors import ConfigError, exit_with_one_line

#: Words of a key's name that say it holds a secret, wherever it appears (`logger.wandb.api_key`,
#: `env.kwargs.access_token`, `sim_apikey`): the name split at `_`, `-` and `.` (so `max_tokens` is no secret).
SECRET_WORDS = {"token", "password", "passwd", "secret", "apikey", "credentials"}
SECRET_PAIRS = {("api", "key"), ("access", "key"), ("private", "key")}
#: Values that are secrets whatever their key is called: a W&B API key (40 hex digits, or `local-` + 40), GitHub,
#: OpenAI, Hugging Face and Slack tokens, AWS access key ids.
SECRET_VALUES = re.compile(
    r"^(?:(?:local-)?[0-9a-f]{40}|gh[pousr]_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{20,}|hf_[A-Za-z0-9]{20,}"
    r"|xox[abpr]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16})$"
)
#: A run's `name` becomes part of folder names: letters, digits and ._-+= only, not starting with a dot.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+=-]*$")


def _walk(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every (key path, value) of a plain container (`a.b`, `a.list[0].c`)."""
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            yield path, value
            yield from _walk(value, path)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{prefix}[{i}]")


def names_a_secret(key: str) -> bool:
    """`api_key`, `WANDB_API_KEY`, `access_token`, `sim_apikey`, `db_password`: yes; `max_tokens`, `key`: no."""
    words = [w for w in re.split(r"[_\-.]", key.lower()) if w]
    return bool(SECRET_WORDS & set(words)) or any(pair in SECRET_PAIRS for pair in zip(words, words[1:]))


def secret_keys(cfg: DictConfig) -> list[str]:
    """Config paths that hold a secret: by the key's name (`logger.wandb.api_key`, `env.kwargs.access_token`, `key`
    under `logger`), by the value (an API key's or token's pattern, under any key), and the environment variables a
    job sets (`hydra.job.env_set.WANDB_API_KEY`, which Hydra saves in `.hydra/hydra.yaml`). Hydra's own other keys are
    skipped."""
    found = []
    for path, value in _walk(OmegaConf.to_container(cfg, resolve=False)):  # unresolved: interpolations stay unread
        last = path.rsplit(".", 1)[-1].split("[")[0]
        if path.startswith("hydra."):
            if path.startswith("hydra.job.env_set.") and (names_a_secret(last) or _secret_value(value)):
                found.append(path)
            continue
        if names_a_secret(last) or (last.lower() == "key" and path.startswith("logger.")) or _secret_value(value):
            found.append(path)
    return found


def _secret_value(value: Any) -> bool:
    return isinstance(value, str) and bool(SECRET_VALUES.match(value.strip()))


def check_secrets(cfg: DictConfig) -> None:
    keys = secret_keys(cfg)
    if keys:
        raise ConfigError(
            f"{keys[0]}: never put keys or passwords in the config, nor tokens (by name or by value: it is saved in "
            "the run folder, the checkpoint, TensorBoard and W&B); run `wandb login` once, or export the variable in "
            "the shell that starts the job instead of hydra.job.env_set"
        )


def check_name(name: Any, key: str = "name") -> None:
    """`name` (part of the run folder's name) or `hydra.job.name` (the log file's name) is a plain name: no path."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        what = "the log file's name in the run folder" if key == "hydra.job.name" else "part of the run folder's name"
        raise ConfigError(
            f"{key}={name!r} must be a plain name (letters, digits and . _ - + =, not starting with a dot): it becomes "
            f"{what}; to choose the folder itself, set hydra.run.dir"
        )


def check_ptm_overrides(overrides: list[str]) -> None:
    """`ptm=[a,b,a]` on the command line: the group would keep `a` once; say so instead."""
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.key_or_group != "ptm" or not isinstance(override.value(), list):
            continue
        names = [str(v) for v in override.value()]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(
                f"ptm={override.input_line.split('=', 1)[1]} names {', '.join(twice)} twice; each PTM config is one "
                f"entry of the pool: to use the same model twice, copy conf/ptm/{twice[0]}.yaml under a new name "
                "(with its own `name:`), e.g. in your --config-dir"
            )


def check_output_dir(path: Path, key: str) -> None:
    """The folder can be created and written: not a file, and a folder can be made in its nearest existing folder.

    A trial folder is made and removed because permission bits do not tell: root may write anywhere by them, yet
    /proc or a read-only mount refuses mkdir."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key}={path} is a file, not a folder; choose another {key}")
    existing = path
    while not existing.exists():
        existing = existing.parent
    where = "is not a folder"
    if existing.is_dir():
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".wsa_lab_write_check_", dir=existing))
            return
        except OSError as exc:
            where = f"does not accept a new folder ({exc.strerror or exc})"
    raise ConfigError(f"cannot create or write the output folder {path}: {existing} {where}; set {key} to a writable folder")


class StartupGuard(Callback):
    """The checks above, before Hydra writes anything (see the module docstring)."""

    def _check_job(self, config: DictConfig) -> None:
        check_secrets(config)
        check_name(OmegaConf.select(config, "name", default=None))
        check_name(OmegaConf.select(config, "hydra.job.name", default=None), "hydra.job.name")
        check_ptm_overrides(list(OmegaConf.select(config, "hydra.overrides.task", default=[]) or []))

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self._check_job(config)
            run_dir = Path(str(config.hydra.run.dir)).absolute()
            check_output_dir(run_dir, "hydra.run.dir")
        except ConfigError as exc:
            exit_with_one_line("wsa_lab", exc)
        if not run_dir.exists():
            top = run_dir
            while top.parent != top and not top.parent.exists():
                top = top.parent
            atexit.register(_remove_unstarted_run, run_dir, top, str(OmegaConf.select(config, "hydra.job.name")))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self._check_job(config)
            check_output_dir(Path(str(config.hydra.sweep.dir)).absolute(), "hydra.sweep.dir")
        except ConfigError as exc:
            exit_with_one_line("wsa_lab", exc)


def _remove_unstarted_run(run_dir: Path, top: Path, job_name: str) -> None:
    """A run that never started (refused at start-up) leaves no folder behind: the one Hydra made for it (only its
    `.hydra/` and log), and the folders above it that this process made (`runs/<date>/`, `runs/`) if empty now."""
    if not run_dir.is_dir() or not all(p.name in {".hydra", f"{job_name}.log", ".lock"} for p in run_dir.iterdir()):
        return
    logging.shutdown()  # Hydra's file handler holds the log open
    shutil.rmtree(run_dir, ignore_errors=True)
    folder = run_dir.parent
    while folder.is_relative_to(top) and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent
