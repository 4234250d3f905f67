"""The dataclass of every config section that is not a `_target_`, each field documented in one line.

`wsa_lab.config.strict.structured` builds them (one-line errors for unknown keys and wrong types), and their
`__post_init__` checks the ranges. The values themselves live in the `conf/` files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch

from wsa_lab.config.strict import MAX_SEED, check_range
from wsa_lab.errors import ConfigError


@dataclass
class PPOConfig:
    total_timesteps: int
    """environment steps (all envs together) the run trains for"""
    num_envs: int
    """environments stepped together (one vector env of the env contract)"""
    num_steps: int
    """steps per environment in each rollout"""
    learning_rate: float
    """Adam learning rate"""
    anneal_lr: bool
    """linearly anneal the learning rate to 0 over the run"""
    gamma: float
    """discount factor"""
    gae_lambda: float
    """lambda of generalized advantage estimation"""
    num_minibatches: int
    """minibatches per epoch (minibatch size = num_envs * num_steps / num_minibatches)"""
    update_epochs: int
    """epochs over each rollout"""
    norm_adv: bool
    """normalise advantages per minibatch"""
    clip_coef: float
    """PPO clipping coefficient (policy ratio)"""
    clip_vloss: bool
    """clip the value loss like the policy (CleanRL default)"""
    ent_coef: float
    """entropy bonus coefficient"""
    vf_coef: float
    """value loss coefficient"""
    max_grad_norm: float
    """global gradient-norm clip"""
    target_kl: Optional[float]
    """stop the epochs early when approx. KL exceeds this (null: never)"""

    # derived sizes, computed in one place (CleanRL)
    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    @property
    def num_iterations(self) -> int:
        return max(1, self.total_timesteps // self.batch_size)

    def __post_init__(self) -> None:
        for name in ("total_timesteps", "num_envs", "num_steps", "num_minibatches", "update_epochs"):
            check_range(f"algo.{name}", getattr(self, name), ge=1)
        check_range("algo.learning_rate", self.learning_rate, gt=0)
        check_range("algo.clip_coef", self.clip_coef, gt=0)  # a ratio clip of 0 or less clips nothing sensible
        check_range("algo.max_grad_norm", self.max_grad_norm, gt=0)
        for name in ("ent_coef", "vf_coef"):
            check_range(f"algo.{name}", getattr(self, name), ge=0)
        check_range("algo.target_kl", self.target_kl, gt=0, none_ok=True)
        if self.num_minibatches > self.batch_size:
            raise ConfigError(
                f"algo.num_minibatches={self.num_minibatches} exceeds the batch of {self.batch_size} samples "
                "(num_envs * num_steps); lower num_minibatches or raise num_steps"
            )
        for name in ("gamma", "gae_lambda"):
            check_range(f"algo.{name}", getattr(self, name), ge=0.0, le=1.0)
        if self.total_timesteps < self.batch_size:
            raise ConfigError(
                f"algo.total_timesteps={self.total_timesteps} is less than one rollout "
                f"({self.batch_size} = num_envs * num_steps); raise it or shrink the rollout"
            )


@dataclass
class EvaluationConfig:
    interval: int
    """evaluate every N PPO iterations (and after the last)"""
    num_instances: int
    """held-out episodes, the same for every run (fixed seed)"""
    seed: int
    """seed of the held-out episode set (not the run's seed)"""
    metric: Optional[str]
    """headline metric; null = eval/<first reference>_ratio, or eval/return"""
    samples: int
    """also the best of k sampled episodes per held-out episode (eval/sampled_*); 0 = off"""

    def __post_init__(self) -> None:
        check_range("evaluation.interval", self.interval, ge=1)
        check_range("evaluation.samples", self.samples, ge=0)
        check_range("evaluation.num_instances", self.num_instances, ge=1)
        check_range("evaluation.seed", self.seed, ge=0, le=MAX_SEED)


@dataclass
class CheckpointConfig:
    interval: int
    """write checkpoints/last.pt every N PPO iterations (and after the last)"""

    def __post_init__(self) -> None:
        check_range("checkpoint.interval", self.interval, ge=1)


@dataclass
class RunSettings:
    """The validated, typed sections of a run's config that are not `_target_`s."""

    algo: PPOConfig
    evaluation: EvaluationConfig
    checkpoint: CheckpointConfig
    device: torch.device
    deterministic: bool


# -- the `logger` group: `logger=[console,health,wandb,tensorboard]` composes conf/logger/<name>.yaml


@dataclass
class ConsoleConfig:
    progress_bar: bool
    """tqdm bar on stderr with return, greedy ratio and SPS"""


@dataclass
class HealthConfig:
    """Thresholds of the attention and feature health checks (`wsa_lab.tracking.health` says how each is measured)."""

    window: int
    """PPO iterations in the sliding window"""
    min_points: int
    """no verdict before this many iterations (state `unknown`)"""
    collapse_threshold: float
    """collapsed: one PTM's mean weight over the window is above this"""
    static_tolerance: float
    """static: no PTM's weight moves by more than this over the window (max - min)"""
    noise_threshold: float
    """noisy: a weight's jitter around its own smooth trend (std, see wsa_lab.tracking.health) is above this"""
    balanced_low: float
    """balanced: every PTM's mean weight >= balanced_low / P (P=3: 20%)"""
    balanced_high: float
    """balanced: every PTM's mean weight <= balanced_high / P (P=3: 40%)"""
    warn: bool
    """print one line when the state changes (warnings for collapsed, static, noisy)"""
    similarity_threshold: float
    """near-identical PTMs: the mean cosine similarity of two PTMs' adapted features is above this"""
    norm_imbalance_threshold: float
    """imbalanced feature norms: the largest PTM's mean feature norm is more than this times the smallest's"""
    meaningful_state_std: float
    """meaningful (vs state-blind): the window's mean `wsa/attention_state_std` is at least this"""

    def __post_init__(self) -> None:
        if not 3 <= self.min_points <= self.window:
            raise ConfigError(
                f"logger.health: need 3 <= min_points <= window; got window={self.window}, "
                f"min_points={self.min_points}"
            )
        if not 0 < self.collapse_threshold <= 1:
            raise ConfigError(f"logger.health.collapse_threshold must be in (0, 1]; got {self.collapse_threshold}")
        if self.static_tolerance < 0 or self.noise_threshold < 0:
            raise ConfigError("logger.health: static_tolerance and noise_threshold must be >= 0")
        if not -1 <= self.similarity_threshold <= 1:
            raise ConfigError(f"logger.health.similarity_threshold must be in [-1, 1]; got {self.similarity_threshold}")
        if not self.meaningful_state_std >= 0:
            raise ConfigError(f"logger.health.meaningful_state_std must be >= 0; got {self.meaningful_state_std}")
        if not self.norm_imbalance_threshold >= 1:
            raise ConfigError(f"logger.health.norm_imbalance_threshold must be >= 1; got {self.norm_imbalance_threshold}")
        if not 0 <= self.balanced_low <= 1 <= self.balanced_high:
            raise ConfigError(
                "logger.health: balanced_low must be in [0, 1] and balanced_high >= 1 (multiples of the uniform share 1/P)"
            )


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
