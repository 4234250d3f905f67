"""Periodic evaluation on a fixed held-out episode set, against the env's reference policies when it has them.

The held-out set is the episodes an env starts from ``reset(seed=evaluation.seed)`` (for Gymnasium envs: env
i of the evaluation batch seeded with ``evaluation.seed + i``), the same for every run and seed. An env that
offers reference policies (``reference_returns()``, e.g. the coverage env's greedy and random) has their
returns computed once; then ``eval/<reference>_ratio`` is the agent's return as a fraction of that reference's
(:func:`~wsa_lab.contract.ratio_to_reference`). Without references the headline metric is ``eval/return``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from wsa_lab.contract import GraphBatch, VectorGraphEnv, env_label, ratio_to_reference
from wsa_lab.errors import ConfigError, EnvError
from wsa_lab.models import ActorCritic, PolicyStep
from wsa_lab.models.backbones import eval_mode

#: A cap on the steps of one evaluation episode: an env whose episodes never end is an error, not a hang.
MAX_EPISODE_STEPS = 100_000


#: ``on_step(obs, policy_step, playing)`` of :func:`play`: called before each env step; ``playing`` (B,) bool marks
#: the envs still in their held-out episode (the others have finished and their states do not count).
StepObserver = Callable[[GraphBatch, PolicyStep, Tensor], None]


@torch.no_grad()
def play(
    agent: ActorCritic, env: VectorGraphEnv, seed: int, deterministic: bool = True,
    on_step: Optional[StepObserver] = None,
) -> Tensor:
    """One episode of `agent` in every env, from ``env.reset(seed=seed)`` (deterministic: most likely node and
    the continuous mean; else sampled). Envs that finish first wait (their next episodes are ignored).
    `on_step` sees every state acted on and what the agent made of it (e.g. its attention weights).

    Shapes:
        - output: ``[B]`` episode returns, on the env's device
    """
    spec = agent.action_spec
    obs = env.reset(seed=seed)
    returns = torch.zeros(env.num_envs, device=env.device)
    finished = torch.zeros(env.num_envs, dtype=torch.bool, device=env.device)
    for _ in range(MAX_EPISODE_STEPS):
        step = agent.get_action_and_value(obs, deterministic=deterministic)
        if on_step is not None:
            on_step(obs, step, ~finished)
        action = step.action
        obs, _reward, terminated, truncated, info = env.step(action.node, spec.policy_to_env(action.continuous))
        ended = (terminated | truncated) & ~finished
        returns = torch.where(ended, info["episode_return"].to(returns.dtype), returns)
        finished |= ended
        if bool(finished.all()):
            return returns
    raise EnvError(f"env {env_label(env)}: an evaluation episode did not end within {MAX_EPISODE_STEPS} steps")


def sampled_play(agent: ActorCritic, env: VectorGraphEnv, seed: int, times: int) -> Tensor:
    """`times` episodes of the stochastic policy in every env, each from ``env.reset(seed=seed)``.

    Episode e samples its actions after ``torch.manual_seed(seed + e)`` inside ``torch.random.fork_rng``: the numbers
    reproduce and the caller's global RNG (training's) is untouched.

    Shapes:
        - output: ``[times, B]`` on the CPU
    """
    devices = [env.device.index or 0] if env.device.type == "cuda" else []
    out = []
    for episode in range(times):
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed + episode)
            out.append(play(agent, env, seed, deterministic=False).cpu())
    return torch.stack(out)


def headline_metric(reference_names: tuple[str, ...] | list[str]) -> str:
    """``eval/<first reference>_ratio`` when the env has references, else ``eval/return``."""
    return f"eval/{reference_names[0]}_ratio" if reference_names else "eval/return"


class Evaluator:
    """Holds the held-out episode set's seed and its reference returns (computed once, at construction).

    Args:
        env: the evaluation env (``evaluation.num_instances`` envs); not used for training.
        seed: ``evaluation.seed``.
        metric: ``evaluation.metric``: the metric the summary's best value, the report, the Hydra sweep objective
            and ``wsa_lab.evaluate`` use; None = :func:`headline_metric`.
        samples: ``evaluation.samples``: also play k sampled episodes per held-out episode and log the best of
            them (``eval/sampled_return``, ``eval/sampled_<reference>_ratio``), apart from greedy decoding, as
            neural combinatorial-optimisation papers report both; 0 = off.
    """

    def __init__(self, env: VectorGraphEnv, seed: int, metric: Optional[str] = None, samples: int = 0) -> None:
        self.env, self.seed, self.samples = env, seed, samples
        env.reset(seed=seed)
        references = env.reference_returns() if hasattr(env, "reference_returns") else {}
        # Read after reference_returns(): an env may drop a reference it could not compute (coverage's optimum).
        self.reference_names: list[str] = list(getattr(env, "reference_names", ()) or references)
        self.reference_returns = {name: references[name].mean().item() for name in self.reference_names}
        for name, value in self.reference_returns.items():
            if value == 0 or not math.isfinite(value):
                # every ratio to it would be NaN: the run would end "completed" with no headline
                raise EnvError(
                    f"env {env_label(env)}: its reference_returns()[{name!r}] averages {value} over the held-out "
                    "episodes, so eval/<reference>_ratio is undefined; return a finite non-zero value or leave that "
                    "reference out of reference_returns()"
                )
        self.metrics = ["eval/return", *(f"eval/{name}_ratio" for name in self.reference_names)]
        self.metric = metric or headline_metric(self.reference_names)
        if self.metric not in self.metrics:
            raise ConfigError(
                f"evaluation.metric={self.metric!r} is not logged for env {env_label(env)}; choose one of {self.metrics} "
                "(or null for the default)"
            )

    @property
    def reference(self) -> dict[str, float]:
        """``reference/<name>_return``, and each other reference as a fraction of the first (e.g. random / greedy)."""
        out = {f"reference/{name}_return": value for name, value in self.reference_returns.items()}
        if self.reference_names:
            first = self.reference_names[0]
            for name in self.reference_names[1:]:
                out[f"reference/{name}_{first}_ratio"] = ratio_to_reference(
                    self.reference_returns[name], self.reference_returns[first]
                )
        return out

    def evaluate(self, agent: ActorCritic) -> dict[str, float]:
        """Deterministic policy on every held-out episode, once (and the best of ``samples`` sampled ones)."""
        with eval_mode(agent):
            returns = play(agent, self.env, self.seed, deterministic=True)
            best = sampled_play(agent, self.env, self.seed, self.samples).max(dim=0).values if self.samples else None
        mean = returns.mean().item()
        out: dict[str, Any] = {
            "eval/return": mean,
            "eval/return_std": returns.std().item() if returns.numel() > 1 else 0.0,
        }
        for name, value in self.reference_returns.items():
            out[f"eval/{name}_ratio"] = ratio_to_reference(mean, value)
        if best is not None:
            out["eval/sampled_return"] = best.mean().item()
            for name, value in self.reference_returns.items():
                out[f"eval/sampled_{name}_ratio"] = ratio_to_reference(out["eval/sampled_return"], value)
        return out
