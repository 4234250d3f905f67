"""The graph env contract: GraphBatch maths, space checks, Gymnasium envs through the vector adapter, a user's
env (examples/graph_envs, written without wsa_lab) trained by `train(cfg)`, and a misbehaving env stopping a run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces

from conftest import REPO, actor_critic_kwargs, compose_config, subprocess_env
from test_train import TINY, without_timing
from wsa_lab.contract import GraphBatch, GymVectorGraphEnv, action_spec, observation_spec, ratio_to_reference, specs
from wsa_lab.errors import ConfigError, EnvContractError, EnvError
from wsa_lab.models import build_actor_critic
from wsa_lab.run.checkpoint import load_checkpoint
from wsa_lab.tracking import read_metrics
from wsa_lab.train import train

EXAMPLES = REPO / "examples" / "graph_envs"
VALUE_GRAPH = "graph_envs:graph_envs/ValueGraph-v0"  # "module:id": Gymnasium imports graph_envs, which registers it
GRAPH_PTM = [{"name": "graph_cnn", "model_type": "graph_cnn", "weights": None, "freeze_backbone": False}]


@pytest.fixture(autouse=True)
def _user_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    """The example package and the faulty envs are importable, as a user's own package would be."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


def batch_of(sizes: list[int], edges: list[list[tuple[int, int]]]) -> GraphBatch:
    """A batch whose node i of graph g has feature [g, i] and whose edges are given per graph (local ids)."""
    x = torch.tensor([[g, i] for g, n in enumerate(sizes) for i in range(n)], dtype=torch.float32)
    start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    edge_index = torch.tensor([[s + a, s + b] for s, es in zip(start, edges) for a, b in es], dtype=torch.long).t()
    return GraphBatch(
        x=x, edge_index=edge_index.reshape(2, -1),
        ptr=torch.tensor([0, *np.cumsum(sizes)]), edge_ptr=torch.tensor([0, *np.cumsum([len(e) for e in edges])]),
        action_mask=torch.ones(sum(sizes), dtype=torch.bool), edge_attr=torch.arange(sum(map(len, edges)), dtype=torch.float32)[:, None],
        positions=torch.rand(sum(sizes), 2), image=torch.arange(len(sizes), dtype=torch.float32).view(-1, 1, 1, 1),
    )


# ------------------------------------------------------------------------------------------- GraphBatch
def test_select_and_cat_keep_each_graph_whole_and_renumber_it():
    batch = batch_of([2, 4, 3], [[(0, 1)], [(0, 3), (2, 1), (3, 3)], [(2, 0), (1, 2)]])
    sub = batch.select(torch.tensor([2, 0]))
    assert sub.num_graphs == 2 and sub.nodes_per_graph.tolist() == [3, 2] and sub.ptr.tolist() == [0, 3, 5]
    assert sub.x.tolist() == [[2, 0], [2, 1], [2, 2], [0, 0], [0, 1]]
    assert sub.edge_index.t().tolist() == [[2, 0], [1, 2], [3, 4]]  # graph 2's edges, then graph 0's, renumbered
    assert sub.edge_attr[:, 0].tolist() == [4.0, 5.0, 0.0] and sub.image.view(-1).tolist() == [2.0, 0.0]
    assert sub.batch.tolist() == [0, 0, 0, 1, 1] and sub.uniform_size is None
    joined = GraphBatch.cat([sub, batch])
    assert joined.num_graphs == 5 and joined.ptr.tolist() == [0, 3, 5, 7, 11, 14]
    assert joined.edge_ptr.tolist() == [0, 2, 3, 4, 7, 9]
    # every graph of the joined batch, selected alone, is the original graph
    again = joined.select(torch.tensor([3]))
    original = batch.select(torch.tensor([1]))
    for name in ("x", "edge_index", "edge_attr", "positions", "image", "ptr"):
        assert torch.equal(getattr(again, name), getattr(original, name)), name
    assert GraphBatch.from_state_dict(batch.state_dict()).x.equal(batch.x)


def test_ratio_to_reference_is_a_fraction_of_the_reference_for_either_sign():
    assert ratio_to_reference(0.8, 1.0) == pytest.approx(0.8)  # covered demand: agent / greedy
    assert ratio_to_reference(-60.0, -50.0) == pytest.approx(0.8)  # makespan 60 vs 50: gap 0.2 = 1 - ratio
    assert ratio_to_reference(-50.0, -50.0) == 1.0 and ratio_to_reference(-40.0, -50.0) > 1.0
    assert np.isnan(ratio_to_reference(1.0, 0.0))


# ------------------------------------------------------------------------------------------- spaces
GRAPH = spaces.Graph(spaces.Box(0, 1, (3,)), spaces.Box(0, 1, (1,)))


@pytest.mark.parametrize(
    "space,match",
    [
        (spaces.Box(0, 1, (4, 3)), "must be a gymnasium.spaces.Graph or a Dict"),
        (spaces.Dict({"nodes": GRAPH}), "needs a 'graph' entry"),
        (spaces.Dict({"graph": GRAPH, "mask": spaces.MultiBinary(4)}), r"unknown observation entries \['mask'\]"),
        (spaces.Dict({"graph": GRAPH, "action_mask": spaces.Sequence(spaces.Discrete(2))}), "stack=True"),
        (spaces.Dict({"graph": GRAPH, "positions": spaces.Box(0, 1, (4, 3))}), "Box of shape \\(max_nodes, 2\\)"),
        (spaces.Dict({"graph": GRAPH, "image": spaces.Box(0, 1, (8, 8))}), "Box of shape \\(C, H, W\\)"),
        (spaces.Graph(spaces.Box(0, 1, (2, 2)), None), "1-d Box"),
    ],
)
def test_observation_spaces_that_do_not_fit_get_one_line(space, match):
    with pytest.raises(EnvContractError, match=match) as info:
        observation_spec(space, "env demo")
    assert "\n" not in str(info.value) and str(info.value).startswith("env demo")


def test_observation_space_forms_that_fit():
    seq = observation_spec(spaces.Dict({
        "graph": spaces.Graph(spaces.Discrete(5), spaces.Discrete(3)),
        "action_mask": spaces.Sequence(spaces.Discrete(2), stack=True),
        "positions": spaces.Sequence(spaces.Box(0, 1, (2,)), stack=True),
    }))
    assert (seq.node_feature_dim, seq.node_one_hot, seq.edge_feature_dim) == (5, 5, 3)
    assert seq.mask.sequence and seq.positions.sequence and not seq.has_image
    bare = observation_spec(GRAPH)
    assert not bare.is_dict and bare.mask is None and not bare.has_positions


@pytest.mark.parametrize(
    "space,expected",
    [
        (spaces.Discrete(7), (7, 0, "discrete")),
        (spaces.Dict({"node": spaces.Discrete(7)}), (7, 0, "dict")),
        (spaces.Dict({"where": spaces.Discrete(7), "how": spaces.Box(-1, 1, (2,))}), (7, 2, "dict")),
        (spaces.Tuple((spaces.Discrete(7), spaces.Box(0, np.inf, (3,)))), (7, 3, "tuple")),
    ],
)
def test_action_spaces(space, expected):
    spec = action_spec(space)
    assert (spec.max_nodes, spec.continuous_dim, spec.layout_kind) == expected


def test_continuous_actions_map_the_unit_box_onto_the_env_box():
    box = spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, np.inf], np.float32))
    spec = action_spec(spaces.Dict({"n": spaces.Discrete(3), "c": box}))
    assert spec.bounded.tolist() == [True, False]
    out = spec.policy_to_env(torch.tensor([[0.25, 5.0], [1.5, -1.0]]))
    torch.testing.assert_close(out, torch.tensor([[-1.0, 5.0], [2.0, -1.0]]))  # bounded: clamp + map; unbounded: as is
    env_action = spec.layout(np.array([1, 2]), out.numpy())
    assert set(env_action) == {"n", "c"} and env_action["c"].shape == (2, 2)


@pytest.mark.parametrize(
    "space", [spaces.MultiDiscrete([3, 4]), spaces.Dict({"a": spaces.Discrete(3), "b": spaces.Discrete(4)}),
              spaces.Tuple((spaces.Discrete(3), spaces.Box(0, 1, (1,)), spaces.Box(0, 1, (1,))))],
)
def test_action_spaces_that_do_not_fit(space):
    with pytest.raises(EnvContractError, match="Discrete"):
        action_spec(space)


# ------------------------------------------------------------------------------------------- vector adapter
def test_gym_envs_of_every_form_batch_mixed_sizes_without_padding():
    forms = {
        "dict, shrinking graphs, no continuous part": {},
        "2-d continuous part, masked picks": {"continuous_dim": 2, "shrink": False},
        "bare Graph observation": {"bare_graph": True},
    }
    for label, kwargs in forms.items():
        env = GymVectorGraphEnv(VALUE_GRAPH, kwargs=kwargs, num_envs=4, seed=0)
        obs_spec, act_spec = specs(env)
        assert act_spec.continuous_dim == kwargs.get("continuous_dim", 0), label
        obs = env.reset(seed=0)
        sizes = obs.nodes_per_graph.tolist()
        assert len(set(sizes)) > 1 and obs.num_nodes == sum(sizes), label  # mixed sizes in one flat batch
        agent = build_actor_critic(obs_spec, act_spec, **actor_critic_kwargs(wsa={"enabled": True, "pretrained_models": GRAPH_PTM}))
        for _ in range(4):
            out = agent.get_action_and_value(obs)
            assert (out.action.node < obs.nodes_per_graph).all()
            assert out.action.continuous.shape == (4, act_spec.continuous_dim)
            before = obs.nodes_per_graph.clone()
            obs, reward, terminated, truncated, info = env.step(out.action.node, act_spec.policy_to_env(out.action.continuous))
            assert reward.shape == (4,) and info["final_obs"].num_graphs == 4
        if kwargs.get("shrink", True):
            assert (obs.nodes_per_graph < before).any() or terminated.any(), label  # graphs shrink within an episode
        env.close()


def test_episode_ends_give_final_obs_returns_and_the_next_episode():
    env = GymVectorGraphEnv(VALUE_GRAPH, kwargs={"picks": 2}, num_envs=3, seed=0)
    obs = env.reset(seed=5)
    rewards = torch.zeros(3)
    for _ in range(2):
        first = obs.ptr[:-1]
        obs, reward, terminated, _, info = env.step(torch.zeros(3, dtype=torch.long), torch.zeros(3, 0))
        rewards += reward
    assert terminated.all()
    torch.testing.assert_close(info["episode_return"], rewards)
    assert info["episode_length"].tolist() == [2, 2, 2]
    # final_obs: the graphs after two removals; obs: the next episodes, whole
    assert (info["final_obs"].nodes_per_graph + 2 <= torch.tensor(env.act_spec.max_nodes)).all()
    assert (obs.x[:, -1] == 0).all()  # nothing picked yet in the new episodes
    del first


def test_reference_returns_and_reproducible_seeds():
    a = GymVectorGraphEnv(VALUE_GRAPH, num_envs=3, seed=0)
    b = GymVectorGraphEnv(VALUE_GRAPH, num_envs=3, seed=9, vectorization="async")
    assert a.reference_names == ("optimal", "random")
    oa, ob = a.reset(seed=7), b.reset(seed=7)
    assert torch.equal(oa.x, ob.x) and torch.equal(oa.edge_index, ob.edge_index)  # same seed, sync or async
    ra, rb = a.reference_returns(), b.reference_returns()
    assert list(ra) == ["optimal", "random"] and torch.equal(ra["optimal"], rb["optimal"])
    assert (ra["optimal"] > ra["random"]).all()
    assert not torch.equal(a.reset(seed=8).x[:3], oa.x[:3])
    a.close(), b.close()


def test_bad_env_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"env.kwargs: unknown key 'min_node' \(did you mean 'min_nodes'\?\)"):
        GymVectorGraphEnv(VALUE_GRAPH, kwargs={"min_node": 3})
    with pytest.raises(ConfigError, match="is not a registered Gymnasium env"):
        GymVectorGraphEnv("graph_envs:graph_envs/Nope-v0")
    with pytest.raises(ConfigError, match="cannot import 'no_such_pkg'"):
        GymVectorGraphEnv("no_such_pkg:x/Y-v0")
    with pytest.raises(ConfigError, match="vectorization must be one of"):
        GymVectorGraphEnv(VALUE_GRAPH, vectorization="threads")


# ------------------------------------------------------------------------------------------- training
NOT_COVERAGE = [o for o in TINY if not o.startswith("env.")]  # TINY's env keys are the coverage env's
GYM_TINY = [*NOT_COVERAGE, "env=gym", f"env.id={VALUE_GRAPH}", "ptm=[graph_cnn]"]


def test_a_users_env_trains_with_its_references_as_the_headline(tmp_path: Path):
    summary = train(compose_config([*GYM_TINY, "+env.kwargs.continuous_dim=2"], tmp_path / "run"))
    assert summary["status"] == "completed" and summary["metric"] == "eval/optimal_ratio"
    assert "best_optimal_ratio" in summary and summary["env"] == VALUE_GRAPH
    last = read_metrics(tmp_path / "run")[-1]
    assert {"eval/return", "eval/optimal_ratio", "eval/random_ratio"} <= set(last)
    assert read_metrics(tmp_path / "run")[0]["reference/random_optimal_ratio"] < 1


def test_a_users_env_with_mixed_graph_sizes_gives_the_same_numbers_for_the_same_seed(tmp_path: Path):
    """ValueGraph's graphs have 6-12 nodes and shrink: every batch mixes sizes (no segment op may race)."""
    # 4 iterations of 128 env steps: minibatches large enough for PyTorch's CPU kernels to split them over threads
    mixed = [*GYM_TINY, "ptm=[graph_cnn,resnet18_random]", "+env.kwargs.continuous_dim=1", "algo.total_timesteps=512",
             "algo.num_envs=8", "algo.num_steps=16"]
    for name in ("a", "b"):
        train(compose_config(mixed, tmp_path / name))
    first, second = without_timing(read_metrics(tmp_path / "a")), without_timing(read_metrics(tmp_path / "b"))
    assert len(first) >= 3 and first == second
    a, b = (load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")["agent"] for name in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_env_without_references_is_judged_by_its_return(tmp_path: Path):
    plain = [*GYM_TINY, "env.id=plain/Value-v0", "env.entry_point=faulty_envs:PlainValueGraph"]
    summary = train(compose_config(plain, tmp_path / "run"))
    assert summary["metric"] == "eval/return" and "best_return" in summary
    assert not any(k.endswith("_ratio") for k in read_metrics(tmp_path / "run")[-1])
    with pytest.raises(ConfigError, match="evaluation.metric='eval/greedy_ratio' is not logged"):
        train(compose_config([*plain, "evaluation.metric=eval/greedy_ratio"], tmp_path / "bad"))


def test_an_image_ptm_on_an_env_without_image_or_positions_fails_at_start_up(tmp_path: Path):
    with pytest.raises(ConfigError, match="PTM 'resnet18_random' .* reads an image, but the env gives neither"):
        train(compose_config([*GYM_TINY, "+env.kwargs.bare_graph=true", "ptm=[graph_cnn,resnet18_random]"], tmp_path / "r"))
    # with positions (the Dict form) its node features are rasterised for the ResNet instead
    summary = train(compose_config([*GYM_TINY, "ptm=[graph_cnn,resnet18_random]"], tmp_path / "ok"))
    assert summary["status"] == "completed"


@pytest.mark.parametrize(
    "fault,message",
    [
        ("raise", "raised RuntimeError in its step 5: solver exploded"),
        ("nan_reward", "returned reward nan at its step 5"),
        ("outside_space", "feature 0 = 7 is outside the node space [0, 1]"),
        ("no_choice", "action_mask allows no node"),
        ("edge_count", "edge_links; give one row of 1 features per edge"),
        ("edge_outside", "edge 0 feature 0 = 9 is outside the edge space [0, 2]"),
        ("fractional_links", "edge_links must be whole-number node ids"),
        ("string_reward", "returned reward '1.0' of type str; it must be a float"),
        ("string_flag", "returned terminated='yes' of type str; it must be a bool"),
        ("system_exit", "raised SystemExit(3) in its step 5"),
        ("keyboard_interrupt", "raised KeyboardInterrupt() in its step 5"),
    ],
)
def test_a_misbehaving_env_stops_the_run_naming_env_step_and_cause(tmp_path: Path, fault: str, message: str):
    out = tmp_path / fault
    cfg = compose_config([
        *[o for o in NOT_COVERAGE if not o.startswith("algo.num_steps")], "algo.num_steps=4", "env=gym", "env.id=faulty/Value-v0",
        "env.entry_point=faulty_envs:FaultyValueGraph", f"+env.kwargs.fault={fault}", "+env.kwargs.fault_step=5",
        "ptm=[graph_cnn]", "algo.num_envs=1", "algo.num_minibatches=1",
    ], out)
    with pytest.raises(EnvError) as info:
        train(cfg)
    text = str(info.value)
    assert message in text and "faulty/Value-v0" in text and "training global_step 5" in text and "\n" not in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and message in summary["error"]
    assert load_checkpoint(out / "checkpoints" / "last.pt")["global_step"] == 4  # the last good checkpoint is kept


@pytest.mark.parametrize("optimal", ["nan", "0"])
def test_a_reference_return_that_is_nan_or_zero_stops_the_run_before_training(tmp_path: Path, optimal: str):
    out = tmp_path / "run"
    cfg = compose_config([*GYM_TINY, "env.id=badref/Value-v0", "env.entry_point=faulty_envs:BadReferenceValueGraph",
                          f"+env.kwargs.optimal={optimal}"], out)
    with pytest.raises(EnvError) as info:
        train(cfg)
    text = str(info.value)
    assert "reference_returns()['optimal']" in text and "badref/Value-v0" in text and "\n" not in text, text
    assert not (out / "metrics.jsonl").exists() or (out / "metrics.jsonl").read_text() == ""


def test_an_episode_may_end_with_nothing_left_to_pick(tmp_path: Path):
    """The last observation of a finished episode is never acted on: its mask may allow no node."""
    env = GymVectorGraphEnv("pickall/Value-v0", entry_point="faulty_envs:PickAllValueGraph", num_envs=2, seed=0)
    obs = env.reset(seed=0)
    ended = torch.zeros(2, dtype=torch.bool)
    for _ in range(12):
        first_allowed = torch.stack([obs.action_mask[s:e].nonzero()[0, 0] for s, e in zip(obs.ptr[:-1], obs.ptr[1:])])
        obs, _, terminated, _, _ = env.step(first_allowed, torch.zeros(2, 0))
        ended |= terminated
    assert ended.all()
    env.close()
    summary = train(compose_config([*GYM_TINY, "env.id=pickall/Value-v0", "env.entry_point=faulty_envs:PickAllValueGraph"],
                                   tmp_path / "run"))
    assert summary["status"] == "completed"


def test_resume_restarts_the_episodes_of_an_env_that_keeps_no_state(tmp_path: Path, monkeypatch, caplog):
    from test_resume import crash_after_logging

    out = tmp_path / "run"
    overrides = [*[o for o in GYM_TINY if not o.startswith(("algo.total_timesteps", "checkpoint.interval"))],
                 "algo.total_timesteps=128", "checkpoint.interval=2"]
    with monkeypatch.context() as m:
        crash_after_logging(m, at_step=96)
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(compose_config(overrides, out))
    with caplog.at_level("WARNING"):
        summary = train(compose_config(overrides, out))
    assert summary["status"] == "completed" and summary["resumed_from_steps"] == [64] and summary["global_step"] == 128
    assert "keeps no state: the episodes in flight at the checkpoint restart" in caplog.text
    assert [r["global_step"] for r in read_metrics(out)] == [0, 32, 64, 96, 128]


# ------------------------------------------------------------------------------------------- the real CLI
@pytest.mark.slow
def test_a_users_env_through_the_cli_sweep_report_and_evaluate(tmp_path: Path, fake_torch_home: Path):
    """The README's path for a user's env: installed or on PYTHONPATH, named by id, swept, reported, evaluated."""
    import os
    import subprocess
    import sys

    from conftest import subprocess_env

    env = {**subprocess_env(fake_torch_home), "PYTHONPATH": os.pathsep.join([str(EXAMPLES), os.environ.get("PYTHONPATH", "")])}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)

    sweep_dir = tmp_path / "sweep"
    proc = cli("wsa_lab", "-m", *GYM_TINY, "+env.kwargs.continuous_dim=2", "seed=0,1", f"hydra.sweep.dir={sweep_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/summary.json"))]
    assert [(s["status"], s["seed"], s["metric"]) for s in summaries] == [("completed", 0, "eval/optimal_ratio"),
                                                                          ("completed", 1, "eval/optimal_ratio")]
    report = cli("wsa_lab.report", str(sweep_dir), "--no-plots", "--reps", "200")
    assert report.returncode == 0, report.stderr
    assert "optimal_ratio" in report.stdout and (sweep_dir / "report").is_dir()
    evaluated = cli("wsa_lab.evaluate", str(sweep_dir), "episodes=2")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    for folder in sorted(p.parent for p in sweep_dir.glob("*/summary.json")):
        result = json.loads(next(folder.glob("eval_*.json")).read_text())
        assert "optimal_ratio" in json.dumps(result)


@pytest.mark.slow
def test_the_agent_learns_a_users_env(tmp_path: Path):
    """A learning claim, not a smoke test: on ValueGraph (pick the most valuable node; see examples/graph_envs)
    8192 env steps take the greedy policy from the random policy's ratio (~0.42) to well above it (README: 0.89
    at seed 0). The margin leaves room for other seeds and machines; the README gives the numbers over seeds."""
    overrides = [o for o in NOT_COVERAGE if not o.startswith(("algo.", "evaluation.", "checkpoint."))]
    summary = train(compose_config([
        *overrides, "env=gym", f"env.id={VALUE_GRAPH}", "ptm=[graph_cnn]", "+env.kwargs.continuous_dim=1",
        "algo.total_timesteps=8192", "checkpoint.interval=1000", "seed=0",
    ], tmp_path / "run"))
    random_ratio = read_metrics(tmp_path / "run")[0]["reference/random_optimal_ratio"]
    assert random_ratio < 0.6
    assert summary["eval/optimal_ratio"] > random_ratio + 0.25, (summary["eval/optimal_ratio"], random_ratio)


# ------------------------------------------------------------------------------------------- async envs: stop paths
@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_async_envs_stop_like_sync_ones_on_a_signal_to_the_process_group(tmp_path: Path, fake_torch_home: Path, signum):
    """Ctrl-C in a terminal (or `kill -TERM -<pgid>`) reaches every process of the group: the env workers must not die
    mid-step; the run checkpoints, says `interrupted` and exits 128 + the signal, with no traceback."""
    from test_hostile_runs import metrics_lines, wait_for, wsa_lines

    run_dir = tmp_path / "run"
    args = [*GYM_TINY, "algo.total_timesteps=100000", "checkpoint.interval=1000", "env.vectorization=async",
            "logger.console.progress_bar=false", f"hydra.run.dir={run_dir}"]
    env = {**subprocess_env(fake_torch_home), "PYTHONPATH": os.pathsep.join([str(EXAMPLES), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "wsa_lab", *args], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for("2 metrics lines", lambda: metrics_lines(run_dir) >= 2, proc)
        os.killpg(proc.pid, signum)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err and "interrupted while starting up" not in err, err
    (line,) = wsa_lines(err)
    assert line.startswith(f"wsa_lab: run stopped by {signal.Signals(signum).name} after writing a checkpoint"), line
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["global_step"] > 0


@pytest.mark.slow
def test_an_async_env_that_raises_is_one_line_not_a_chain_of_tracebacks(tmp_path: Path, fake_torch_home: Path):
    run_dir = tmp_path / "run"
    args = [*[o for o in NOT_COVERAGE if not o.startswith("algo.num_steps")], "algo.num_steps=4", "env=gym",
            "env.id=faulty/Value-v0", "env.entry_point=faulty_envs:FaultyValueGraph", "+env.kwargs.fault=raise",
            "+env.kwargs.fault_step=5", "ptm=[graph_cnn]", "algo.num_envs=2", "algo.num_minibatches=1",
            "env.vectorization=async", f"hydra.run.dir={run_dir}"]
    paths = [str(EXAMPLES), str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
    env = {**subprocess_env(fake_torch_home), "PYTHONPATH": os.pathsep.join(paths)}
    proc = subprocess.run([sys.executable, "-m", "wsa_lab", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("wsa_lab:")]
    assert len(lines) == 1 and "raised RuntimeError in its step" in lines[0] and "solver exploded" in lines[0], proc.stderr
