"""PPO hyper-parameters (`conf/algo/ppo.yaml` is validated against this dataclass)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from wsa_lab.errors import ConfigError
from wsa_lab.schema import check_range


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
