"""A tiny env and PTM where what the policy needs is known by construction (the PTM ablation's behavioural test).

`SignalGraph`: one-step episodes on a graph of 4 nodes whose features are all one hidden signal s ~ U(0, 1); any
node may be picked and the reward is 1 - |bid - s| for the continuous bid. A policy earns it only by reading s.
`NodeFeatures`: a parameter-free graph PTM that passes the node features through (pooled by wsa_lab: mean, max),
so its adapted feature can carry s exactly when the test sets the adapter's weights.
Plain Gymnasium and torch, no wsa_lab imports (as a user's package).
"""

from __future__ import annotations

import gymnasium
import numpy as np
from gymnasium import spaces
from torch import Tensor, nn

NODES = 4


class SignalGraph(gymnasium.Env):
    metadata = {"render_modes": []}
    reference_names = ("optimal",)

    def __init__(self) -> None:
        graph = spaces.Graph(node_space=spaces.Box(0.0, 1.0, (2,), np.float32), edge_space=spaces.Box(0.0, 1.0, (1,), np.float32))
        self.observation_space = spaces.Dict({
            "graph": graph,
            "action_mask": spaces.Sequence(spaces.Discrete(2), stack=True),
            "positions": spaces.Sequence(spaces.Box(0.0, 1.0, (2,), np.float32), stack=True),
        })
        self.action_space = spaces.Dict({"node": spaces.Discrete(NODES), "bid": spaces.Box(0.0, 1.0, (1,), np.float32)})

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.signal = float(self.np_random.random())
        self.pos = self.np_random.random((NODES, 2)).astype(np.float32)
        return self._obs(), {}

    def step(self, action):
        bid = float(np.clip(np.asarray(action["bid"], dtype=np.float32), 0.0, 1.0)[0])
        return self._obs(), 1.0 - abs(bid - self.signal), True, False, {}

    def reference_returns(self) -> dict[str, float]:
        return {"optimal": 1.0}

    def _obs(self):
        ring = np.arange(NODES)
        links = np.stack([np.concatenate([ring, (ring + 1) % NODES]), np.concatenate([(ring + 1) % NODES, ring])], axis=1)
        graph = spaces.GraphInstance(
            nodes=np.full((NODES, 2), self.signal, dtype=np.float32),
            edges=np.ones((len(links), 1), dtype=np.float32),
            edge_links=links.astype(np.int64),
        )
        return {"graph": graph, "action_mask": np.ones(NODES, dtype=np.int64), "positions": self.pos.copy()}


class NodeFeatures(nn.Module):
    """Per-node rows = the node features themselves."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.in_channels = in_channels

    def forward(self, x: Tensor, edge_index: Tensor, batch: Tensor) -> Tensor:
        return x
