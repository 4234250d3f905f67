"""ValueGraph: pick valuable nodes of a random graph, optionally with a continuous "bid" per pick.

Each episode draws a random geometric graph of `min_nodes..max_nodes` nodes (a different size per episode).
Every node has a hidden value v in [0, 1] and a target vector t in [0, 1]^d. The agent picks `picks` nodes
one after the other; a pick earns v of the chosen node minus ||a - t||^2 for its continuous action a (when
`continuous_dim` > 0), and the chosen node is removed from the graph (`shrink=True`, so the graph gets
smaller within the episode) or masked (`shrink=False`).

Node features: [v, t_1..t_d, 1 if already picked] (v is visible, so the best policy is learnable:
pick the largest v, bid its t). Edges: both directions between nodes closer than `radius`, with the
distance as edge feature.

Observation options (to exercise every form of the graph env contract):
- default: Dict {graph, action_mask (Sequence of Discrete(2), stack=True), positions (Sequence of Box(2))};
- `with_image=True`: adds a (1, 16, 16) image of the node values;
- `bare_graph=True`: the observation is the Graph alone (no mask, no positions), with shrink=True so
  every remaining node may be chosen.
"""

from __future__ import annotations

from typing import Any, Optional

import gymnasium
import numpy as np
from gymnasium import spaces


class ValueGraphEnv(gymnasium.Env):
    metadata = {"render_modes": []}

    def __init__(
        self,
        min_nodes: int = 6,
        max_nodes: int = 12,
        picks: int = 3,
        continuous_dim: int = 0,
        radius: float = 0.5,
        shrink: bool = True,
        bare_graph: bool = False,
        with_image: bool = False,
    ) -> None:
        if not 1 <= picks < min_nodes <= max_nodes:
            raise ValueError(f"need 1 <= picks < min_nodes <= max_nodes, got {picks}, {min_nodes}, {max_nodes}")
        if bare_graph and not shrink:
            raise ValueError("bare_graph needs shrink=True (there is no mask to hide picked nodes)")
        self.min_nodes, self.max_nodes, self.picks = min_nodes, max_nodes, picks
        self.continuous_dim, self.radius, self.shrink = continuous_dim, radius, shrink
        self.bare_graph, self.with_image = bare_graph, with_image
        width = 2 + continuous_dim
        graph = spaces.Graph(
            node_space=spaces.Box(0.0, 1.0, (width,), dtype=np.float32),
            edge_space=spaces.Box(0.0, 2.0, (1,), dtype=np.float32),
        )
        if bare_graph:
            self.observation_space: spaces.Space = graph
        else:
            entries: dict[str, spaces.Space] = {
                "graph": graph,
                "action_mask": spaces.Sequence(spaces.Discrete(2), stack=True),
                "positions": spaces.Sequence(spaces.Box(0.0, 1.0, (2,), dtype=np.float32), stack=True),
            }
            if with_image:
                entries["image"] = spaces.Box(0.0, 1.0, (1, 16, 16), dtype=np.float32)
            self.observation_space = spaces.Dict(entries)
        action: dict[str, spaces.Space] = {"node": spaces.Discrete(max_nodes)}
        if continuous_dim:
            action["bid"] = spaces.Box(0.0, 1.0, (continuous_dim,), dtype=np.float32)
        self.action_space = spaces.Dict(action)

    # ------------------------------------------------------------------ episodes
    def reset(self, *, seed: Optional[int] = None, options: Optional[dict[str, Any]] = None):
        super().reset(seed=seed)
        n = int(self.np_random.integers(self.min_nodes, self.max_nodes + 1))
        self.value = self.np_random.random(n).astype(np.float32)
        self.target = self.np_random.random((n, self.continuous_dim)).astype(np.float32)
        self.pos = self.np_random.random((n, 2)).astype(np.float32)
        self.alive = np.ones(n, dtype=bool)  # not removed (shrink) / not picked
        self.t = 0
        return self._obs(), {}

    def step(self, action: dict[str, Any]):
        ids = np.flatnonzero(self.alive) if self.shrink else np.arange(self.value.shape[0])
        choice = int(action["node"])
        if not 0 <= choice < ids.shape[0] or not self.alive[ids[choice]]:
            # an invalid pick (only a checker's random action makes one) earns nothing and is not counted
            return self._obs(), 0.0, False, False, {}
        node = ids[choice]
        reward = float(self.value[node])
        if self.continuous_dim:
            bid = np.clip(np.asarray(action["bid"], dtype=np.float32), 0.0, 1.0)
            reward -= float(((bid - self.target[node]) ** 2).sum())
        self.alive[node] = False
        self.t += 1
        return self._obs(), reward, self.t >= self.picks, False, {}

    def reference_returns(self) -> dict[str, float]:
        """The best possible return of this episode (the `picks` largest values, exact bids), and random's mean."""
        best = float(np.sort(self.value)[::-1][: self.picks].sum())
        random_mean = float(self.value.mean() * self.picks - self.picks * self.continuous_dim / 6.0)
        return {"optimal": best, "random": random_mean}

    reference_names = ("optimal", "random")

    # ------------------------------------------------------------------ observation
    def _obs(self):
        ids = np.flatnonzero(self.alive) if self.shrink else np.arange(self.value.shape[0])
        picked = (~self.alive[ids]).astype(np.float32)
        nodes = np.concatenate([self.value[ids, None], self.target[ids], picked[:, None]], axis=1).astype(np.float32)
        pos = self.pos[ids]
        dist = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
        src, dst = np.nonzero((dist < self.radius) & ~np.eye(len(ids), dtype=bool))
        graph = spaces.GraphInstance(
            nodes=nodes,
            edges=dist[src, dst].astype(np.float32).reshape(-1, 1),
            edge_links=np.stack([src, dst], axis=1).astype(np.int64),
        )
        if self.bare_graph:
            return graph
        obs = {"graph": graph, "action_mask": self.alive[ids].astype(np.int64), "positions": pos}
        if self.with_image:
            image = np.zeros((1, 16, 16), dtype=np.float32)
            cells = np.minimum((pos * 16).astype(int), 15)
            image[0, cells[:, 1], cells[:, 0]] = self.value[ids] * self.alive[ids]
            obs["image"] = image
        return obs
