"""`python -m wsa_lab.evaluate`: suites, references, tiny trained checkpoints on every suite, the table, errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config, subprocess_env
from test_train import TINY
from wsa_lab import stats
from wsa_lab.envs import CoverageEnv, build_conditions, generate_instances, prepare_condition
from wsa_lab.envs import suites as suites_module
from wsa_lab.errors import ConfigError, WeightsNotFoundError, WsaLabError
from wsa_lab.evaluate import EvaluateSettings, compose_settings, evaluate_runs, find_runs, format_table, main
from wsa_lab.train import train

SUITES = ("in_distribution", "size_shift", "structure_shift", "cities")
FAST = ["num_instances=2", "episodes=1", "bootstrap_reps=200"]
BASE_ENV = {"_target_": "wsa_lab.envs.CoverageEnv", "num_nodes": 50, "num_sites": 5, "num_clusters": 3, "knn_k": 8,
            "image_size": 32, "cost": 1.0, "max_episode_steps": None}


# ------------------------------------------------------------------------------------------- suites
def test_every_suite_composes_and_resolves_against_the_default_env():
    for suite_name in SUITES:
        settings, suite = compose_settings([f"eval_env={suite_name}"])
        assert suite.name == suite_name and settings.num_instances == 32
        conditions = build_conditions(suite.conditions, BASE_ENV)
        assert [c.name for c in conditions] == list(suite.conditions)
        assert all(c.env["image_size"] == 32 for c in conditions)  # the agent's CNN input never changes


def test_size_shift_scales_n_and_k_half_up():
    _, suite = compose_settings(["eval_env=size_shift"])
    sizes = {c.name: (c.num_nodes, c.num_sites) for c in build_conditions(suite.conditions, BASE_ENV)}
    assert sizes == {"n_half": (25, 3), "n_x2": (100, 10), "n_x4": (200, 20)}


def test_structure_shift_conditions():
    _, suite = compose_settings(["eval_env=structure_shift"])
    conds = {c.name: c for c in build_conditions(suite.conditions, BASE_ENV)}
    assert conds["one_cluster"].env["num_clusters"] == 1 and conds["eight_clusters"].env["num_clusters"] == 8
    assert conds["cost_half"].env["cost"] == 0.5 and conds["cost_x2"].env["cost"] == 2.0
    # Demand shifts keep the positions of the training generator and only redraw the demand.
    default = build_conditions({"d": {}}, BASE_ENV)[0].instances(64, seed=5)
    reference = generate_instances(64, 50, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(a, b) for a, b in zip(default, reference))
    uniform = conds["uniform_demand"].instances(64, seed=5)
    heavy = conds["heavy_tailed_demand"].instances(64, seed=5)
    assert torch.equal(uniform[0], default[0]) and torch.equal(heavy[0], default[0])
    assert torch.allclose(uniform[1], torch.full((64, 50), 1 / 50))
    assert torch.allclose(heavy[1].sum(dim=1), torch.ones(64))
    assert heavy[1].max(dim=1).values.mean() > 2 * default[1].max(dim=1).values.mean()  # heavier tail


def test_bad_conditions_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="image_size: cannot be changed"):
        build_conditions({"c": {"env": {"image_size": 64}}}, BASE_ENV)
    with pytest.raises(ConfigError, match="unknown key 'num_node' \\(did you mean 'num_nodes'\\?\\)"):
        build_conditions({"c": {"scale": {"num_node": 2}}}, BASE_ENV)
    with pytest.raises(ConfigError, match="unknown key 'sigma'"):
        build_conditions({"c": {"sigma": 2}}, BASE_ENV)
    with pytest.raises(ConfigError, match="positive number"):
        build_conditions({"c": {"scale": {"cost": -1}}}, BASE_ENV)
    (condition,) = build_conditions({"tiny": {"env": {"num_nodes": 6}}}, BASE_ENV)  # K=5, knn_k=8 >= N
    with pytest.raises(ConfigError, match="condition 'tiny': knn_k must be < num_nodes"):
        prepare_condition(condition, 2, 1, seed=0)


def test_prepared_condition_references_match_the_env_policies():
    (condition,) = build_conditions({"c": {"env": {"num_nodes": 20, "knn_k": 4, "num_sites": 3}}}, BASE_ENV)
    prepared = prepare_condition(condition, num_instances=3, episodes=2, seed=1)
    assert prepared.greedy_returns.shape == (3,) and prepared.random_returns.shape == (6,)
    pos, _ = prepared.repeated_instances()
    assert torch.equal(pos[0], pos[1]) and torch.equal(pos[2], prepared.instances[0][1])
    assert 0 < prepared.random_return < prepared.greedy_return
    again = prepare_condition(condition, num_instances=3, episodes=2, seed=1)
    assert torch.equal(again.greedy_returns, prepared.greedy_returns)
    assert torch.equal(again.random_returns, prepared.random_returns)


def test_compose_errors_name_the_problem():
    with pytest.raises(ConfigError, match="unknown eval_env 'nope'; choose one of: cities, in_distribution"):
        compose_settings(["eval_env=nope"])
    with pytest.raises(ConfigError, match="unknown key 'epsiodes' \\(did you mean 'episodes'\\?\\)"):
        compose_settings(["epsiodes=3"])
    with pytest.raises(ConfigError, match="episodes must be >= 1"):
        compose_settings(["episodes=0"])
    with pytest.raises(ConfigError, match="To append to your config use \\+eval_env.conditions.x.env.cost=2"):
        compose_settings(["eval_env.conditions.x.env.cost=2"])
    settings, suite = compose_settings(
        ["eval_env=cities", "episodes=3", "seed=7", "~eval_env.conditions", "+eval_env.conditions={fr: {country: FR}}"]
    )
    assert (settings.episodes, settings.seed, list(suite.conditions)) == (3, 7, ["fr"])


# ------------------------------------------------------------------------------------------- table
def _fake_result(arm: str, seed: int, ratios: dict[str, float]) -> dict:
    return {
        "run": {"name": arm, "seed": seed},
        "conditions": {
            c: {"env": {"num_nodes": 50, "num_sites": 5}, "greedy_return": 0.8, "random_greedy_ratio": 0.5,
                "greedy_ratio": r, "stochastic_greedy_ratio": r - 0.1}
            for c, r in ratios.items()
        },
    }


def test_table_uses_the_report_statistics():
    results = [
        _fake_result("base", 0, {"a": 0.6, "b": 0.7}), _fake_result("base", 1, {"a": 0.8, "b": 0.9}),
        _fake_result("wsa", 0, {"a": 0.9, "b": 0.95}), _fake_result("wsa", 1, {"a": 0.7, "b": 0.8}),
        _fake_result("wsa", 2, {"a": 0.8, "b": 0.85}),
    ]
    table = format_table("demo", results, EvaluateSettings(bootstrap_reps=300))
    ci = stats.bootstrap_ci(np.array([0.9, 0.7, 0.8]), stats.mean, reps=300, seed=0)
    assert f"{ci.value:.3f} [{ci.low:.3f}, {ci.high:.3f}]" in table  # wsa greedy on condition a
    assert "| a | 50 | 5 | 0.800 | 0.500 |" in table
    assert "base: 2 (seeds 0, 1); wsa: 3 (seeds 0, 1, 2)" in table
    assert "**all (IQM over seeds x conditions)**" in table
    p = np.mean([stats.probability_of_improvement([0.9, 0.7, 0.8], [0.6, 0.8]),
                 stats.probability_of_improvement([0.95, 0.8, 0.85], [0.7, 0.9])])
    assert f"P(wsa > base) = {p:.2f}" in table
    unfinished = _fake_result("wsa", 3, {"a": 0.0, "b": 0.0})
    unfinished["run"].update(status="failed", path="/x/run3")
    assert format_table("demo", [*results, unfinished], EvaluateSettings(bootstrap_reps=300)) == table + (
        "\n- not averaged in: /x/run3 (status 'failed')\n"
    )
    assert "No completed run" in format_table("demo", [unfinished], EvaluateSettings())
    single = format_table("demo", results[:1], EvaluateSettings(bootstrap_reps=300))
    assert "| 0.600 | 0.500 |" in single and "[" not in single.split("| a |")[1]  # one seed: no CI


# ------------------------------------------------------------------------------------------- folders
def _fake_run(folder: Path, checkpoint: bool = False) -> Path:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"name": "x", "seed": 0, "status": "failed"}))
    if checkpoint:
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "last.pt").write_bytes(b"")
    return folder


def test_find_runs(tmp_path: Path):
    good = _fake_run(tmp_path / "sweep" / "0_x_seed0", checkpoint=True)
    _fake_run(tmp_path / "sweep" / "1_x_seed1")
    warnings: list[str] = []
    assert find_runs([tmp_path / "sweep"], warn=warnings.append) == [good.resolve()]
    assert len(warnings) == 1 and "1_x_seed1" in warnings[0]
    assert find_runs([good, tmp_path / "sweep"]) == [good.resolve()]  # each run once
    with pytest.raises(ConfigError, match="run folder without checkpoints/last.pt"):
        find_runs([tmp_path / "sweep" / "1_x_seed1"])
    with pytest.raises(ConfigError, match="no such folder"):
        find_runs([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no run folder with checkpoints/last.pt"):
        find_runs([tmp_path / "empty"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["{tmp}/missing"], "missing: no such folder"),
        (["{tmp}/run"], "run folder without checkpoints/last.pt"),
        (["{tmp}/ckpt", "eval_env=nope"], "unknown eval_env 'nope'"),
        (["{tmp}/ckpt", "episodes=x"], "episodes: expected int"),
        (["{tmp}/ckpt"], "ckpt/checkpoints/last.pt"),  # an empty checkpoint file: cannot load the agent
        ([], "usage: python -m wsa_lab.evaluate"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], message: str):
    _fake_run(tmp_path / "run")
    ckpt = _fake_run(tmp_path / "ckpt", checkpoint=True)
    (ckpt / "resolved_config.yaml").write_text(OmegaConf.to_yaml(compose_config([*TINY, "ptm=[graph_cnn]"], ckpt), resolve=True))
    assert main([a.format(tmp=tmp_path) for a in args]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err
    if args:
        assert len(err.splitlines()) == 1 and err.startswith("wsa_lab.evaluate: error: ")


# ------------------------------------------------------------------------------------------- trained runs
@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory: pytest.TempPathFactory, fake_torch_home: Path) -> Path:
    """Three tiny trained runs under one folder: arm `gcn` (seeds 0, 1) and the Standard Actor (seed 0)."""
    sweep = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(fake_torch_home))
        for i, overrides in enumerate(
            (["ptm=[graph_cnn]", "name=gcn", "seed=0"], ["ptm=[graph_cnn]", "name=gcn", "seed=1"],
             ["experiment=phase1_baseline", "seed=0"])
        ):
            train(compose_config([*TINY, *overrides], sweep / f"{i}_run"))
    return sweep


@pytest.mark.slow
@pytest.mark.parametrize("suite", SUITES)
def test_tiny_checkpoints_on_every_suite(tiny_sweep: Path, suite: str):
    result = evaluate_runs([tiny_sweep], [f"eval_env={suite}", *FAST, "device=cpu"])
    assert result.suite == suite and len(result.runs) == 3
    _, suite_cfg = compose_settings([f"eval_env={suite}"])
    for run_result, folder in zip(result.runs, sorted(tiny_sweep.glob("*_run"))):
        on_disk = json.loads((folder / f"eval_{suite}.json").read_text())
        assert on_disk == json.loads(json.dumps(run_result))
        assert list(on_disk["conditions"]) == list(suite_cfg.conditions)
        for name, c in on_disk["conditions"].items():
            assert c["greedy_return"] > 0 and c["greedy_return"] >= c["random_return"] - 1e-6, name
            for key in ("return", "stochastic_return", "greedy_ratio", "stochastic_greedy_ratio", "random_greedy_ratio"):
                assert math.isfinite(c[key]), (name, key)
            assert c["greedy_ratio"] == pytest.approx(c["return"] / c["greedy_return"])
            assert c["num_instances"] == (1 if "country" in c else 2)
    # The references depend on the condition only: every run sees the same numbers.
    refs = {json.dumps({n: c["greedy_return"] for n, c in r["conditions"].items()}) for r in result.runs}
    assert len(refs) == 1
    assert result.table_path == (tiny_sweep / f"eval_{suite}.md").resolve()
    assert result.table_path.read_text() == result.table
    assert "gcn: 2 (seeds 0, 1); phase1_baseline: 1 (seeds 0)" in result.table
    if suite == "size_shift":  # trained at N=20, K=3: the agent plays N=10..80
        sizes = [(c["env"]["num_nodes"], c["env"]["num_sites"]) for c in result.runs[0]["conditions"].values()]
        assert sizes == [(10, 2), (40, 6), (80, 12)]
    if suite == "cities":
        france = result.runs[0]["conditions"]["france"]
        assert france["country"] == "FR" and france["env"]["num_nodes"] == 20


@pytest.mark.slow
def test_references_are_computed_once_per_condition_and_results_reproduce(tiny_sweep: Path, monkeypatch: pytest.MonkeyPatch):
    calls: list[str] = []
    original = suites_module.prepare_condition

    def counting(condition, *args, **kwargs):
        calls.append(condition.name)
        return original(condition, *args, **kwargs)

    monkeypatch.setattr("wsa_lab.evaluate.prepare_condition", counting)
    first = evaluate_runs([tiny_sweep], ["eval_env=in_distribution", *FAST, "device=cpu", f"table={tiny_sweep}/t.md"])
    assert calls == ["held_out"]  # three runs, one greedy reference
    second = evaluate_runs([tiny_sweep / "0_run"], ["eval_env=in_distribution", *FAST, "device=cpu"])
    assert second.runs[0]["conditions"] == first.runs[0]["conditions"]  # stochastic episodes are seeded
    assert second.table_path == (tiny_sweep / "0_run" / "eval_in_distribution.md").resolve()
    assert (tiny_sweep / "t.md").is_file()


@pytest.mark.slow
def test_cli_end_to_end(tiny_sweep: Path, fake_torch_home: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "wsa_lab.evaluate", str(tiny_sweep / "0_run"), str(tiny_sweep / "1_run"),
         "eval_env=in_distribution", *FAST, "device=cpu"],
        capture_output=True, text=True, env=subprocess_env(fake_torch_home), timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| held_out | 20 | 3 |" in proc.stdout and "gcn deterministic" in proc.stdout
    assert (tiny_sweep / "eval_in_distribution.md").is_file()  # the two runs' common folder
    proc = subprocess.run(
        [sys.executable, "-m", "wsa_lab.evaluate", str(tiny_sweep), "eval_env=moon"],
        capture_output=True, text=True, env=subprocess_env(fake_torch_home), timeout=300,
    )
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        "wsa_lab.evaluate: error: unknown eval_env 'moon'; choose one of: cities, in_distribution, size_shift, structure_shift"
    ]


def test_deterministic_policy_plays_unseen_sizes(tmp_path: Path):
    """The actor-critic is size-agnostic in N: a model built for N=20 plays N=40 (as in size_shift)."""
    from wsa_lab.evaluate import play
    from wsa_lab.train import make_agent

    cfg = compose_config([*TINY, "ptm=[graph_cnn]"], tmp_path)
    env = CoverageEnv(num_envs=2, num_nodes=40, knn_k=4, num_sites=6, autoreset=False)
    agent = make_agent(cfg, env).eval()
    pos, demand = generate_instances(2, 40, generator=torch.Generator().manual_seed(0))
    returns = play(agent, env, (pos, demand), deterministic=True)
    assert returns.shape == (2,) and torch.isfinite(returns).all()


@pytest.mark.slow
def test_a_run_with_an_imagenet_ptm_evaluates_without_the_weight_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The checkpoint holds the frozen ImageNet backbone, so evaluation (on a laptop, another cluster) needs no
    weight file; the result is the one obtained with the file present."""
    run = tmp_path / "imagenet_run"
    train(compose_config([*TINY, "ptm=[resnet18_imagenet,graph_cnn]"], run))
    args = ["eval_env=in_distribution", *FAST, "device=cpu"]
    with_file = evaluate_runs([run], args).runs[0]["conditions"]
    empty = tmp_path / "empty_torch_home"
    empty.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(empty))
    with pytest.raises(WeightsNotFoundError, match="resnet18 not found"):  # training still needs the file
        train(compose_config([*TINY, "ptm=[resnet18_imagenet,graph_cnn]"], tmp_path / "new_run"))
    assert evaluate_runs([run], args).runs[0]["conditions"] == with_file
    # A checkpoint that lacks the backbone's tensors is refused, never completed with random weights.
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    state["agent"] = {k: v for k, v in state["agent"].items() if "conv1" not in k}
    torch.save(state, run / "checkpoints" / "last.pt")
    with pytest.raises(WsaLabError, match="cannot load the agent"):
        evaluate_runs([run], args)
