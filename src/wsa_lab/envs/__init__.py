"""The built-in facility-coverage environment on spatial kNN graphs (batched torch + gymnasium).

It is one implementation of the graph env contract (`wsa_lab.contract`); nothing outside `envs/`, the evaluation
suites' coverage conditions (`wsa_lab.suites`) and the benchmark depends on it.
"""

import gymnasium

from .coverage import REFERENCE_NAMES, CoverageEnv, coverage_spaces
from .gym_env import CoverageGymEnv
from .instances import generate_instances, knn_neighbors
from .observation import NODE_FEATURE_DIM, NODE_FEATURE_NAMES
from .policies import greedy_action, greedy_returns, random_action, random_returns, run_episodes
from .render import render_image
from .cities import CityInstance, city_instance
from .shifted import ShiftedCoverageEnv

GYM_ENV_ID = "wsa_lab/Coverage-v0"

# Guard: re-registering an id makes gymnasium warn (e.g. on importlib.reload).
if GYM_ENV_ID not in gymnasium.registry:
    gymnasium.register(id=GYM_ENV_ID, entry_point="wsa_lab.envs.gym_env:CoverageGymEnv")

__all__ = [
    "GYM_ENV_ID",
    "NODE_FEATURE_DIM",
    "NODE_FEATURE_NAMES",
    "CityInstance",
    "CoverageEnv",
    "CoverageGymEnv",
    "REFERENCE_NAMES",
    "ShiftedCoverageEnv",
    "city_instance",
    "coverage_spaces",
    "generate_instances",
    "greedy_action",
    "greedy_returns",
    "knn_neighbors",
    "random_action",
    "random_returns",
    "render_image",
    "run_episodes",
]
