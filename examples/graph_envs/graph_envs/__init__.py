"""A researcher's own graph envs, written as plain Gymnasium envs (this package does not import wsa_lab).

`import graph_envs` registers them; wsa_lab trains on them with
    PYTHONPATH=examples/graph_envs python -m wsa_lab env=gym env.id=graph_envs:graph_envs/ValueGraph-v0 ptm=[graph_cnn]
(`graph_envs:` makes Gymnasium import this package, which registers the ids, before making the env).
"""

import gymnasium

from graph_envs.value_graph import ValueGraphEnv

__all__ = ["ValueGraphEnv"]

if "graph_envs/ValueGraph-v0" not in gymnasium.registry:
    gymnasium.register(id="graph_envs/ValueGraph-v0", entry_point="graph_envs.value_graph:ValueGraphEnv")
