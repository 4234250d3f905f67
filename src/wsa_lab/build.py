"""The builders: the env, actor-critic, evaluator and PPO of a composed config.

The env and the actor-critic are made by `hydra.utils.instantiate` from their config groups (``env``,
``actor_critic``), the evaluator and PPO from the validated settings (``evaluation``, ``algo``). Training,
evaluation, pre-training, the evaluation suites and the benchmark all build through here, so each of them gets
the env and the agent exactly as a training run does. (The run's tracker is :func:`wsa_lab.tracking.build_tracker`.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from wsa_lab.contract import VectorGraphEnv, specs
from wsa_lab.errors import ConfigError, WsaLabError
from wsa_lab.models import ActorCritic
from wsa_lab.rl import PPO, Evaluator
from wsa_lab.seeding import deterministic_kernels, seed_everything
from wsa_lab.trust import check_actor_critic_node, check_env_node


def instantiate_node(node: DictConfig, where: str, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate`, with the component's own argument errors as one-line ConfigErrors."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, WsaLabError):
            raise cause from None
        if isinstance(cause, (ValueError, TypeError)):  # e.g. the env's checks: K >= N, r_min > r_max
            raise ConfigError(f"{where}: {cause}") from cause
        raise


def make_env(cfg: DictConfig, **kwargs: Any) -> VectorGraphEnv:
    """The vector env of `cfg.env` (any :class:`~wsa_lab.contract.VectorGraphEnv`); `num_envs`, `seed`, `device`
    come from the caller. The config may name an env class there and no other callable (:mod:`wsa_lab.trust`)."""
    check_env_node(cfg.env)
    return instantiate_node(cfg.env, "env", **kwargs)


def make_agent(cfg: DictConfig, env: VectorGraphEnv) -> ActorCritic:
    """The actor-critic of `cfg.actor_critic`, sized from `env`'s spaces (checked against the contract here)."""
    observation, action = specs(env)
    check_actor_critic_node(cfg.actor_critic)  # wsa_lab's builder, nothing else (wsa_lab.trust)
    build = instantiate_node(cfg.actor_critic, "actor_critic", _partial_=True, _convert_="all")
    try:
        return build(observation_spec=observation, action_spec=action)
    except (ValueError, TypeError) as exc:
        if isinstance(exc, WsaLabError):
            raise
        raise ConfigError(f"actor_critic: {exc}") from exc


def close_env(env: Any) -> None:
    """Close `env` if it holds resources (Gymnasium vector envs do; async ones hold worker processes)."""
    close = getattr(env, "close", None)
    if close is not None:
        close()


@dataclass
class Training:
    """What a training run is made of: its env, the agent, PPO, and the evaluator on its own env (None when not
    asked for)."""

    env: Any  # the training env (wrapped, when the caller asked for it)
    agent: ActorCritic
    ppo: PPO
    evaluator: Optional[Evaluator]


def build_training(
    cfg: DictConfig,
    settings: Any,
    opened: list[Any],
    evaluation: bool = True,
    wrap_env: Optional[Callable[[VectorGraphEnv], Any]] = None,
) -> Training:
    """Build a run from its config and validated settings (:func:`wsa_lab.config.validate`).

    The order is the run's order of random draws, on which its numbers depend: kernels and seeds, the training
    env, the agent, the evaluation env and its :class:`~wsa_lab.rl.Evaluator` (reference returns computed here),
    then PPO (the training env's first reset). Every env is appended to `opened` as soon as it exists, so the
    caller closes it (:func:`close_env`) even when a later step fails. `wrap_env` wraps the training env before
    anything uses it (the benchmark's timer).
    """
    algo, device = settings.algo, settings.device
    deterministic_kernels(device, settings.deterministic)
    seed_everything(cfg.seed)
    env = make_env(cfg, num_envs=algo.num_envs, seed=cfg.seed, device=device)
    opened.append(env)
    if wrap_env is not None:
        env = wrap_env(env)
    agent = make_agent(cfg, env).to(device)
    evaluator = None
    if evaluation:
        ev = settings.evaluation
        eval_env = make_env(cfg, num_envs=ev.num_instances, seed=ev.seed, device=device)
        opened.append(eval_env)
        evaluator = Evaluator(eval_env, ev.seed, ev.metric, ev.samples)
    return Training(env, agent, PPO(agent, env, algo, reset_seed=cfg.seed), evaluator)
