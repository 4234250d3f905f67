"""The coverage env's exact optimum reference (wsa_lab.envs.coverage_optimum): the MILP against brute force
through the env's own step, the on-disk cache, and the runs without a solver or without a proof."""

from __future__ import annotations

import builtins
import logging
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from wsa_lab.conf_files import config_dir
from wsa_lab.envs import CoverageEnv
from wsa_lab.envs import coverage_optimum
from wsa_lab.envs.coverage_optimum import optimum_returns, useful_radii
from wsa_lab.errors import ConfigError
from wsa_lab.rl.evaluation import Evaluator

pytest.importorskip("ortools.linear_solver.pywraplp")

GRID = torch.linspace(0.0, 1.0, 21)


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cache folder per test, and a fresh "is the solver there" answer."""
    monkeypatch.setenv(coverage_optimum.CACHE_ENV, str(tmp_path / "cache"))
    coverage_optimum.solver_available.cache_clear()
    yield tmp_path / "cache"
    coverage_optimum.solver_available.cache_clear()


def _instance(seed: int, n: int, zero_demand: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(1, n, 2, generator=g)
    demand = torch.rand(1, n, generator=g)
    if zero_demand:
        demand[0, 0] = 0.0
    return pos, demand / demand.sum()


def _brute_force(settings: dict, instance: tuple[torch.Tensor, torch.Tensor]) -> float:
    """The best return over every 2-step sequence of (node, radius) - repeats included - with each site's useful
    radii and a grid, played by the env itself (the episode ends early where it would)."""
    pos, demand = instance
    n = pos.shape[1]
    probe = CoverageEnv(num_envs=1, num_nodes=n, autoreset=False, **settings)
    probe.reset(instances=instance)
    action, reachable, _ = useful_radii(probe)
    actions = [(s, float(a)) for s in range(n) for a in {*action[0, s][reachable[0, s]].tolist(), *GRID.tolist()}]
    nodes = torch.tensor([s for s, _ in actions])
    radii = torch.tensor([a for _, a in actions])
    first, second = torch.meshgrid(torch.arange(len(actions)), torch.arange(len(actions)), indexing="ij")
    first, second = first.reshape(-1), second.reshape(-1)
    env = CoverageEnv(num_envs=1, num_nodes=n, autoreset=False, **settings)
    env.reset(instances=(pos.expand(len(first), n, 2), demand.expand(len(first), n)))
    env.step(nodes[first], radii[first])
    env.step(nodes[second], radii[second])
    assert bool(env.ended.all())
    return env.episode_return.max().item()


@pytest.mark.parametrize(
    "settings, zero_demand",
    [
        ({}, False),  # the defaults: two sites, never all demand
        ({"cost": 0.05, "r_max": 1.5}, False),  # one disc can cover everything: the episode ends after one step
        ({"cost": 0.3, "r_max": 1.0}, True),  # a node without demand need not be covered to end early
        ({"max_episode_steps": 1}, False),  # truncated after one step
        ({"r_min": 0.0, "r_max": 0.3, "cost": 2.0}, False),
        ({"r_min": 0.3, "r_max": 0.6, "cost": 5.0}, False),  # every step costs more than it covers: still K steps
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_optimum_equals_brute_force_through_the_env(settings: dict, zero_demand: bool, seed: int):
    settings = {"num_sites": 2, "knn_k": 2, "image_size": 8, **settings}
    instance = _instance(seed, 7, zero_demand)
    env = CoverageEnv(num_envs=1, num_nodes=7, autoreset=False, **settings)
    optimum = optimum_returns(env, instance)
    assert optimum is not None
    assert optimum.item() == pytest.approx(_brute_force(settings, instance), abs=1e-6)


def test_optimum_bounds_greedy_and_is_cached(_cache: Path, monkeypatch: pytest.MonkeyPatch):
    env = CoverageEnv(num_envs=3, num_nodes=20, num_sites=3, knn_k=4, image_size=8, seed=5, optimum_reference=True)
    refs = env.reference_returns()
    assert list(refs) == ["greedy", "random", "optimum"] and env.reference_names == ("greedy", "random", "optimum")
    assert (refs["optimum"] >= refs["greedy"] - 1e-6).all() and (refs["optimum"] >= refs["random"]).all()
    (cached,) = _cache.glob("*.json")

    def no_solve(*args, **kwargs):
        raise AssertionError("solved again instead of reading the cache")

    monkeypatch.setattr(coverage_optimum, "solve", no_solve)
    again = env.reference_returns()
    assert torch.equal(again["optimum"], refs["optimum"])
    monkeypatch.undo()
    monkeypatch.setenv(coverage_optimum.CACHE_ENV, str(_cache))
    other = CoverageEnv(num_envs=3, num_nodes=20, num_sites=3, knn_k=4, image_size=8, seed=5, cost=0.5,
                        optimum_reference=True)
    other.reference_returns()  # another reward: another entry
    assert len(list(_cache.glob("*.json"))) == 2 and cached.is_file()


def test_evaluator_logs_the_optimum_beside_the_greedy_headline():
    env = CoverageEnv(num_envs=2, num_nodes=20, num_sites=3, knn_k=4, image_size=8, optimum_reference=True)
    evaluator = Evaluator(env, seed=7)
    assert evaluator.metric == "eval/greedy_ratio" and "eval/optimum_ratio" in evaluator.metrics
    ref = evaluator.reference
    assert ref["reference/optimum_greedy_ratio"] == pytest.approx(
        ref["reference/optimum_return"] / ref["reference/greedy_return"]
    ) and ref["reference/optimum_greedy_ratio"] >= 1 - 1e-6
    assert Evaluator(env, seed=7, metric="eval/optimum_ratio").metric == "eval/optimum_ratio"
    plain = CoverageEnv(num_envs=2, num_nodes=20, num_sites=3, knn_k=4, image_size=8, optimum_reference=False)
    with pytest.raises(ConfigError, match="eval/optimum_ratio"):
        Evaluator(plain, seed=7, metric="eval/optimum_ratio")
    assert OmegaConf.load(Path(config_dir()) / "env" / "coverage.yaml").optimum_reference is True  # on for runs


def test_without_the_solver_one_log_line_and_no_optimum(monkeypatch: pytest.MonkeyPatch, caplog):
    real_import = builtins.__import__

    def without_ortools(name: str, *args, **kwargs):
        if name.split(".")[0] == "ortools":
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_ortools)  # as if OR-Tools were not installed
    caplog.set_level(logging.WARNING)
    for _ in range(2):  # e.g. two evaluation conditions: still one line
        env = CoverageEnv(num_envs=2, num_nodes=20, num_sites=3, knn_k=4, image_size=8, optimum_reference=True)
        evaluator = Evaluator(env, seed=3)
        assert evaluator.reference_names == ["greedy", "random"] and evaluator.metric == "eval/greedy_ratio"
        assert "reference/optimum_return" not in evaluator.reference
    lines = [r.getMessage() for r in caplog.records if "optimum" in r.getMessage()]
    assert len(lines) == 1 and "OR-Tools is not installed" in lines[0]


def test_an_unproven_optimum_is_not_reported(_cache: Path, caplog):
    env = CoverageEnv(num_envs=2, num_nodes=50, seed=1, autoreset=False)
    env.reset()
    instances = (env.pos.clone(), env.demand.clone())
    caplog.set_level(logging.WARNING)
    assert optimum_returns(env, instances, time_limit=0.001) is None
    assert "not solved to proven optimality" in caplog.text
    assert optimum_returns(env, instances) is None  # the failure is cached: no second wait
    assert len(list(_cache.glob("*.json"))) == 1


def test_a_graph_too_large_for_the_exact_optimum_is_one_line_and_no_optimum(_cache: Path, monkeypatch, caplog):
    """20,000 nodes would need hours of SCIP and N^2 floats of radii per instance: the run goes on without it."""
    monkeypatch.setattr(coverage_optimum, "MAX_NODES", 30)
    env = CoverageEnv(num_envs=2, num_nodes=40, num_sites=3, knn_k=4, image_size=8, optimum_reference=True)
    caplog.set_level(logging.WARNING)
    evaluator = Evaluator(env, seed=3)
    assert evaluator.reference_names == ["greedy", "random"]
    assert "up to 30 nodes (this env has 40)" in caplog.text and "env.optimum_reference=false" in caplog.text
    assert not list(_cache.glob("*.json"))  # nothing solved, nothing cached


def test_sampled_evaluation_is_the_best_of_k_and_leaves_training_alone():
    """evaluation.samples=k: the best of k sampled episodes per held-out instance, logged apart from greedy decoding;
    reproducible and without touching the global RNG that training draws from."""
    from conftest import actor_critic_kwargs, coverage_specs
    from wsa_lab.models import build_actor_critic
    from wsa_lab.rl.evaluation import sampled_play

    torch.manual_seed(0)
    agent = build_actor_critic(*coverage_specs(num_nodes=20, image_size=8), **actor_critic_kwargs(
        hidden_dim=8, context_dim=8, feature_dim=8, head_hidden_dim=8, wsa={"enabled": False}))
    env = CoverageEnv(num_envs=4, num_nodes=20, num_sites=3, knn_k=4, image_size=8)
    evaluator = Evaluator(env, seed=3, samples=5)
    state = torch.get_rng_state()
    first = evaluator.evaluate(agent)
    assert torch.equal(torch.get_rng_state(), state)
    assert evaluator.evaluate(agent) == first  # same numbers again
    plays = sampled_play(agent, env, 3, 5)
    assert plays.shape == (5, 4) and len({tuple(p.tolist()) for p in plays}) > 1  # the samples differ
    assert first["eval/sampled_return"] == pytest.approx(plays.max(0).values.mean().item())
    assert first["eval/sampled_return"] >= plays.mean().item()
    assert first["eval/sampled_greedy_ratio"] == pytest.approx(first["eval/sampled_return"] / evaluator.reference_returns["greedy"])
    assert "eval/sampled_return" not in Evaluator(env, seed=3).evaluate(agent)  # off by default
