"""Where a trained coverage agent loses to the exact optimum: its node choices or its radii?

    python benchmarks/coverage_gap.py <run or sweep folder> [...] [--out gap.json]

For every run folder (a sweep is searched for them), plays the run's held-out instances (its `evaluation.seed`
and `evaluation.num_instances`, as training's final evaluation does) three ways, deterministically:

- `agent`: the trained policy as it is (its `eval/return`);
- `agent_nodes_best_radius`: the policy's node at every step, with the radius that maximises that step's reward
  for that node (newly covered demand - cost * r^2, over 101 radii in [0, 1]): the policy's sites with myopically
  best radii;
- `greedy`: the env's one-step greedy reference (best site and radius for the step's reward).

Each is printed as a fraction of greedy and of the optimum (the optimum needs OR-Tools: `pip install
'wsa_lab[jobshop]'`). If `agent_nodes_best_radius` is about greedy, the policy's sites are as good as greedy's and
the rest of its gap to greedy is its radii; beating greedy then needs sites (or radii) that a one-step view does
not choose. It also counts the steps at which the policy opens the site greedy would open. Needs the runs'
checkpoints; the ImageNet weights come from the checkpoint. A run of another env is
refused (the radius rule reads the coverage env's state).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from wsa_lab.build import close_env, make_env
from wsa_lab.envs import CoverageEnv
from wsa_lab.envs.policies import greedy_action, one_step_rewards
from wsa_lab.evaluate import find_runs, load_run
from wsa_lab.models import ActorCritic
from wsa_lab.rl.evaluation import play
from wsa_lab.stats import bootstrap_ci, iqm

RADII = torch.linspace(0.0, 1.0, 101)


def best_radius(env: CoverageEnv, node: Tensor) -> Tensor:
    """The action radius in :data:`RADII` with the largest reward this step at site `node` of each env. Shapes:
    node ``[B]`` long -> ``[B]``."""
    radii = RADII.to(env.device)
    reward = one_step_rewards(env, radii)[torch.arange(env.num_envs, device=env.device), node]  # [B, R]
    return radii[reward.argmax(dim=1)]


class BestRadius:
    """The agent's node choice with :func:`best_radius`: what `play` calls as the agent."""

    def __init__(self, agent: ActorCritic, env: CoverageEnv) -> None:
        self.agent, self.env, self.action_spec = agent, env, agent.action_spec

    def get_action_and_value(self, obs, deterministic: bool = True):
        step = self.agent.get_action_and_value(obs, deterministic=deterministic)
        radius = best_radius(self.env, step.action.node).reshape(step.action.continuous.shape)
        # the coverage env's radius is a Box(0, 1): policy units are env units (`policy_to_env` leaves them)
        return step._replace(action=step.action._replace(continuous=radius))


def measure(path: Path) -> dict:
    run = load_run(path, torch.device("cpu"))
    ev = run.cfg.evaluation
    env = make_env(run.cfg, num_envs=ev.num_instances, seed=ev.seed, device=torch.device("cpu"))
    try:
        if not isinstance(env, CoverageEnv):
            raise SystemExit(f"coverage_gap: {path} is a run of {type(env).__name__}, not the coverage env")
        env.reset(seed=ev.seed)
        references = {name: value.mean().item() for name, value in env.reference_returns().items()}
        same, steps = [0], [0]

        def count_greedy_sites(obs, step, playing: Tensor) -> None:  # before each env step: greedy's site here?
            same[0] += int(((step.action.node == greedy_action(env)[0]) & playing).sum())
            steps[0] += int(playing.sum())

        returns = {
            "agent": play(run.agent, env, ev.seed, on_step=count_greedy_sites).mean().item(),
            "agent_nodes_best_radius": play(BestRadius(run.agent, env), env, ev.seed).mean().item(),
            "greedy": references["greedy"],
        }
    finally:
        close_env(env)
    optimum = references.get("optimum", math.nan)
    return {
        "run": str(path), "arm": run.arm, "seed": run.seed, "references": references, "returns": returns,
        "greedy_site_share": same[0] / steps[0],
        "greedy_ratio": {k: v / references["greedy"] for k, v in returns.items()},
        "optimum_ratio": {k: v / optimum for k, v in returns.items()},
    }


def estimate(values: list[float]) -> str:
    """IQM [95% CI] (wsa_lab.stats: stratified bootstrap, seed 0, as the report's)."""
    e = bootstrap_ci(np.asarray(values), iqm)
    return f"{e.value:.3f}" if math.isnan(e.low) else f"{e.value:.3f} [{e.low:.3f}, {e.high:.3f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="run folders or sweep folders")
    parser.add_argument("--out", type=Path, help="write every run's numbers as JSON here")
    args = parser.parse_args(argv)
    rows = [measure(p) for p in find_runs(args.paths)]
    arms: dict[str, list[dict]] = {}
    for row in rows:
        arms.setdefault(row["arm"], []).append(row)
        print(f"{row['arm']} seed {row['seed']}: " + ", ".join(
            f"{k} {row['greedy_ratio'][k]:.3f} of greedy / {row['optimum_ratio'][k]:.3f} of the optimum"
            for k in row["returns"]) + f"; the agent opens greedy's site in {row['greedy_site_share']:.0%} of its steps")
    for arm, group in arms.items():
        print(f"{arm} ({len(group)} runs), IQM [95% CI] over runs: " + ", ".join(
            f"{k} {estimate([r['greedy_ratio'][k] for r in group])} of greedy / "
            f"{estimate([r['optimum_ratio'][k] for r in group])} of the optimum" for k in group[0]["returns"])
            + f"; greedy's site in {estimate([r['greedy_site_share'] for r in group])} of the steps")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
