"""Tests of the facility-coverage environment (wsa_lab.envs)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings

import gymnasium
import numpy as np
import pytest
import torch

from wsa_lab.contract import GraphBatch, observation_spec
from wsa_lab.envs import (
    GYM_ENV_ID,
    CoverageEnv,
    CoverageGymEnv,
    generate_instances,
    greedy_action,
    greedy_returns,
    knn_neighbors,
    random_action,
    random_returns,
    render_image,
    run_episodes,
)
from wsa_lab.envs.observation import knn_edge_index


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def nodes(obs: GraphBatch) -> torch.Tensor:
    """A coverage batch's node features as [B, N, 6] (every instance has N nodes)."""
    return obs.x.view(obs.num_graphs, -1, obs.x.shape[-1])


# --------------------------------------------------------------------------- instances
def test_generate_instances_shapes_and_ranges():
    pos, demand = generate_instances(7, 40, generator=gen(0))
    assert pos.shape == (7, 40, 2) and pos.dtype == torch.float32
    assert demand.shape == (7, 40) and demand.dtype == torch.float32
    assert pos.min() >= 0.0 and pos.max() <= 1.0
    assert (demand > 0).all()
    torch.testing.assert_close(demand.sum(1), torch.ones(7))


def test_generate_instances_reproducible_and_seed_dependent():
    a = generate_instances(4, 30, generator=gen(3))
    b = generate_instances(4, 30, generator=gen(3))
    c = generate_instances(4, 30, generator=gen(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[1], c[1])


def test_generate_instances_clusters_and_background():
    # One cluster with zero spread and no background: every node sits on the centre.
    pos, _ = generate_instances(3, 20, num_clusters=1, cluster_std=0.0, background_frac=0.0, generator=gen(1))
    assert torch.allclose(pos, pos[:, :1].expand_as(pos))
    assert pos.min() >= 0.1 and pos.max() <= 0.9
    # Half background: exactly 10 nodes leave the (zero-spread) centre.
    pos, _ = generate_instances(3, 20, num_clusters=1, cluster_std=0.0, background_frac=0.5, generator=gen(1))
    centre = pos.mode(dim=1).values  # the centre is the repeated position
    off_centre = (pos != centre[:, None]).any(-1).sum(1)
    assert off_centre.tolist() == [10, 10, 10]


def test_knn_matches_brute_force():
    pos = torch.rand(3, 9, 2, generator=gen(2))
    k = 4
    got = knn_neighbors(pos, k)
    assert got.shape == (3, 9, k) and got.dtype == torch.long
    for b in range(3):
        for i in range(9):
            dists = []
            for j in range(9):
                if j != i:
                    dx, dy = (pos[b, i] - pos[b, j]).tolist()
                    dists.append((math.hypot(dx, dy), j))
            expected = [j for _, j in sorted(dists)[:k]]
            assert got[b, i].tolist() == expected
    # Chunking must not change the result.
    assert torch.equal(knn_neighbors(pos, k, chunk_size=1), got)
    with pytest.raises(ValueError, match="k must be"):
        knn_neighbors(pos, 9)


def test_knn_of_a_large_graph_works_in_row_blocks(monkeypatch):
    """A graph whose N x N distances pass the block cap (20,000 nodes: 1.6 GB) is done in blocks of rows, with the
    same neighbours, and the memory estimate counts one block, not N^2 (it was 4.9 GiB at 20,000 nodes)."""
    import wsa_lab.envs.instances as instances

    pos = torch.rand(2, 300, 2, generator=gen(5))
    whole = knn_neighbors(pos, 8)
    monkeypatch.setattr(instances, "KNN_MAX_BLOCK_ELEMENTS", 1000)  # 3 rows per block
    assert torch.equal(knn_neighbors(pos, 8), whole)
    monkeypatch.undo()
    transient = CoverageEnv.memory_estimate(num_envs=1, num_nodes=20_000)["transient"]
    assert transient < 2**30, transient


# --------------------------------------------------------------------------- observation
def test_observation_is_a_graph_batch():
    env = CoverageEnv(num_envs=3, num_nodes=6, num_sites=2, knn_k=2)
    obs = env.reset()
    assert obs.num_graphs == 3 and obs.num_nodes == 18 and obs.uniform_size == 6 and obs.in_degree == 2
    ei = obs.edge_index
    assert ei.shape == (2, 3 * 6 * 2)
    expected = {
        (b * 6 + int(env.neighbors[b, i, j]), b * 6 + i) for b in range(3) for i in range(6) for j in range(2)
    }
    assert set(map(tuple, ei.t().tolist())) == expected
    assert ei[1].tolist() == [i for i in range(18) for _ in range(2)]  # grouped by target: in_degree holds
    assert obs.batch.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    assert obs.ptr.tolist() == [0, 6, 12, 18] and obs.edge_ptr.tolist() == [0, 12, 24, 36]
    torch.testing.assert_close(obs.positions.view(3, 6, 2), env.pos)
    torch.testing.assert_close(nodes(obs)[..., 3:5], env.pos)
    # edge feature: the neighbour's distance
    src, dst = ei
    torch.testing.assert_close(obs.edge_attr[:, 0], (obs.positions[src] - obs.positions[dst]).norm(dim=-1))
    assert obs.image.shape == (3, 3, 32, 32)
    # the contract's spaces describe it
    spec = observation_spec(env.single_observation_space)
    assert spec.node_feature_dim == 6 + env.coverage_radii and spec.edge_feature_dim == 1 and spec.image_shape == (3, 32, 32)
    assert obs.x.shape == (18, spec.node_feature_dim)
    no_coverage = CoverageEnv(num_envs=3, num_nodes=6, num_sites=2, knn_k=2, coverage_radii=0)
    assert no_coverage.reset().x.shape == (18, 6) and observation_spec(no_coverage.single_observation_space).node_feature_dim == 6


def test_coverage_features_are_what_a_site_would_cover():
    """Each node's uncovered demand within each radius, brute force: what opening a site there adds (before cost)."""
    env = CoverageEnv(num_envs=2, num_nodes=12, num_sites=3, knn_k=3, coverage_radii=3, seed=2, autoreset=False)
    env.reset()
    env.step(torch.tensor([0, 5]), torch.tensor([0.5, 1.0]))  # some demand covered
    obs = env.observe()
    got = nodes(obs)[..., 6:]
    radii = [env.r_min + a * (env.r_max - env.r_min) for a in (0.0, 0.5, 1.0)]
    for b in range(2):
        for i in range(12):
            for l, r in enumerate(radii):
                want = sum(float(env.demand[b, j]) for j in range(12)
                           if not env.covered[b, j] and math.dist(env.pos[b, i].tolist(), env.pos[b, j].tolist()) <= r + 1e-7)
                assert float(got[b, i, l]) == pytest.approx(12 * want, abs=1e-4)
    assert bool((got[..., 0] <= got[..., 1]).all() and (got[..., 1] <= got[..., 2]).all())
    node_space = env.single_observation_space["graph"].node_space
    assert all(node_space.contains(row) for row in obs.x.numpy())


# --------------------------------------------------------------------------- dynamics
# Hand-built instance: a pair of nodes near (0.2, 0.2), one node 0.25 above, a pair near (0.8, 0.8).
HAND_POS = torch.tensor([[0.2, 0.2], [0.3, 0.2], [0.2, 0.45], [0.8, 0.8], [0.85, 0.8]])
HAND_DEMAND = torch.tensor([0.1, 0.2, 0.3, 0.25, 0.15])


def hand_env(batch: int = 2, **kw) -> CoverageEnv:
    args = dict(num_nodes=5, num_sites=3, knn_k=2, r_min=0.1, r_max=0.3, cost=0.5, autoreset=False)
    args.update(kw)
    env = CoverageEnv(**args)
    env.reset(instances=(HAND_POS.expand(batch, 5, 2), HAND_DEMAND.expand(batch, 5)))
    return env


def test_dynamics_hand_computed():
    env = hand_env()
    assert env.num_envs == 2
    obs = env.observe()
    torch.testing.assert_close(nodes(obs)[0, :, 0], HAND_DEMAND * 5)
    assert nodes(obs)[:, :, 5].eq(1.0).all()  # (K - 0) / K

    # Env 0: site 0, a = 0.5 -> r = 0.1 + 0.5 * 0.2 = 0.2: covers nodes 0 (d=0) and 1 (d=0.1),
    # not node 2 (d=0.25). Reward = 0.1 + 0.2 - 0.5 * 0.2^2 = 0.28.
    # Env 1: site 3, a = 0 -> r = 0.1: covers nodes 3 and 4 (d=0.05). Reward = 0.4 - 0.5 * 0.01.
    obs, rew, term, trunc, _ = env.step(torch.tensor([0, 3]), torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(rew, torch.tensor([0.28, 0.395]))
    assert env.covered.tolist() == [[True, True, False, False, False], [False, False, False, True, True]]
    assert obs.action_mask.view(2, 5).tolist() == [[False, True, True, True, True], [True, True, True, False, True]]
    assert nodes(obs)[0, :, 1].tolist() == [1, 1, 0, 0, 0]  # covered
    assert nodes(obs)[0, :, 2].tolist() == [1, 0, 0, 0, 0]  # is_site
    torch.testing.assert_close(nodes(obs)[:, :, 5], torch.full((2, 5), 2 / 3))
    assert env.site_radius[0].tolist() == pytest.approx([0.2, 0, 0, 0, 0])
    assert not term.any() and not trunc.any()

    # Env 0 re-opens site 0 (allowed, mask stays) with a smaller disc: nothing new, reward = -cost r^2.
    # Env 1: site 1, a = 0.25 -> r = 0.15: covers nodes 0 and 1 (d=0.1), not 2 (d=0.269).
    obs, rew, term, _, _ = env.step(torch.tensor([0, 1]), torch.tensor([0.25, 0.25]))
    torch.testing.assert_close(rew, torch.tensor([-0.5 * 0.15**2, 0.3 - 0.5 * 0.15**2]))
    assert obs.action_mask[:5].tolist() == [False, True, True, True, True]
    assert env.site_radius[0, 0].item() == pytest.approx(0.2)  # union of concentric discs
    assert not term.any()

    # Third step = K: both terminate. Env 0: site 3, a = 1 -> r = 0.3 covers 3 and 4.
    # Env 1: site 2 with r = 0.1 covers only node 2 (node 0 is 0.25 away): all demand covered.
    obs, rew, term, trunc, info = env.step(torch.tensor([3, 2]), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(rew, torch.tensor([0.4 - 0.5 * 0.09, 0.3 - 0.5 * 0.01]))
    assert term.tolist() == [True, True] and not trunc.any()
    assert env.covered[1].all() and not env.covered[0, 2]
    assert nodes(obs)[:, :, 5].eq(0.0).all()
    expected_returns = torch.tensor([0.28 - 0.01125 + 0.355, 0.395 + 0.28875 + 0.295])
    torch.testing.assert_close(info["episode_return"], expected_returns)
    assert info["episode_length"].tolist() == [3, 3]

    # autoreset=False: ended envs stay ended, pay nothing, keep terminated=True, state frozen.
    covered_before = env.covered.clone()
    _, rew, term, _, _ = env.step(torch.tensor([2, 0]), torch.tensor([1.0, 1.0]))
    assert rew.tolist() == [0.0, 0.0] and term.tolist() == [True, True]
    assert torch.equal(env.covered, covered_before)
    torch.testing.assert_close(env.episode_return, expected_returns)


def test_early_termination_when_all_covered():
    env = hand_env(r_max=2.0, cost=0.0)
    # Env 0 covers everything at once (a=1 -> r=2); env 1 covers only its pair.
    _, rew, term, _, _ = env.step(torch.tensor([0, 3]), torch.tensor([1.0, 0.0]))
    assert term.tolist() == [True, False]
    torch.testing.assert_close(rew, torch.tensor([1.0, 0.4]))
    # Env 0 is ended (no autoreset); env 1 keeps playing.
    _, rew, term, _, _ = env.step(torch.tensor([1, 0]), torch.tensor([1.0, 1.0]))
    assert term.tolist() == [True, True]
    torch.testing.assert_close(rew, torch.tensor([0.0, 0.6]))


def test_time_limit_truncates():
    env = hand_env(max_episode_steps=2)
    _, _, term, trunc, _ = env.step(torch.tensor([0, 0]), torch.tensor([0.0, 0.0]))
    assert not term.any() and not trunc.any()
    _, _, term, trunc, _ = env.step(torch.tensor([1, 1]), torch.tensor([0.0, 0.0]))
    assert term.tolist() == [False, False] and trunc.tolist() == [True, True]
    assert env.ended.all()


def test_autoreset_final_obs_and_episode_return():
    env = CoverageEnv(num_envs=6, num_nodes=30, num_sites=3, r_max=0.15, max_episode_steps=None, seed=5)
    g = gen(0)
    running = torch.zeros(6)
    for _ in range(2):
        node, radius = random_action(env, g)
        obs, rew, term, trunc, info = env.step(node, radius)
        running += rew
        assert info["final_obs"] is obs  # nothing ended -> the same object
    before_pos, before_nbrs = env.pos.clone(), env.neighbors.clone()
    node, radius = random_action(env, g)
    obs, rew, term, trunc, info = env.step(node, radius)
    running += rew
    done = term | trunc
    assert done.all()  # K = 3 steps
    torch.testing.assert_close(info["episode_return"], running)
    assert info["episode_length"].tolist() == [3] * 6
    final = info["final_obs"]
    # final_obs: the pre-reset state (3 distinct sites, no steps left, old positions).
    assert nodes(final)[:, :, 2].sum(1).tolist() == [3.0] * 6
    assert nodes(final)[:, :, 5].eq(0).all()
    assert torch.equal(nodes(final)[:, :, 3:5], before_pos)
    assert torch.equal(final.edge_index, knn_edge_index(before_nbrs))  # not overwritten by the reset
    # Returned obs: fresh episodes.
    assert nodes(obs)[:, :, 1:3].eq(0).all() and obs.action_mask.all()
    assert nodes(obs)[:, :, 5].eq(1).all()
    assert not torch.equal(env.pos, before_pos)
    assert env.t.eq(0).all() and env.episode_return.eq(0).all()
    torch.testing.assert_close(nodes(obs)[:, :, 3:5], env.pos)


def test_autoreset_with_truncation_partial_batch():
    env = CoverageEnv(num_envs=4, num_nodes=20, num_sites=3, max_episode_steps=1, seed=2)
    before = env.pos.clone()
    _, _, term, trunc, info = env.step(torch.zeros(4, dtype=torch.long), torch.zeros(4))
    assert (term | trunc).all() and trunc[~term].all()
    assert nodes(info["final_obs"])[:, :, 5].eq(2 / 3).all()  # steps left before the reset
    assert not torch.equal(env.pos, before)


def test_seeded_rollouts_reproducible():
    def rollout(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        env = CoverageEnv(num_envs=4, num_nodes=25, num_sites=3, seed=seed)
        g = gen(11)
        rewards, images = [], []
        for _ in range(7):  # crosses two autoresets
            obs, rew, *_ = env.step(*random_action(env, g))
            rewards.append(rew)
            images.append(obs.image)
        return torch.stack(rewards), torch.stack(images)

    a, b, c = rollout(1), rollout(1), rollout(2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    # reset(seed=...) reseeds the env's own generator.
    env = CoverageEnv(num_envs=2, num_nodes=25, seed=0)
    env.reset(seed=9)
    assert torch.equal(env.pos, CoverageEnv(num_envs=2, num_nodes=25, seed=9).pos)


def test_invalid_arguments():
    cases = [
        (dict(knn_k=50), "knn_k"),
        (dict(num_sites=50), "num_sites"),
        (dict(r_min=0.5, r_max=0.4), "r_min"),
        (dict(image_size=4), "image_size"),
        (dict(num_envs=0), "num_envs"),
        (dict(max_episode_steps=0), "max_episode_steps"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            CoverageEnv(**kwargs)
    env = CoverageEnv(num_envs=2, num_nodes=10, num_sites=2, knn_k=3)
    with pytest.raises(ValueError, match="node indices"):
        env.step(torch.tensor([0, 10]), torch.zeros(2))


# --------------------------------------------------------------------------- rendering
def test_render_demand_pixels_and_ranges():
    pos = torch.tensor([[[0.31, 0.72], [0.35, 0.78], [0.95, 0.05]]])
    demand = torch.tensor([[0.2, 0.3, 0.5]])
    covered = torch.tensor([[True, False, False]])
    img = render_image(pos, demand, covered, torch.zeros(1, 3), image_size=10)
    assert img.shape == (1, 3, 10, 10)
    assert img.min() >= 0 and img.max() <= 1
    # Nodes 0 and 1 share pixel (row=y*10=7, col=x*10=3); node 2 is at (row 0, col 9).
    # Peak is 0.5 (node 2), so channel 0 = mass / 0.5.
    assert img[0, 0, 7, 3].item() == pytest.approx(1.0)
    assert img[0, 0, 0, 9].item() == pytest.approx(1.0)
    assert img[0, 0].sum().item() == pytest.approx(2.0)
    assert img[0, 1, 7, 3].item() == pytest.approx(0.4)  # covered 0.2 / same peak 0.5
    assert img[0, 1].sum().item() == pytest.approx(0.4)
    assert (img[0, 1] <= img[0, 0] + 1e-6).all()
    assert img[0, 2].eq(0).all()  # no sites


def test_render_disc_channel_against_brute_force():
    H = 16
    pos = torch.tensor([[[0.5, 0.5], [0.1, 0.9], [0.8, 0.2], [0.3, 0.3]]])
    site_radius = torch.tensor([[0.2, 0.1, 0.0, 0.0]])
    covered = torch.zeros(1, 4, dtype=torch.bool)
    demand = torch.full((1, 4), 0.25)
    img = render_image(pos, demand, covered, site_radius, H, max_sites=2)
    expected = torch.zeros(H, H)
    for row in range(H):
        for col in range(H):
            cx, cy = (col + 0.5) / H, (row + 0.5) / H
            for s in (0, 1):
                sx, sy = pos[0, s].tolist()
                if (cx - sx) ** 2 + (cy - sy) ** 2 <= site_radius[0, s].item() ** 2:
                    expected[row, col] = 1.0
    assert expected.sum() > 10  # the test is not vacuous
    assert torch.equal(img[0, 2], expected)
    assert torch.equal(render_image(pos, demand, covered, site_radius, H)[0, 2], expected)


def test_env_image_matches_state():
    env = CoverageEnv(num_envs=2, num_nodes=40, num_sites=3, image_size=16)
    obs, *_ = env.step(torch.tensor([0, 5]), torch.tensor([1.0, 1.0]))
    assert obs.image.shape == (2, 3, 16, 16)
    assert obs.image[:, 0].amax(dim=(1, 2)).eq(1).all()
    assert obs.image[:, 2].sum() > 0 and obs.image[:, 1].sum() > 0


# --------------------------------------------------------------------------- policies
def brute_force_best(env: CoverageEnv, b: int, radius_grid: int) -> tuple[list[float], list[tuple[int, int]]]:
    """All (score, (site, radius index)) of env b by explicit Python loops."""
    N = env.num_nodes
    pos, demand, covered = env.pos[b].tolist(), env.demand[b].tolist(), env.covered[b].tolist()
    scores, actions = [], []
    for s in range(N):
        if env.is_site[b, s]:
            continue
        for j in range(radius_grid):
            a = j / (radius_grid - 1)
            r = env.r_min + a * (env.r_max - env.r_min)
            gain = sum(
                demand[n]
                for n in range(N)
                if not covered[n] and math.hypot(pos[n][0] - pos[s][0], pos[n][1] - pos[s][1]) <= r
            )
            scores.append(gain - env.cost * r * r)
            actions.append((s, j))
    return scores, actions


@pytest.fixture(params=["one_chunk", "tiny_chunks"])
def greedy_chunking(request, monkeypatch):
    """Run greedy tests with all sites in one chunk and with one site per chunk."""
    if request.param == "tiny_chunks":
        import wsa_lab.envs.geometry as geometry

        monkeypatch.setattr(geometry, "MAX_CHUNK_ELEMENTS", 1)
    return request.param


def test_greedy_matches_brute_force(greedy_chunking):
    env = CoverageEnv(num_envs=3, num_nodes=14, num_sites=4, knn_k=3, cost=2.0, seed=4, autoreset=False)
    env.step(*random_action(env, gen(0)))  # some nodes covered, one site masked
    R = 6
    node, radius = greedy_action(env, radius_grid=R)
    predicted = []
    for b in range(3):
        scores, actions = brute_force_best(env, b, R)
        best = max(scores)
        chosen = actions.index((int(node[b]), round(float(radius[b]) * (R - 1))))
        assert scores[chosen] == pytest.approx(best, abs=1e-6)
        runner_up = max(s for s, a in zip(scores, actions) if a != actions[scores.index(best)])
        if best - runner_up > 1e-5:  # unique optimum: the action itself must match
            assert actions[scores.index(best)] == actions[chosen]
        predicted.append(best)
    # The env pays exactly the greedy's predicted immediate reward.
    _, rew, *_ = env.step(node, radius)
    torch.testing.assert_close(rew, torch.tensor(predicted), atol=1e-5, rtol=0)


def test_greedy_tie_breaks_to_lowest_index(greedy_chunking):
    # Two identical nodes far from anything else: equal scores -> lower index, smallest radius.
    pos = torch.tensor([[[0.1, 0.1], [0.9, 0.9], [0.9, 0.9], [0.5, 0.1], [0.1, 0.5]]])
    demand = torch.tensor([[0.1, 0.3, 0.3, 0.15, 0.15]])
    env = CoverageEnv(num_nodes=5, num_sites=2, knn_k=2, r_min=0.05, r_max=0.2, cost=0.0, autoreset=False)
    env.reset(instances=(pos, demand))
    node, radius = greedy_action(env, radius_grid=5)
    assert node.tolist() == [1] and radius.tolist() == [0.0]


def test_greedy_beats_random():
    env = CoverageEnv(num_envs=64, num_nodes=30, num_sites=4, seed=0)
    instances = generate_instances(64, 30, generator=gen(123))
    g = greedy_returns(env, instances)
    r = random_returns(env, instances, seed=0)
    assert g.shape == r.shape == (64,)
    assert env.autoreset  # restored
    assert g.mean() > r.mean() + 0.1, (g.mean(), r.mean())


def test_envs_sit_below_the_trainer():
    """`wsa_lab.envs` (the coverage env and its reference policies) loads only the contract and the config files'
    defaults: no models, trainer, config validation or evaluation suites, also when it computes its references."""
    code = (
        "import json, sys, wsa_lab.envs as e; "
        "e.CoverageEnv(num_envs=2, num_nodes=12, num_sites=2, knn_k=3).reference_returns(); "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('wsa_lab.'))))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    modules = json.loads(proc.stdout.splitlines()[-1])
    loaded = {name.split(".")[1] for name in modules}
    assert loaded <= {"contract", "envs", "errors", "config", "conf_files"}, loaded
    # of the config package only the defaults and the strict converter: never the validation, which builds models
    assert {m for m in modules if m.startswith("wsa_lab.config.")} <= {"wsa_lab.config.resolvers", "wsa_lab.config.strict"}


def test_run_episodes_respects_time_limit():
    env = CoverageEnv(num_envs=5, num_nodes=20, num_sites=4, max_episode_steps=2)
    steps = []

    def policy(obs, e):
        steps.append(1)
        return greedy_action(e)

    returns = run_episodes(env, policy)
    assert len(steps) <= 2 and env.ended.all() and returns.shape == (5,)


@pytest.mark.parametrize("num_nodes", [20, 2000])
def test_sizes(num_nodes):
    env = CoverageEnv(num_envs=2, num_nodes=num_nodes, num_sites=3, seed=1)
    obs = env.reset()
    assert nodes(obs).shape == (2, num_nodes, 6 + env.coverage_radii) and obs.edge_index.shape == (2, 2 * num_nodes * 8)
    node, radius = greedy_action(env)
    assert env.action_mask[torch.arange(2), node].all()
    obs, rew, *_ = env.step(node, radius)
    assert obs.image.shape == (2, 3, 32, 32) and torch.isfinite(rew).all()
    assert nodes(obs)[:, :, 2].sum().item() == 2


# --------------------------------------------------------------------------- gymnasium
def test_gymnasium_make_and_check_env():
    from gymnasium.utils.env_checker import check_env

    env = gymnasium.make(GYM_ENV_ID, num_nodes=20, num_sites=3, render_mode="rgb_array")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    # (ResourceWarnings come from other tests' objects the garbage collector happens to close now)
    assert [str(w.message) for w in caught if not issubclass(w.category, ResourceWarning)] == []

    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    obs2, _ = env.reset(seed=3)
    assert all(np.array_equal(obs[k], obs2[k]) for k in obs if k != "graph")
    assert np.array_equal(obs["graph"].nodes, obs2["graph"].nodes)
    assert np.array_equal(obs["graph"].edge_links, obs2["graph"].edge_links)
    refs = env.unwrapped.reference_returns()
    # the exact optimum too (conf/env/coverage.yaml's optimum_reference: true, the default)
    assert set(refs) == {"greedy", "random", "optimum"} and refs["optimum"] >= refs["greedy"] > refs["random"]
    total, terminated, steps = 0.0, False, 0
    while not terminated:
        action = {"node": int(np.argmax(obs["action_mask"])), "radius": np.array([0.5], dtype=np.float32)}
        obs, reward, terminated, truncated, info = env.step(action)
        total += reward
        steps += 1
    assert steps <= 3 and info["episode_return"] == pytest.approx(total, abs=1e-6)
    frame = env.render()
    assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8
    env.close()


def test_gym_fixed_instance_option():
    env = CoverageGymEnv(num_nodes=5, num_sites=2, knn_k=2, r_min=0.1, r_max=0.3, cost=0.5)
    obs, _ = env.reset(seed=0, options={"instance": (HAND_POS.numpy(), HAND_DEMAND.numpy())})
    np.testing.assert_allclose(obs["graph"].nodes[:, 3:5], HAND_POS.numpy())
    np.testing.assert_allclose(obs["positions"], HAND_POS.numpy())
    _, reward, *_ = env.step({"node": 0, "radius": np.array([0.5], dtype=np.float32)})
    assert reward == pytest.approx(0.28, abs=1e-6)
