"""Start-up validation of a composed config: `validate(cfg) -> RunSettings`, every check one line that names the
key and the fix (the sections' dataclasses and their range checks: `wsa_lab.config.schema`)."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from wsa_lab.conf_files import yaml_defaults
from wsa_lab.config.schema import (
    CheckpointConfig, ConsoleConfig, EvaluationConfig, HealthConfig, LoggerSettings, PPOConfig, RunSettings,
    TensorBoardConfig, WandbConfig,
)
from wsa_lab.config.resolvers import required_key_error
from wsa_lab.config.strict import MAX_SEED, structured, unknown_key_error
from wsa_lab.errors import ConfigError
from wsa_lab.run.startup import check_name, check_output_dir, check_secrets
from wsa_lab.models import build_actor_critic
from wsa_lab.trust import import_object

ROOT_KEYS = (
    "name", "phase", "seed", "device", "deterministic", "ptm_count", "ptm", "env", "actor_critic", "algo", "logger",
    "paths", "evaluation", "checkpoint", "resume", "init_from",
)


def check_kwargs(target: Callable[..., Any], node: DictConfig, where: str, passed_in_code: tuple[str, ...] = ()) -> None:
    """Fail on keys that `target` (a `_target_`) does not take, before instantiate turns them into a TypeError."""
    params = inspect.signature(target).parameters
    accepted = [p for p in params if p not in passed_in_code]
    for key in node:
        if key == "_target_":
            continue
        if key in passed_in_code:
            raise ConfigError(f"{where}.{key} is set by wsa_lab itself; remove it from the config")
        if key not in params:
            raise unknown_key_error(key, accepted, where)


def check_required(target: Callable[..., Any], node: DictConfig, where: str, passed_in_code: tuple[str, ...] = ()) -> None:
    """Fail on an argument `target` requires that the config section lacks (e.g. a key removed with `~key`)."""
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    for name, param in inspect.signature(target).parameters.items():
        if param.kind in named and param.default is inspect.Parameter.empty and name not in (*passed_in_code, *node):
            raise ConfigError(f"{where}: missing required key '{name}'")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available here; use device=cpu or device=auto")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device={name!r} is not a torch device; use auto, cpu, cuda or cuda:N") from exc


def validate(cfg: DictConfig) -> RunSettings:
    """Start-up checks, each failing with one line that names the key and the fix."""
    for key in cfg:
        if key not in ROOT_KEYS:
            raise unknown_key_error(key, list(ROOT_KEYS), "config")
    check_secrets(cfg)  # the CLI refuses them before Hydra writes anything (wsa_lab.run.startup); train(cfg) here
    check_name(cfg.name)
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool) or not 0 <= cfg.seed <= MAX_SEED:
        raise ConfigError(f"seed must be an integer in [0, 2**32 - 1] (what numpy and torch accept), got {cfg.seed!r}")
    for flag in ("resume", "deterministic"):
        if not isinstance(cfg.get(flag, True), bool):
            raise ConfigError(f"{flag} must be true or false, got {cfg[flag]!r}")
    _check_init_from(cfg)
    settings = RunSettings(
        algo=structured(PPOConfig, cfg.algo, "algo"),
        evaluation=structured(EvaluationConfig, cfg.evaluation, "evaluation"),
        checkpoint=structured(CheckpointConfig, cfg.checkpoint, "checkpoint"),
        device=resolve_device(str(cfg.device)),
        deterministic=cfg.get("deterministic", True),
    )
    loggers = logger_settings(cfg)
    if loggers.wandb is not None and loggers.wandb.resolved_mode() == "online":
        from wsa_lab.tracking.probe import check_reachable  # not at import: wsa_lab.tracking imports this module

        # before anything is written: wandb itself retries ~100 s without network
        check_reachable(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    pool = cfg.get("ptm") or {}
    for name, entry in pool.items():
        if isinstance(entry, DictConfig) and "_target_" in entry:  # Hydra would call it while building actor_critic
            raise ConfigError(
                f"ptm.{name}: a PTM names its module with `target:` (and model_type: custom), not `_target_`"
            )
    wsa = cfg.actor_critic.wsa
    if cfg.ptm_count is not None:
        if not isinstance(cfg.ptm_count, int) or not 1 <= cfg.ptm_count <= len(pool):
            raise ConfigError(
                f"ptm_count={cfg.ptm_count} must be an integer between 1 and the pool size {len(pool)} "
                f"(pool: {list(pool)})"
            )
    if wsa.get("enabled", True) and pool and not OmegaConf.is_interpolation(wsa, "pretrained_models"):
        raise ConfigError(
            "both ptm=[...] and actor_critic.wsa.pretrained_models are set; use one: ptm=[] with an explicit "
            "pretrained_models list, or remove the list"
        )
    env = env_target(cfg.env)
    check_kwargs(env, cfg.env, "env", ENV_KWARGS_SET_BY_WSA_LAB)
    check_required(env, cfg.env, "env", ENV_KWARGS_SET_BY_WSA_LAB)
    check_kwargs(build_actor_critic, cfg.actor_critic, "actor_critic", ("observation_spec", "action_spec"))
    check_required(build_actor_critic, cfg.actor_critic, "actor_critic", ("observation_spec", "action_spec"))
    _check_output_dir(Path(cfg.paths.output_dir))
    return settings


def _check_init_from(cfg: DictConfig) -> None:
    """`init_from` is null or a path (the folder itself is read at start-up: wsa_lab.run.init_from)."""
    try:
        value = cfg.get("init_from")
    except InterpolationResolutionError as exc:  # `${wsa_lab.required:...}`: an experiment that needs one
        raise required_key_error(exc) from exc
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ConfigError(f"init_from must be a run folder (a path) or null, got {value!r}")


#: Env constructor arguments wsa_lab passes itself (from algo.num_envs, seed, device); `autoreset` is the
#: built-in coverage env's switch that evaluation code sets.
ENV_KWARGS_SET_BY_WSA_LAB = ("num_envs", "seed", "device", "autoreset")


def env_target(node: DictConfig) -> Callable[..., Any]:
    """The callable named by `env._target_` (a VectorGraphEnv class), or a one-line ConfigError."""
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if not target:
        raise ConfigError("env: no _target_; choose an env config (env=coverage, env=gym env.id=...) or set env._target_")
    return import_object(target, "env._target_")


def _check_output_dir(out: Path) -> None:
    check_output_dir(out, "hydra.run.dir")  # a file in the way, a read-only folder (the CLI checked it already)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the output folder {out}: {exc.strerror}; set hydra.run.dir to a writable folder") from exc


def logger_settings(cfg: DictConfig) -> LoggerSettings:
    """Validate `cfg.logger` (unknown keys, wrong types, secrets) and return the typed settings.

    `logger.console` is checked here too (only the progress bar reads it, in train).
    """
    check_secrets(cfg)  # one place decides what a secret is (wsa_lab.run.startup)
    node = cfg.get("logger") or {}
    if "console" in node:
        structured(ConsoleConfig, node["console"], "logger.console")
    entries = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    known = ("console", "health", "wandb", "tensorboard")
    for key in entries:
        if key not in known:
            raise unknown_key_error(key, list(known), "logger")
    # health applies to every WSA run: not in the logger list, its file's values (the one place they live) still
    # do, and `+logger.health.<key>=...` changes one of them
    health = {**yaml_defaults("logger/health.yaml", "health"), **(entries.get("health") or {})}
    settings = LoggerSettings(health=structured(HealthConfig, health, "logger.health"))
    if "wandb" in entries:
        settings.wandb = structured(WandbConfig, entries["wandb"], "logger.wandb")
        settings.wandb.resolved_mode()  # a bad $WANDB_MODE fails here, at start-up
    if "tensorboard" in entries:
        settings.tensorboard = structured(TensorBoardConfig, entries["tensorboard"], "logger.tensorboard")
    return settings
