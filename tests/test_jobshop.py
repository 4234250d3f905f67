"""JobShopGraphEnv: job-shop-lib's SingleJobShopGraphEnv through the graph env contract.

Needs the optional extra (``pip install -e '.[jobshop]'``); skipped without it.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("job_shop_lib", reason="pip install -e '.[jobshop]'")

import gymnasium
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

from wsa_lab.envs import jobshop
from wsa_lab.envs.jobshop import GYM_ENV_ID, NODE_FEATURE_NAMES, JobShopGraphEnv


def small_env(**kwargs: Any) -> JobShopGraphEnv:
    return JobShopGraphEnv(**{"num_jobs": 6, "num_machines": 6, "cpsat_time_limit": 5.0, **kwargs})


def first_allowed(obs: dict[str, Any]) -> int:
    return int(np.flatnonzero(obs["action_mask"])[0])


def play(env: JobShopGraphEnv, choose: Any, seed: int | None = None) -> tuple[float, list[dict[str, Any]], dict]:
    """One episode from reset(seed); ``choose(env, obs) -> node``. Returns (return, observations, last info)."""
    obs, info = env.reset(seed=seed)
    observations, total, done = [obs], 0.0, False
    while not done:
        obs, reward, done, truncated, info = env.step({"node": choose(env, obs)})
        assert not truncated
        total += reward
        observations.append(obs)
    return total, observations, info


def rule_policy(rule: str) -> Any:
    """Follow a job-shop-lib dispatching rule through the env."""
    return lambda env, obs: env.rule_action(rule)


def instance_matrices(env: JobShopGraphEnv) -> tuple[list, list]:
    return env.instance.duration_matrix, env.instance.machines_matrix


# ---------------------------------------------------------------------------------------------- gymnasium API
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"drop_scheduled": True}, {"ready_operations_filter": None}, {"allow_recirculation": True}],
    ids=["default", "drop_scheduled", "no_filter", "recirculation"],
)
def test_check_env_passes_without_warnings(kwargs: dict[str, Any]) -> None:
    env = gymnasium.make(GYM_ENV_ID, num_jobs=4, num_machines=3, **kwargs).unwrapped  # has a spec: render checks run
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env)
    # (ResourceWarnings come from other tests' objects the garbage collector happens to close now)
    assert [str(w.message) for w in caught if not issubclass(w.category, ResourceWarning)] == []


def test_registered_once_and_make_forwards_kwargs() -> None:
    assert GYM_ENV_ID in gymnasium.registry
    env = gymnasium.make(GYM_ENV_ID, num_jobs=3, num_machines=2)
    obs, _ = env.reset(seed=0)
    assert obs["graph"].nodes.shape == (6, len(NODE_FEATURE_NAMES))
    assert env.action_space == gymnasium.spaces.Dict({"node": gymnasium.spaces.Discrete(6)})


def test_random_episode_in_space_and_graph_shrinks() -> None:
    env = small_env()
    rng = np.random.default_rng(0)
    total, observations, info = play(env, lambda e, o: int(rng.choice(np.flatnonzero(o["action_mask"]))), seed=3)
    assert len(observations) == 37  # one step per operation
    counts, edge_counts = [], []
    for obs in observations:
        assert env.observation_space.contains(obs)
        graph = obs["graph"]
        n = graph.nodes.shape[0]
        assert obs["action_mask"].shape == (n,) and obs["positions"].shape == (n, 2)
        assert graph.edges.shape == (graph.edge_links.shape[0], 1) and graph.edge_links.dtype == np.int64
        assert obs["action_mask"].any()
        counts.append(n)
        edge_counts.append(graph.edge_links.shape[0])
    assert counts[0] == 36 and edge_counts[0] == 6 * 30 + 6 * 5  # 6 machines x 15 pairs x 2 + 6 jobs x 5
    assert all(a >= b for a, b in itertools.pairwise(counts))
    assert all(a >= b for a, b in itertools.pairwise(edge_counts))
    assert counts[len(counts) // 2] < 36  # completed operations leave the graph
    # Terminal observation: one placeholder node, no edges.
    assert counts[-1] == 1 and edge_counts[-1] == 0
    assert np.all(observations[-1]["graph"].nodes == 0) and observations[-1]["action_mask"].tolist() == [1]
    assert info["operations_left"] == 0
    assert total == pytest.approx(-info["makespan"] / env.time_scale, rel=1e-12)


def test_drop_scheduled_leaves_only_unscheduled_operations() -> None:
    env = small_env(drop_scheduled=True)
    rng = np.random.default_rng(1)
    total, observations, info = play(env, lambda e, o: int(rng.choice(np.flatnonzero(o["action_mask"]))), seed=3)
    counts = [obs["graph"].nodes.shape[0] for obs in observations]
    assert counts == [*range(36, 0, -1), 1]  # one node fewer per step; the terminal placeholder last
    assert all(env.observation_space.contains(obs) for obs in observations)
    assert all(np.all(obs["graph"].nodes[:, NODE_FEATURE_NAMES.index("is_scheduled")] == 0) for obs in observations)
    assert total == pytest.approx(-info["makespan"] / env.time_scale, rel=1e-12)


def test_features_mask_and_positions() -> None:
    env = small_env()
    obs, _ = env.reset(seed=1)
    for _ in range(10):
        nodes = obs["graph"].nodes
        assert np.array_equal(nodes[:, NODE_FEATURE_NAMES.index("is_ready")], obs["action_mask"])
        ops = env.node_operation_ids()
        job = np.array([op // 6 for op in ops]) / 5  # 6 operations per job, job-major ids
        pos = np.array([op % 6 for op in ops]) / 5
        np.testing.assert_allclose(obs["positions"], np.stack([job, pos], axis=1), rtol=1e-6)
        # Every allowed node is the next operation of its job.
        for node in np.flatnonzero(obs["action_mask"]):
            op = ops[node]
            assert env.dispatcher.job_next_operation_index[op // 6] == op % 6
        # Edges: conjunctive ones link consecutive operations of a job.
        links, kinds = obs["graph"].edge_links, obs["graph"].edges[:, 0]
        src, dst = ops[links[:, 0]], ops[links[:, 1]]
        assert np.all((dst[kinds == 1] == src[kinds == 1] + 1) & (dst[kinds == 1] // 6 == src[kinds == 1] // 6))
        obs, *_ = env.step({"node": first_allowed(obs)})


def test_invalid_choice_takes_first_allowed_node() -> None:
    env, twin = small_env(), small_env()
    obs, _ = env.reset(seed=5)
    twin.reset(seed=5)
    masked = int(np.flatnonzero(obs["action_mask"] == 0)[0])
    for bad in (masked, -1, 10**6):
        out = env.step({"node": bad})
        expected = twin.step({"node": first_allowed(obs)})
        assert out[4]["invalid_action"] and not expected[4]["invalid_action"]
        assert out[1] == expected[1]
        assert np.array_equal(out[0]["graph"].nodes, expected[0]["graph"].nodes)
        obs = out[0]

    strict = small_env(strict_actions=True)
    obs, _ = strict.reset(seed=5)
    with pytest.raises(ValueError, match="may not be chosen"):
        strict.step({"node": int(np.flatnonzero(obs["action_mask"] == 0)[0])})
    with pytest.raises(RuntimeError, match="reset"):
        small_env().step({"node": 0})
    with pytest.raises(Exception, match="not recognized"):
        small_env(reference_rules=["no_such_rule"])


def test_step_after_the_end_is_refused() -> None:
    env = small_env(num_jobs=2, num_machines=2)
    play(env, lambda e, o: first_allowed(o), seed=0)
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step({"node": 0})


# ---------------------------------------------------------------------------------------------- seeding
def test_same_seed_same_instance_and_references() -> None:
    a, b = small_env(), small_env()
    a.reset(seed=11)
    b.reset(seed=11)
    assert instance_matrices(a) == instance_matrices(b)
    assert a.reference_returns() == b.reference_returns()
    b.reset(seed=12)
    assert instance_matrices(a) != instance_matrices(b)
    assert a.reference_returns() != b.reference_returns()
    # Unseeded resets continue the seeded stream.
    a.reset(seed=11)
    a.reset()
    b.reset(seed=11)
    b.reset()
    assert instance_matrices(a) == instance_matrices(b)


def test_reset_mid_episode() -> None:
    env, fresh = small_env(), small_env()
    obs, _ = env.reset(seed=2)
    for _ in range(7):
        obs, *_ = env.step({"node": first_allowed(obs)})
    obs, info = env.reset(seed=4)
    expected, _ = fresh.reset(seed=4)
    assert info["makespan"] == 0 and info["operations_left"] == 36
    assert np.array_equal(obs["graph"].nodes, expected["graph"].nodes)
    assert np.array_equal(obs["graph"].edge_links, expected["graph"].edge_links)
    total, _, _ = play(env, lambda e, o: first_allowed(o), seed=4)
    assert total == pytest.approx(play(fresh, lambda e, o: first_allowed(o), seed=4)[0])


# ---------------------------------------------------------------------------------------------- references
@pytest.mark.parametrize("seed", [0, 7])
def test_rules_through_env_equal_their_references(seed: int) -> None:
    env = small_env()
    env.reset(seed=seed)
    refs = env.reference_returns()
    makespans = env.reference_details()["makespans"]
    assert tuple(refs) == env.reference_names and env.reference_names[0] == "cpsat"
    for rule in env.reference_rules:
        total, _, info = play(env, rule_policy(rule), seed=seed)
        assert info["makespan"] == makespans[rule]
        assert total == pytest.approx(refs[rule], rel=1e-12)
        assert refs[rule] == -makespans[rule] / env.time_scale


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cpsat_is_optimal_and_beats_rules(seed: int) -> None:
    env = small_env()
    env.reset(seed=seed)
    refs = env.reference_returns()
    details = env.reference_details()
    assert details["cpsat_optimal"] is True
    assert all(refs["cpsat"] >= refs[rule] for rule in env.reference_rules)
    rng = np.random.default_rng(seed)
    total, _, _ = play(env, lambda e, o: int(rng.choice(np.flatnonzero(o["action_mask"]))), seed=seed)
    assert refs["cpsat"] >= total - 1e-9


def test_references_do_not_disturb_the_episode() -> None:
    env, twin = small_env(), small_env()
    obs, _ = env.reset(seed=9)
    twin.reset(seed=9)
    for step in range(36):
        if step in (0, 13):
            env.reference_returns()
        node = first_allowed(obs)
        obs, reward, done, _, info = env.step({"node": node})
        t_obs, t_reward, t_done, _, t_info = twin.step({"node": node})
        assert reward == t_reward and done == t_done and info == t_info
        assert np.array_equal(obs["graph"].nodes, t_obs["graph"].nodes)
    assert done


def test_benchmark_instance_ft06() -> None:
    env = JobShopGraphEnv(instance="ft06", cpsat_time_limit=5.0)
    assert env.time_scale == 10.0 and env.max_nodes == 36
    env.reset(seed=0)
    first = instance_matrices(env)
    refs = env.reference_returns()
    assert env.reference_details()["cpsat_optimal"] and refs["cpsat"] == -5.5  # ft06's optimum is 55
    details = env.reference_details()
    total, _, _ = play(env, rule_policy("most_work_remaining"), seed=1)
    assert instance_matrices(env) == first
    assert total == pytest.approx(refs["most_work_remaining"], rel=1e-12)
    assert env.reference_returns() == refs
    assert env.reference_details() == details  # cached for the fixed instance (same solve time)
    check_env(env, skip_render_check=True)


def test_cpsat_not_proved_optimal_warns() -> None:
    env = JobShopGraphEnv(instance="ft10", cpsat_time_limit=0.05)  # 10x10: not proved in 50 ms
    env.reset(seed=0)
    with pytest.warns(RuntimeWarning, match="did not prove optimality"):
        refs = env.reference_returns()
    assert env.reference_details()["cpsat_optimal"] is False
    assert np.isnan(refs["cpsat"]) or refs["cpsat"] <= -930 / env.time_scale  # ft10's optimum is 930


# ---------------------------------------------------------------------------------------------- resume
def test_state_dict_resumes_the_episode_and_the_stream() -> None:
    env = small_env()
    obs, _ = env.reset(seed=21)
    for _ in range(10):
        obs, *_ = env.step({"node": first_allowed(obs)})
    state = env.state_dict()
    restored = small_env()
    restored.load_state_dict(state)
    rest_obs = obs
    while True:
        node = first_allowed(obs)
        obs, reward, done, _, info = env.step({"node": node})
        rest_obs, r_reward, r_done, _, r_info = restored.step({"node": node})
        assert reward == r_reward and info == r_info
        assert np.array_equal(obs["graph"].nodes, rest_obs["graph"].nodes)
        if done:
            break
    assert r_done
    env.reset()
    restored.reset()
    assert instance_matrices(env) == instance_matrices(restored)


# ---------------------------------------------------------------------------------------------- vector envs
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_vector_env_same_step_autoreset(kind: str) -> None:
    fns = [lambda: gymnasium.make(GYM_ENV_ID, num_jobs=3, num_machines=2)] * 3
    vec: SyncVectorEnv | AsyncVectorEnv = (
        SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
        if kind == "sync"
        else AsyncVectorEnv(fns, shared_memory=False, autoreset_mode=AutoresetMode.SAME_STEP)
    )
    try:
        obs, _ = vec.reset(seed=0)
        single = vec.single_observation_space
        ends = 0
        for _ in range(13):  # two episodes of 6 steps and one more step
            nodes = np.array([first_allowed({"action_mask": m}) for m in obs["action_mask"]])
            obs, _, terminated, truncated, infos = vec.step({"node": nodes})
            assert not truncated.any()
            for i in range(3):
                assert single.contains({key: obs[key][i] for key in obs})
            if terminated.any():
                ends += int(terminated.sum())
                assert infos["_final_obs"].tolist() == terminated.tolist()
                for i in map(int, np.flatnonzero(terminated)):
                    final = infos["final_obs"][i]
                    assert single.contains(final) and final["graph"].nodes.shape == (1, len(NODE_FEATURE_NAMES))
                    assert obs["graph"][i].nodes.shape == (6, len(NODE_FEATURE_NAMES))  # the next episode's start
        assert ends == 6
        refs = vec.call("reference_returns")
        assert len(refs) == 3 and all(set(r) == set(JobShopGraphEnv.reference_names) for r in refs)
    finally:
        vec.close()


# ---------------------------------------------------------------------------------------------- optional extra
def test_import_without_job_shop_lib_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "job_shop_lib", None)  # `import job_shop_lib` now raises ImportError
    spec = importlib.util.spec_from_file_location("_jobshop_without_extra", Path(jobshop.__file__))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[jobshop\]'"):
        spec.loader.exec_module(module)


def test_a_fixed_instance_replays_the_same_observations_every_episode() -> None:
    # job-shop-lib's RemainingOperationsObserver keeps its counts across its env's reset(): reusing that env for a
    # fixed instance gave the second episode different job/machine features after the same actions.
    env = JobShopGraphEnv(instance="ft06", cpsat_time_limit=5.0)
    episodes = []
    for _ in range(2):
        obs, _ = env.reset(seed=7)
        seen = [obs["graph"].nodes.copy()]
        for _ in range(5):
            node = int(np.flatnonzero(obs["action_mask"])[0])
            obs, *_ = env.step({"node": node})
            seen.append(obs["graph"].nodes.copy())
        episodes.append(seen)
    for step, (first, second) in enumerate(zip(*episodes)):
        assert np.array_equal(first, second), f"step {step}: the second episode's node features differ"


def test_a_6x6_agent_is_evaluated_zero_shot_on_10x10(tmp_path: Path) -> None:
    """`eval_env=jobshop_sizes`: a run trained on 6x6 plays generated 10x10 instances, beside CP-SAT and the rules."""
    from conftest import compose_config
    from test_contract import NOT_COVERAGE
    from wsa_lab.contract import ratio_to_reference
    from wsa_lab.evaluate import evaluate_runs
    from wsa_lab.train import train

    run = tmp_path / "run"
    assert train(compose_config([*NOT_COVERAGE, "env=jobshop", "ptm=[graph_cnn]", "algo.total_timesteps=64"], run))["status"] == "completed"
    result = evaluate_runs([run], ["eval_env=jobshop_sizes", "num_instances=2", "episodes=1", "device=cpu"])
    cell = result.runs[0]["conditions"]["j10_m10"]
    assert cell["changed"] == {"kwargs.num_jobs": 10, "kwargs.num_machines": 10}
    # a 10x10 makespan: 10 operations per machine, so every reference's return is well below a 6x6 one's
    assert set(cell["references"]) >= {"cpsat", "most_work_remaining"} and cell["cpsat_return"] < 0
    # nothing schedules shorter than the optimum (a barely trained agent may take over twice as long: ratio < 0)
    assert cell["cpsat_ratio"] == pytest.approx(ratio_to_reference(cell["return"], cell["cpsat_return"]))
    assert cell["cpsat_ratio"] <= 1.0
    assert cell["most_work_remaining_cpsat_ratio"] <= 1.0
    assert "| j10_m10 | 10 | 10 |" in result.table
