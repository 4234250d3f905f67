"""Envs that misbehave on purpose, written like a user's env (plain Gymnasium, no wsa_lab imports).

Named by class in the config (`env.entry_point=faulty_envs:FaultyValueGraph`), to exercise that path too.
`fault` picks what goes wrong at the env's `fault_step`-th step: "raise", "nan_reward", "outside_space"
(a node feature above the node space's bound), "no_choice" (an action mask with no allowed node), "edge_count"
(one edge feature row fewer than edge links), "edge_outside" (an edge feature above the edge space's bound),
"fractional_links" (edge links 0.5), "string_reward" (reward "1.0"), "string_flag" (terminated "yes"),
"system_exit" (SystemExit(3)), "keyboard_interrupt" (KeyboardInterrupt from the env's own code).
`BadReferenceValueGraph(optimal=...)` reports an ``optimal`` reference return of NaN or zero, so every ratio to it
would be undefined.
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
            graph = obs["graph"]
            if self.fault == "edge_count":
                obs["graph"] = type(graph)(graph.nodes, graph.edges[:-1], graph.edge_links) if len(graph.edges) else graph
            if self.fault == "edge_outside":
                graph.edges[0, 0] = 9.0
            if self.fault == "fractional_links":
                obs["graph"] = type(graph)(graph.nodes, graph.edges, graph.edge_links.astype(np.float32) + 0.5)
            if self.fault == "string_reward":
                reward = "1.0"
            if self.fault == "string_flag":
                terminated = "yes"
            if self.fault == "system_exit":
                raise SystemExit(3)
            if self.fault == "keyboard_interrupt":
                raise KeyboardInterrupt
        return obs, reward, terminated, truncated, info


class PickAllValueGraph(ValueGraphEnv):
    """Picks every node: the episode ends exactly when nothing is left to pick, so its last observation's action
    mask allows no node (as in covering, packing and scheduling envs)."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("shrink", False)
        super().__init__(**kwargs)

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed, options=options)
        self.picks = self.value.shape[0]
        return obs, info


class PlainValueGraph(ValueGraphEnv):
    """The same env without reference policies (what most users' envs look like)."""

    reference_returns = None  # type: ignore[assignment]
    reference_names = ()


class BadReferenceValueGraph(ValueGraphEnv):
    """Its ``optimal`` reference return is `optimal` (NaN or 0: no ratio to it is defined)."""

    def __init__(self, optimal: float = float("nan"), **kwargs) -> None:
        super().__init__(**kwargs)
        self.optimal = float(optimal)

    def reference_returns(self) -> dict[str, float]:
        return {**super().reference_returns(), "optimal": self.optimal}
