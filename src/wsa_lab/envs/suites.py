"""Evaluation suites: named conditions that shift a run's training environment, with fixed instances.

A suite (``conf/eval_env/<name>.yaml``) maps condition names to a :class:`ConditionSpec`. A condition
starts from the run's training env (``cfg.env``) and changes it:

- ``scale``: multiply env arguments (``num_nodes: 2, num_sites: 2`` doubles N and K; integers round
  half up, at least 1);
- ``env``: replace env arguments outright (``num_clusters: 8``, ``cost: 2.0``);
- ``demand_sigma``: log-std of the log-normal demand weights (the generator's is 1; 0 gives uniform
  demand, 2 a heavier tail); positions are the same as without it;
- ``country``: the country's ``num_nodes`` most populous cities instead of generated instances
  (:mod:`wsa_lab.envs.cities`).

``image_size`` cannot change: the agent's CNNs read images of the training size. Generated instances
come from a fresh generator seeded with the suite's seed (not a training or validation seed), so every
run of a comparison plays the same instances. :func:`prepare_condition` computes the instances and the
greedy and random references once; callers cache it per condition (see :func:`condition_key`).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from wsa_lab.errors import ConfigError
from wsa_lab.schema import structured, unknown_key_error

from .cities import city_instance
from .coverage import CoverageEnv
from .instances import generate_instances
from .policies import greedy_returns, random_returns

#: CoverageEnv arguments a condition may not touch: set per evaluation, or fixed by the trained agent.
FIXED_ENV_KEYS = ("num_envs", "seed", "device", "autoreset", "image_size")
#: Integer env arguments: scaled values are rounded half up (and kept >= 1).
INT_ENV_KEYS = ("num_nodes", "num_sites", "num_clusters", "knn_k", "max_episode_steps")


@dataclass
class ConditionSpec:
    """One condition of a suite, as written in ``conf/eval_env/<suite>.yaml``."""

    scale: dict = field(default_factory=dict)  # env argument -> factor on the run's value
    env: dict = field(default_factory=dict)  # env argument -> value (applied after scale)
    demand_sigma: Optional[float] = None  # log-std of log-normal demand; 0 = uniform; null = generator's (1)
    country: Optional[str] = None  # ISO 3166-1 alpha-2 code: that country's cities instead of generated instances
    min_population: int = 15000  # smallest city kept (cities only): 500, 1000, 5000 or 15000


@dataclass(frozen=True)
class Condition:
    """A condition resolved against a run's env: the exact ``CoverageEnv`` arguments and instance source."""

    name: str
    env: dict[str, Any]  # CoverageEnv kwargs except FIXED_ENV_KEYS[:4]
    demand_sigma: Optional[float] = None
    country: Optional[str] = None
    min_population: int = 15000

    @property
    def num_nodes(self) -> int:
        return int(self.env["num_nodes"])

    @property
    def num_sites(self) -> int:
        return int(self.env["num_sites"])

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (what the condition plays)."""
        out: dict[str, Any] = {"env": dict(self.env)}
        if self.country is not None:
            out.update(country=self.country, min_population=self.min_population)
        else:
            out["demand_sigma"] = 1.0 if self.demand_sigma is None else self.demand_sigma
        return out

    def instances(self, num_instances: int, seed: int) -> tuple[Tensor, Tensor]:
        """The condition's instances: ``num_instances`` generated ones (seeded), or the one city instance.

        Shapes:
            - output: ``pos [B, N, 2]``, ``demand [B, N]`` (``B = 1`` for cities)
        """
        if self.country is not None:
            return city_instance(self.country, self.num_nodes, self.min_population).batch(1)
        generator = torch.Generator().manual_seed(seed)
        pos, demand = generate_instances(
            num_instances,
            self.num_nodes,
            num_clusters=int(self.env["num_clusters"]),
            cluster_std=float(self.env["cluster_std"]),
            background_frac=float(self.env["background_frac"]),
            generator=generator,
        )
        if self.demand_sigma is not None:  # redraw demand only: positions stay those of the default demand
            weights = torch.exp(self.demand_sigma * torch.randn(pos.shape[:2], generator=generator))
            demand = weights / weights.sum(dim=1, keepdim=True)
        return pos, demand

    def make_env(self, num_envs: int, seed: int = 0, device: str | torch.device = "cpu") -> CoverageEnv:
        """A ``CoverageEnv`` with this condition's arguments (no autoreset: one episode per env)."""
        try:
            return CoverageEnv(**self.env, num_envs=num_envs, seed=seed, device=device, autoreset=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"eval_env condition {self.name!r}: {exc}") from exc


def _env_defaults() -> dict[str, Any]:
    params = inspect.signature(CoverageEnv).parameters
    return {name: p.default for name, p in params.items() if name not in FIXED_ENV_KEYS[:4]}


def resolve_condition(name: str, spec: ConditionSpec, base_env: Mapping[str, Any]) -> Condition:
    """Apply ``spec`` to the run's env arguments ``base_env`` (``cfg.env``, ``_target_`` ignored)."""
    where = f"eval_env.conditions.{name}"
    env = _env_defaults()
    allowed = [k for k in env if k not in FIXED_ENV_KEYS]
    for key, value in base_env.items():
        if key != "_target_":
            env[key] = value
    for part in ("scale", "env"):
        for key, value in getattr(spec, part).items():
            if key in FIXED_ENV_KEYS:
                raise ConfigError(f"{where}.{part}.{key}: cannot be changed by an evaluation condition")
            if key not in allowed:
                raise unknown_key_error(key, allowed, f"{where}.{part}")
            if part == "scale":
                if env[key] is None:
                    continue  # e.g. max_episode_steps: null stays null
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                    raise ConfigError(f"{where}.scale.{key}: expected a positive number, got {value!r}")
                scaled = env[key] * value
                env[key] = max(1, math.floor(scaled + 0.5)) if key in INT_ENV_KEYS else float(scaled)
            else:
                env[key] = value
    if spec.demand_sigma is not None and spec.demand_sigma < 0:
        raise ConfigError(f"{where}.demand_sigma: must be >= 0, got {spec.demand_sigma}")
    if spec.country is not None and spec.demand_sigma is not None:
        raise ConfigError(f"{where}: demand_sigma does not apply to city instances (demand = population)")
    return Condition(name, env, spec.demand_sigma, spec.country, spec.min_population)


def build_conditions(conditions: Mapping[str, Any] | DictConfig, base_env: Mapping[str, Any] | DictConfig) -> list[Condition]:
    """Every condition of a suite, resolved against ``base_env``, in the suite's order."""
    if isinstance(conditions, DictConfig):
        conditions = OmegaConf.to_container(conditions, resolve=True)
    if isinstance(base_env, DictConfig):
        base_env = OmegaConf.to_container(base_env, resolve=True)
    if not conditions:
        raise ConfigError("eval_env.conditions: the suite has no conditions")
    return [
        resolve_condition(str(name), structured(ConditionSpec, spec, f"eval_env.conditions.{name}"), base_env)
        for name, spec in conditions.items()
    ]


def condition_key(condition: Condition, **settings: Any) -> str:
    """A cache key: two runs whose conditions resolve to the same env and instances share references."""
    return json.dumps({**dataclasses.asdict(condition), **settings}, sort_keys=True, default=str)


@dataclass
class PreparedCondition:
    """A condition's fixed instances and its reference returns (computed once, shared by every run).

    ``random_returns`` has one entry per (instance, episode): instance ``i``'s episodes are at
    ``i * episodes ... (i + 1) * episodes - 1`` (the layout of :meth:`repeated_instances`).
    """

    condition: Condition
    instances: tuple[Tensor, Tensor]
    episodes: int
    greedy_returns: Tensor  # [B]
    random_returns: Tensor  # [B * episodes]

    @property
    def num_instances(self) -> int:
        return int(self.instances[0].shape[0])

    def repeated_instances(self) -> tuple[Tensor, Tensor]:
        """Each instance ``episodes`` times in a row: ``[B * episodes, N, 2]``, ``[B * episodes, N]``."""
        pos, demand = self.instances
        return pos.repeat_interleave(self.episodes, dim=0), demand.repeat_interleave(self.episodes, dim=0)

    @property
    def greedy_return(self) -> float:
        return self.greedy_returns.mean().item()

    @property
    def random_return(self) -> float:
        return self.random_returns.mean().item()


def prepare_condition(
    condition: Condition,
    num_instances: int,
    episodes: int,
    seed: int,
    radius_grid: int = 11,
    device: str | torch.device = "cpu",
) -> PreparedCondition:
    """Build the condition's instances and play the greedy reference (once) and the random policy."""
    if num_instances < 1 or episodes < 1:
        raise ConfigError(f"num_instances and episodes must be >= 1, got {num_instances} and {episodes}")
    instances = condition.instances(num_instances, seed)
    env = condition.make_env(instances[0].shape[0], seed=seed, device=device)
    greedy = greedy_returns(env, instances, radius_grid).cpu()
    prepared = PreparedCondition(condition, instances, episodes, greedy, torch.empty(0))
    prepared.random_returns = random_returns(env, prepared.repeated_instances(), seed).cpu()
    return prepared
