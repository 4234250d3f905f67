"""Training: PPO for the hybrid action, and evaluation against reference policies."""

from wsa_lab.rl.evaluation import Evaluator
from wsa_lab.rl.ppo import PPO, compute_gae

__all__ = ["PPO", "Evaluator", "compute_gae"]
