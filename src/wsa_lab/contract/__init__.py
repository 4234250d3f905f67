"""The graph env contract: what models and the trainer depend on, instead of any particular env.

- :class:`GraphBatch` (``batch.py``): a batch of graph observations in PyG's flat layout (graphs of any sizes,
  no padding), with the per-node action mask, node positions and the env's image.
- :class:`ObservationSpec` / :class:`ActionSpec` (``spaces.py``): an env's Gymnasium spaces, checked and read
  once at start-up; models size themselves from them.
- :class:`VectorGraphEnv` (``vector.py``): B envs stepped together. ``CoverageEnv`` implements it directly
  (batched torch); :class:`GymVectorGraphEnv` brings any Gymnasium env of the contract (``env=gym``).

The README section "Your own environment" states the contract for users, with a worked example.
"""

from wsa_lab.contract.batch import GraphBatch
from wsa_lab.contract.spaces import ActionSpec, ObservationSpec, action_spec, observation_spec
from wsa_lab.contract.vector import GymVectorGraphEnv, VectorGraphEnv, env_label, ratio_to_reference, specs

__all__ = [
    "ActionSpec", "GraphBatch", "GymVectorGraphEnv", "ObservationSpec", "VectorGraphEnv", "action_spec", "env_label",
    "observation_spec", "ratio_to_reference", "specs",
]
