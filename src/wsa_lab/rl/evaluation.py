"""Periodic evaluation on a fixed held-out instance set, reported as a fraction of the greedy policy."""

from __future__ import annotations

import torch
from torch import Tensor

from wsa_lab.envs import CoverageEnv, CoverageObs, greedy_returns, random_returns, run_episodes
from wsa_lab.models import ActorCritic


@torch.no_grad()
def play(
    agent: ActorCritic, env: CoverageEnv, instances: tuple[Tensor, Tensor], deterministic: bool = True
) -> Tensor:
    """One episode of `agent` per instance (deterministic: most likely node, mean radius; else sampled).

    Shapes:
        - output: ``[B]`` episode returns, on the env's device
    """

    def policy(obs: CoverageObs, _env: CoverageEnv) -> tuple[Tensor, Tensor]:
        action = agent.get_action_and_value(obs, deterministic=deterministic).action
        return action.node, action.radius.clamp(0.0, 1.0)

    return run_episodes(env, policy, instances)


class Evaluator:
    """Holds the held-out instances and their reference returns (computed once, at construction).

    `eval/greedy_ratio` = mean agent return / mean greedy return over the same instances; the
    random policy's ratio is the floor a learning agent must clear.
    """

    def __init__(self, env: CoverageEnv, seed: int, radius_grid: int = 11) -> None:
        self.env = env
        env.reset(seed=seed)
        self.instances = (env.pos.clone(), env.demand.clone())
        self.greedy_return = greedy_returns(env, self.instances, radius_grid).mean().item()
        self.random_return = random_returns(env, self.instances, seed).mean().item()

    @property
    def reference(self) -> dict[str, float]:
        return {
            "reference/greedy_return": self.greedy_return,
            "reference/random_return": self.random_return,
            "reference/random_greedy_ratio": self.random_return / self.greedy_return,
        }

    def evaluate(self, agent: ActorCritic) -> dict[str, float]:
        """Deterministic policy (most likely node, mean radius) on every held-out instance, once."""
        was_training = agent.training
        agent.eval()
        returns = play(agent, self.env, self.instances, deterministic=True)
        agent.train(was_training)
        mean = returns.mean().item()
        return {
            "eval/return": mean,
            "eval/return_std": returns.std().item() if returns.numel() > 1 else 0.0,
            "eval/greedy_ratio": mean / self.greedy_return,
        }
