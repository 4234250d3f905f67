"""Envs that misbehave on purpose, written like a user's env (plain Gymnasium, no wsa_lab imports).

Named by class in the config (`env.entry_point=faulty_envs:FaultyValueGraph`), to exercise that path too.
`fault` picks what goes wrong at the env's `fault_step`-th step: "raise", "nan_reward", "outside_space"
(a node feature above the node space's bound), "no_choice" (an action mask with no allowed node).
"""

from __future__ import annotations

import numpy as np
from graph_envs.value_graph import ValueGraphEnv


class FaultyValueGraph(ValueGraphEnv):
    def __init__(self, fault: str = "raise", fault_step: int = 5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.fault, self.fault_step, self.steps = fault, fault_step, 0

    def step(self, action):
        self.steps += 1
        obs, reward, terminated, truncated, info = super().step(action)
        if self.steps == self.fault_step:
            if self.fault == "raise":
                raise RuntimeError("solver exploded")
            if self.fault == "nan_reward":
                reward = float("nan")
            if self.fault == "outside_space":
                obs["graph"].nodes[0, 0] = 7.0
            if self.fault == "no_choice":
                obs["action_mask"] = np.zeros_like(obs["action_mask"])
        return obs, reward, terminated, truncated, info


class PlainValueGraph(ValueGraphEnv):
    """The same env without reference policies (what most users' envs look like)."""

    reference_returns = None  # type: ignore[assignment]
    reference_names = ()
