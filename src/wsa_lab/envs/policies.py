"""Reference policies (random, one-step greedy) and an episode runner for baselines.

They read a batched coverage state (:class:`CoverageState`, which :class:`~wsa_lab.envs.CoverageEnv` is), so the
env can compute its reference returns with them without this module depending on the env.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Protocol

import torch
from torch import Tensor

from .geometry import uncovered_within
from wsa_lab.contract import GraphBatch


class CoverageState(Protocol):
    """What the policies read and drive of a batched coverage env (see :class:`~wsa_lab.envs.CoverageEnv`)."""

    num_envs: int
    num_nodes: int
    num_sites: int
    max_episode_steps: Optional[int]
    cost: float
    r_min: float
    r_max: float
    autoreset: bool
    device: torch.device
    pos: Tensor  # [B, N, 2]
    demand: Tensor  # [B, N]
    covered: Tensor  # [B, N] bool
    ended: Tensor  # [B] bool
    episode_return: Tensor  # [B]

    @property
    def action_mask(self) -> Tensor: ...  # [B, N] bool

    def physical_radius(self, radius: Tensor) -> Tensor: ...

    def reset(self, *, instances: Optional[tuple[Tensor, Tensor]] = None) -> GraphBatch: ...

    def step(self, node: Tensor, radius: Tensor) -> tuple[Any, ...]: ...


Policy = Callable[[GraphBatch, CoverageState], tuple[Tensor, Tensor]]


def random_action(env: CoverageState, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Uniform node among the unmasked ones, uniform action radius in ``[0, 1]``.

    Shapes:
        - output: node ``[B]`` long, radius ``[B]`` float32 (on ``env.device``)
    """
    B, N = env.num_envs, env.num_nodes
    scores = torch.rand(B, N, generator=generator, device=generator.device).to(env.device)
    # Masked nodes get -1 < any uniform score, so argmax picks uniformly among allowed ones.
    node = scores.masked_fill(~env.action_mask, -1.0).argmax(dim=1)
    radius = torch.rand(B, generator=generator, device=generator.device).to(env.device)
    return node, radius


def one_step_rewards(env: CoverageState, grid: Tensor) -> Tensor:
    """This step's reward for opening each site with each action radius of `grid`: newly covered demand minus
    ``cost * r^2``. Gains come from :func:`uncovered_within` (chunked: bounded memory for large N). Masked sites
    are not excluded.

    Shapes:
        - input: grid ``[R]`` action radii in ``[0, 1]``, on ``env.device``
        - output: ``[B, N, R]``
    """
    r = env.physical_radius(grid)  # [R], non-decreasing
    r_sq = r * r  # the same float op as within_radius, so coverage decisions match the env
    uncovered = env.demand * (~env.covered).float()  # [B, N]
    return uncovered_within(env.pos, uncovered, r_sq) - env.cost * r_sq


def greedy_action(env: CoverageState, radius_grid: int = 11) -> tuple[Tensor, Tensor]:
    """Action with the best immediate reward (:func:`one_step_rewards`) over unmasked sites x
    ``linspace(0, 1, radius_grid)``. Ties go to the lowest site index, then the lowest radius.

    Shapes:
        - output: node ``[B]`` long, radius ``[B]`` float32 (action radius in ``[0, 1]``)
    """
    if radius_grid < 1:
        raise ValueError(f"radius_grid must be >= 1, got {radius_grid}")
    B, N, R = env.num_envs, env.num_nodes, radius_grid
    grid = torch.linspace(0.0, 1.0, R, device=env.device)
    score = one_step_rewards(env, grid).masked_fill(~env.action_mask[:, :, None], -float("inf"))
    # max returns the first maximum: lowest site, then lowest radius.
    best_flat = score.reshape(B, N * R).argmax(dim=1)
    return best_flat // R, grid[best_flat % R]


def run_episodes(
    env: CoverageState, policy: Policy, instances: tuple[Tensor, Tensor] | None = None
) -> Tensor:
    """Play one episode in every env and return each env's episode return.

    Autoreset is switched off for the duration (restored afterwards), so every env plays
    exactly one episode; the env is left in its ended state.

    Shapes:
        - output: ``[B]`` float32
    """
    saved = env.autoreset
    env.autoreset = False
    try:
        obs = env.reset(instances=instances)
        limit = env.num_sites if env.max_episode_steps is None else min(env.num_sites, env.max_episode_steps)
        for _ in range(limit):
            if bool(env.ended.all()):
                break
            node, radius = policy(obs, env)
            obs, *_ = env.step(node, radius)
        if not bool(env.ended.all()):
            raise RuntimeError("some envs did not end within the episode length")
        return env.episode_return.clone()
    finally:
        env.autoreset = saved


def greedy_returns(
    env: CoverageState, instances: tuple[Tensor, Tensor] | None = None, radius_grid: int = 11
) -> Tensor:
    """Episode returns of :func:`greedy_action` on ``instances`` (or fresh ones). Shapes: ``[B]``."""
    return run_episodes(env, lambda obs, e: greedy_action(e, radius_grid), instances)


def random_returns(
    env: CoverageState, instances: tuple[Tensor, Tensor] | None = None, seed: int = 0
) -> Tensor:
    """Episode returns of :func:`random_action` seeded with ``seed``. Shapes: ``[B]``."""
    generator = torch.Generator().manual_seed(seed)
    return run_episodes(env, lambda obs, e: random_action(e, generator), instances)
