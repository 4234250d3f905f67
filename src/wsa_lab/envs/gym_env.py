"""Single-instance gymnasium wrapper around :class:`CoverageEnv`."""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.utils import seeding

from wsa_lab.contract import GraphBatch

from .coverage import REFERENCE_NAMES, CoverageEnv, coverage_spaces


class CoverageGymEnv(gymnasium.Env):
    """Gymnasium view of one coverage instance (``CoverageEnv(num_envs=1, autoreset=False)``), in the graph env
    contract's form (``env=gym env.id=wsa_lab.envs:wsa_lab/Coverage-v0`` trains on it through gymnasium's vector envs).

    Observation (numpy, one instance): ``graph`` a ``GraphInstance`` (node features ``(N, 6)``, one edge per
    kNN neighbour ``[neighbour, node]`` with its length), ``action_mask`` ``(N,)`` int8 (1 = allowed),
    ``positions`` ``(N, 2)``, ``image`` ``(3, H, W)`` float32. Action: ``{"node": int, "radius": (1,) float32
    in [0, 1]}``. ``reference_returns()``: the greedy and random references of the current instance.

    Seeding follows gymnasium: ``reset(seed=s)`` reseeds ``self.np_random`` and every reset
    draws the torch seed of its instance from it. The constructor's ``seed`` seeds
    ``np_random`` until the first seeded reset. ``options={"instance": (pos, demand)}``
    (``[N, 2]`` / ``[N]`` or with a leading 1) plays a fixed instance.

    ``render()`` (``render_mode="rgb_array"``) returns the observation image as an
    ``(H, W, 3)`` uint8 array flipped vertically so that ``y`` points up.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, seed: int = 0, render_mode: str | None = None, **settings: Any) -> None:
        """`settings`: :class:`CoverageEnv`'s instance settings (num_nodes, num_sites, ..., the keys of
        conf/env/coverage.yaml); those not given keep that file's values."""
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}")
        self.render_mode = render_mode
        self.env = CoverageEnv(num_envs=1, autoreset=False, device="cpu", seed=seed, **settings)
        self._np_random, self._np_random_seed = seeding.np_random(seed)

        self.observation_space, self.action_space = coverage_spaces(self.env.num_nodes, self.env.image_size, self.env.coverage_radii)

    reference_names = REFERENCE_NAMES

    def _numpy_obs(self, obs: GraphBatch) -> dict[str, Any]:
        # Copies: observations must not alias the env's live torch state (check_env tests this).
        # The clamp guards float rounding of demand * N against the space's upper bound N.
        high = float(self.env.num_nodes)
        links = obs.edge_index.t().numpy().astype(np.int64)  # one instance: global ids are local ids
        return {
            "graph": spaces.GraphInstance(
                nodes=obs.x.clamp(max=high).numpy().astype(np.float32),
                edges=obs.edge_attr.numpy().astype(np.float32),
                edge_links=links,
            ),
            "action_mask": obs.action_mask.numpy().astype(np.int8),
            "positions": obs.positions.numpy().astype(np.float32),
            "image": obs.image[0].numpy().astype(np.float32),
        }

    def reference_returns(self) -> dict[str, float]:
        """Returns of the greedy and random references on the current instance (from its start)."""
        return {name: float(value[0]) for name, value in self.env.reference_returns().items()}

    def _info(self) -> dict[str, Any]:
        return {
            "episode_return": float(self.env.episode_return[0]),
            "covered_demand": float((self.env.demand * self.env.covered).sum()),
            "t": int(self.env.t[0]),
        }

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        instances = None
        if options is not None and options.get("instance") is not None:
            pos, demand = (torch.as_tensor(x, dtype=torch.float32) for x in options["instance"])
            instances = (pos.reshape(1, -1, 2), demand.reshape(1, -1))
            if instances[0].shape[1] != self.env._default_num_nodes:
                raise ValueError("options['instance'] must have num_nodes nodes (spaces are fixed)")
        torch_seed = int(self.np_random.integers(0, 2**63 - 1))
        obs = self.env.reset(seed=torch_seed, instances=instances)
        return self._numpy_obs(obs), self._info()

    def step(
        self, action: dict[str, Any]
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        node = torch.as_tensor(np.asarray(action["node"]), dtype=torch.long).reshape(1)
        radius = torch.as_tensor(np.asarray(action["radius"]), dtype=torch.float32).reshape(1)
        obs, reward, terminated, truncated, _ = self.env.step(node, radius)
        return (
            self._numpy_obs(obs),
            float(reward[0]),
            bool(terminated[0]),
            bool(truncated[0]),
            self._info(),
        )

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            gymnasium.logger.warn("render() called without render_mode; set render_mode='rgb_array'")
            return None
        image = self.env.observe().image[0]  # [3, H, W], row 0 = y near 0
        rgb = (image.permute(1, 2, 0).flip(0) * 255.0).round().to(torch.uint8)
        return rgb.numpy().copy()
