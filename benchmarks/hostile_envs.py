"""Envs for benchmarks/hostile_inputs.py (issue 22, case 8): ValueGraph with a reference return that is NaN or zero,
so the headline ratio to it would be nan. Named by class: `env.entry_point=hostile_envs:NanReferenceValueGraph`."""

from __future__ import annotations

from graph_envs.value_graph import ValueGraphEnv


class NanReferenceValueGraph(ValueGraphEnv):
    def reference_returns(self) -> dict[str, float]:
        return {**super().reference_returns(), "optimal": float("nan")}


class ZeroReferenceValueGraph(ValueGraphEnv):
    def reference_returns(self) -> dict[str, float]:
        return {**super().reference_returns(), "optimal": 0.0}
