"""The `logger` config group, validated: one dataclass per entry, and the run's identity for the backends.

`logger=[console,health,wandb,tensorboard]` composes `conf/logger/<name>.yaml`, each holding a top-level key
named like the file. Entries not in the list fall back to their defaults (health is always computed for WSA
runs; W&B and TensorBoard only run when listed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from wsa_lab.conf_files import yaml_defaults
from wsa_lab.errors import ConfigError
from wsa_lab.run.startup import check_secrets
from wsa_lab.schema import check_range, structured, unknown_key_error
from wsa_lab.tracking.health import HealthConfig

WANDB_MODES = ("auto", "offline", "online", "disabled")


@dataclass
class WandbConfig:
    mode: str
    """auto ($WANDB_MODE if set, else offline) | offline (no network, no account) | online | disabled"""
    project: str
    """W&B project"""
    entity: Optional[str]
    """W&B team or user; null = the account's default entity"""
    group: Optional[str]
    """null = the sweep (sweep-<date>_<time>) in a multirun, else the phase (or the arm when no phase)"""
    job_type: Optional[str]
    """null = the ablation arm (`name`)"""
    name: Optional[str]
    """null = <arm>_seed<seed>"""
    tags: list
    """extra tags; the phase and the PTM names are always added"""
    dir: Optional[str]
    """folder that receives wandb/; null = the run folder"""

    def __post_init__(self) -> None:
        if self.mode not in WANDB_MODES:
            raise ConfigError(f"logger.wandb.mode must be one of {', '.join(WANDB_MODES)}; got {self.mode!r}")
        if not all(isinstance(t, str) for t in self.tags):
            raise ConfigError(f"logger.wandb.tags must be a list of strings; got {self.tags!r}")

    def resolved_mode(self) -> str:
        """The mode W&B runs in: the configured one, or for `auto` $WANDB_MODE if set, else offline."""
        if self.mode != "auto":
            return self.mode
        env = os.environ.get("WANDB_MODE", "").strip().lower()
        if env in ("", "auto"):
            return "offline"
        if env == "dryrun":  # W&B's old name for offline
            return "offline"
        if env == "run":
            return "online"
        if env not in WANDB_MODES:
            raise ConfigError(f"WANDB_MODE={env!r} in the environment is not one of offline, online, disabled")
        return env


@dataclass
class TensorBoardConfig:
    log_dir: Optional[str]
    """folder of the event files; null = <run folder>/tensorboard"""
    flush_secs: int
    """seconds between flushes to disk (so `tensorboard --logdir` follows a running job)"""

    def __post_init__(self) -> None:
        check_range("logger.tensorboard.flush_secs", self.flush_secs, ge=1)


@dataclass
class LoggerSettings:
    """The validated `logger` group: which backends run, with which options."""

    health: HealthConfig
    wandb: Optional[WandbConfig] = None
    tensorboard: Optional[TensorBoardConfig] = None


def logger_settings(cfg: DictConfig) -> LoggerSettings:
    """Validate `cfg.logger` (unknown keys, wrong types, secrets) and return the typed settings.

    `logger.console` is validated by `wsa_lab.config.validate`.
    """
    check_secrets(cfg)  # one place decides what a secret is (wsa_lab.run.startup)
    node = cfg.get("logger") or {}
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


@dataclass
class RunIdentity:
    """What a run is, for naming and grouping it in W&B/TensorBoard: arm, seed, phase, PTMs, sweep."""

    arm: str
    seed: int
    phase: Optional[str]
    ptm_names: list[str]
    fusion: Optional[str]
    wsa_enabled: bool
    sweep: Optional[str] = None  # sweep-<date>_<time> inside a Hydra multirun

    @property
    def default_group(self) -> str:
        return self.sweep or self.phase or self.arm

    @property
    def default_name(self) -> str:
        return f"{self.arm}_seed{self.seed}"

    @property
    def tags(self) -> list[str]:
        return [t for t in (self.phase, *self.ptm_names) if t]

    def flat_fields(self) -> dict[str, Any]:
        """Fields added at the top of the W&B config so dashboards can group by them."""
        return {
            "arm": self.arm,
            "phase": self.phase,
            "ptm_names": list(self.ptm_names),
            "ptm_count": len(self.ptm_names),
            "fusion": self.fusion,
            "wsa_enabled": self.wsa_enabled,
        }


def _sweep_name() -> Optional[str]:
    """`sweep-<date>_<time>` from Hydra's sweep folder when this process runs a multirun job, else None."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:  # pragma: no cover - hydra is a dependency
        return None
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    parts = Path(str(hc.sweep.dir)).parts[-2:]
    return "sweep-" + "_".join(parts)


def run_identity(cfg: DictConfig) -> RunIdentity:
    """The run's identity from its composed config (the same PTM names, in order, as `summary.json`)."""
    wsa = cfg.actor_critic.get("wsa") or {}
    enabled = bool(wsa.get("enabled", True))
    names: list[str] = []
    if enabled:
        for i, ptm in enumerate(wsa.get("pretrained_models") or []):
            names.append(str(ptm.get("name") or ptm.get("model_type") or f"ptm{i}"))
    return RunIdentity(
        arm=str(cfg.name),
        seed=int(cfg.seed),
        phase=None if cfg.get("phase") is None else str(cfg.phase),
        ptm_names=names,
        fusion=str(wsa.get("fusion", "wsa")) if enabled else None,
        wsa_enabled=enabled,
        sweep=_sweep_name(),
    )
