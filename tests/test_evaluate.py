"""`python -m wsa_lab.evaluate`: suites, references, tiny trained checkpoints on every suite, the table, errors;
and a plain Gymnasium env of the contract (tests/plugin_envs) trained, then evaluated under a shifted kwarg."""

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

from conftest import REPO, compose_config, from_yaml, subprocess_env
from test_train import TINY
from wsa_lab import stats
from wsa_lab.contract import ratio_to_reference, specs
from wsa_lab import suites as suites_module
from wsa_lab.build import make_agent, make_env
from wsa_lab.envs import CoverageEnv, generate_instances, greedy_returns
from wsa_lab.errors import ConfigError, WeightsNotFoundError, WsaLabError
from wsa_lab.evaluate import (
    EvaluateSettings, compose_settings, evaluate_agent, evaluate_runs, find_runs, format_table, load_run, main, sampled_returns,
)
from wsa_lab.weights.checks import ALLOW_UNVERIFIED_ENV
from wsa_lab.rl.evaluation import play
from wsa_lab.suites import build_conditions, prepare_condition
from wsa_lab.train import train

SUITES = ("in_distribution", "size_shift", "structure_shift", "cities")
FAST = ["num_instances=2", "episodes=1", "bootstrap_reps=200"]
BASE_ENV = {"_target_": "wsa_lab.envs.CoverageEnv", "num_nodes": 50, "num_sites": 5, "num_clusters": 3, "knn_k": 8,
            "image_size": 32, "cost": 1.0, "max_episode_steps": None}
COLUMNS = {"N": "num_nodes", "K": "num_sites"}
# A researcher's own plain Gymnasium env (examples/graph_envs, no wsa_lab import; its node count varies between
# episodes) trained through env=gym; tests/faulty_envs.PlainValueGraph is the same env without references.
EXAMPLES = REPO / "examples" / "graph_envs"
VALUE_GRAPH = "graph_envs:graph_envs/ValueGraph-v0"
GYM_ENV = {"_target_": "wsa_lab.contract.GymVectorGraphEnv", "id": VALUE_GRAPH, "kwargs": {"picks": 2},
           "entry_point": None, "vectorization": "sync", "max_episode_steps": None}
GYM_TINY = [o for o in TINY if not o.startswith("env.")] + ["env=gym", "+env.kwargs.picks=2", "ptm=[graph_cnn]"]
PLAIN = ["env.id=plain/Value-v0", "env.entry_point=faulty_envs:PlainValueGraph"]


@pytest.fixture(autouse=True)
def _user_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    """The example package and tests/faulty_envs are importable, as a user's own package would be."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


def coverage_env(**kwargs) -> CoverageEnv:
    return CoverageEnv(**{"num_envs": 1, "num_nodes": 20, "knn_k": 4, "num_sites": 3, **kwargs})


# ------------------------------------------------------------------------------------------- suites
def test_every_suite_composes_and_resolves_against_the_default_env():
    for suite_name in SUITES:
        settings, suite = compose_settings([f"eval_env={suite_name}"])
        assert suite.name == suite_name and settings.num_instances == 32 and suite.columns == COLUMNS
        conditions = build_conditions(suite.conditions, BASE_ENV, settings.env)
        assert [c.name for c in conditions] == list(suite.conditions)
        assert all(c.env["image_size"] == 32 for c in conditions)  # the agent's CNN input never changes


def test_size_shift_scales_n_and_k_half_up():
    _, suite = compose_settings(["eval_env=size_shift"])
    sizes = {c.name: (c.env["num_nodes"], c.env["num_sites"]) for c in build_conditions(suite.conditions, BASE_ENV)}
    assert sizes == {"n_half": (25, 3), "n_x2": (100, 10), "n_x4": (200, 20)}
    changed = {c.name: c.changed for c in build_conditions(suite.conditions, BASE_ENV)}
    assert changed["n_x2"] == {"num_nodes": 100, "num_sites": 10}


def test_structure_shift_conditions_play_the_same_positions():
    _, suite = compose_settings(["eval_env=structure_shift"])
    conds = {c.name: c for c in build_conditions(suite.conditions, BASE_ENV)}
    assert conds["one_cluster"].env["num_clusters"] == 1 and conds["eight_clusters"].env["num_clusters"] == 8
    assert conds["cost_half"].env["cost"] == 0.5 and conds["cost_x2"].env["cost"] == 2.0

    def played(condition) -> CoverageEnv:  # the held-out instances of the condition's env
        env = make_env(condition.config(), num_envs=64, seed=5)
        env.reset(seed=5)
        return env

    # A plain condition plays the generator's instances of that seed, as the coverage env's own evaluation.
    default = played(build_conditions({"d": {}}, BASE_ENV)[0])
    reference = generate_instances(64, 50, generator=torch.Generator().manual_seed(5))
    assert torch.equal(default.pos, reference[0]) and torch.equal(default.demand, reference[1])
    # Demand shifts keep the positions of the training generator and only redraw the demand.
    uniform, heavy = played(conds["uniform_demand"]), played(conds["heavy_tailed_demand"])
    assert type(uniform).__name__ == "ShiftedCoverageEnv"
    assert torch.equal(uniform.pos, default.pos) and torch.equal(heavy.pos, default.pos)
    assert torch.allclose(uniform.demand, torch.full((64, 50), 1 / 50))
    assert torch.allclose(heavy.demand.sum(dim=1), torch.ones(64))
    assert heavy.demand.max(dim=1).values.mean() > 2 * default.demand.max(dim=1).values.mean()  # heavier tail
    assert conds["uniform_demand"].describe()["demand_sigma"] == 0.0 and default.num_envs == 64


def test_bad_conditions_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="env.seed: cannot be changed by an evaluation condition"):
        build_conditions({"c": {"env": {"seed": 3}}}, BASE_ENV)
    with pytest.raises(ConfigError, match="scale.num_envs: cannot be changed"):
        build_conditions({"c": {"scale": {"num_envs": 2}}}, GYM_ENV)
    with pytest.raises(ConfigError, match="unknown key 'num_node' \\(did you mean 'num_nodes'\\?\\)"):
        build_conditions({"c": {"scale": {"num_node": 2}}}, BASE_ENV)
    with pytest.raises(ConfigError, match="unknown key 'sigma'"):
        build_conditions({"c": {"sigma": 2}}, BASE_ENV)
    with pytest.raises(ConfigError, match="positive number"):
        build_conditions({"c": {"scale": {"cost": -1}}}, BASE_ENV)
    with pytest.raises(ConfigError, match="min_population: applies to country conditions only"):
        build_conditions({"c": {"min_population": 5000}}, BASE_ENV)
    (condition,) = build_conditions({"tiny": {"env": {"num_nodes": 6}}}, BASE_ENV)  # K=5, knn_k=8 >= N
    with pytest.raises(ConfigError, match="condition 'tiny': .*knn_k must be < num_nodes"):
        prepare_condition(condition, 2, seed=0)
    (negative,) = build_conditions({"neg": {"demand_sigma": -1.0}}, BASE_ENV)  # checked by the env, as any argument
    with pytest.raises(ConfigError, match="condition 'neg': env: demand_sigma must be >= 0"):
        prepare_condition(negative, 2, seed=0)


def test_a_condition_whose_env_the_agent_cannot_read_is_a_config_error():
    """Generalises 'image_size cannot change': the condition's spec must match the training env's (not its size)."""
    trained = specs(coverage_env())
    (bigger, wider) = build_conditions(
        {"bigger": {"scale": {"num_nodes": 2}}, "big_image": {"env": {"image_size": 64}}},
        {**BASE_ENV, "num_nodes": 20, "knn_k": 4, "num_sites": 3},
    )
    prepare_condition(bigger, 2, seed=0).check_agent(trained)  # more nodes: fine (the agent is size-agnostic)
    prepared = prepare_condition(wider, 2, seed=0)
    with pytest.raises(ConfigError, match=r"condition 'big_image': its env does not fit the trained agent "
                       r"\(image \(3, 64, 64\), trained on \(3, 32, 32\)\)"):
        prepared.check_agent(trained)


def test_gym_env_conditions_reach_into_kwargs():
    conds = build_conditions(
        {"dotted": {"scale": {"kwargs.picks": 1.5}}, "nested": {"scale": {"kwargs": {"picks": 1.5}}},
         "replaced": {"env": {"kwargs": {"min_nodes": 6}, "vectorization": "sync"}}},
        GYM_ENV,
    )
    dotted, nested, replaced = conds
    assert dotted.env == nested.env and dotted.env["kwargs"] == {"picks": 3}  # 2 * 1.5, an int stays an int
    assert dotted.changed == {"kwargs.picks": 3} and GYM_ENV["kwargs"] == {"picks": 2}  # the run's config untouched
    assert dotted.env["id"] == VALUE_GRAPH
    assert replaced.env["kwargs"] == {"picks": 2, "min_nodes": 6}  # merged, not replaced
    assert dotted.describe() == {"env": {k: v for k, v in dotted.env.items() if k != "_target_"}, "changed": {"kwargs.picks": 3}}
    with pytest.raises(ConfigError, match="scale.kwargs.max_nodes: the run's env config has no value to scale"):
        build_conditions({"c": {"scale": {"kwargs.max_nodes": 2}}}, GYM_ENV)
    with pytest.raises(ConfigError, match="scale.vectorization: the run's value 'sync' is not a number"):
        build_conditions({"c": {"scale": {"vectorization": 2}}}, GYM_ENV)
    for field, value in (("demand_sigma", 0.0), ("country", "FR")):
        with pytest.raises(ConfigError, match=f"{field} applies to the built-in coverage env \\(env=coverage\\) only"):
            build_conditions({"c": {field: value}}, GYM_ENV)


def test_prepared_condition_references_are_the_envs():
    (condition,) = build_conditions({"c": {"env": {"num_nodes": 20, "knn_k": 4, "num_sites": 3}}}, BASE_ENV)
    prepared = prepare_condition(condition, num_instances=3, seed=1)
    assert prepared.num_instances == 3 and prepared.reference_names == ["greedy", "random", "optimum"]
    instances = generate_instances(3, 20, generator=torch.Generator().manual_seed(1))
    greedy = greedy_returns(coverage_env(num_envs=3, autoreset=False), instances, radius_grid=11)
    assert prepared.evaluator.reference_returns["greedy"] == pytest.approx(greedy.mean().item())
    assert 0 < prepared.evaluator.reference_returns["random"] < prepared.evaluator.reference_returns["greedy"]
    again = prepare_condition(condition, num_instances=3, seed=1)
    assert again.evaluator.reference_returns == prepared.evaluator.reference_returns
    # The evaluation-wide env override (what radius_grid was) reaches the coverage env's reference.
    small = {"c": {"env": {"num_nodes": 20, "knn_k": 4, "num_sites": 3}}}
    (finer,) = build_conditions(small, BASE_ENV, {"greedy_radius_grid": 21})
    assert finer.env["greedy_radius_grid"] == 21 and finer.changed["greedy_radius_grid"] == 21
    assert prepare_condition(finer, num_instances=3, seed=1).env.greedy_radius_grid == 21


def test_compose_errors_name_the_problem():
    with pytest.raises(ConfigError, match="unknown eval_env 'nope'; choose one of: cities, in_distribution"):
        compose_settings(["eval_env=nope"])
    with pytest.raises(ConfigError, match="unknown key 'epsiodes' \\(did you mean 'episodes'\\?\\)"):
        compose_settings(["epsiodes=3"])
    with pytest.raises(ConfigError, match="episodes must be >= 1"):
        compose_settings(["episodes=0"])
    with pytest.raises(ConfigError, match="To append to your config use \\+eval_env.conditions.x.env.cost=2"):
        compose_settings(["eval_env.conditions.x.env.cost=2"])
    with pytest.raises(ConfigError, match="radius_grid was removed: .*\\+env.greedy_radius_grid=R"):
        compose_settings(["radius_grid=21"])
    settings, suite = compose_settings(
        ["eval_env=cities", "episodes=3", "seed=7", "~eval_env.conditions", "+eval_env.conditions={fr: {country: FR}}",
         "eval_env.name=cities_fr", "+env.greedy_radius_grid=21"]
    )
    assert (settings.episodes, settings.seed, list(suite.conditions), settings.env) == (3, 7, ["fr"], {"greedy_radius_grid": 21})
    assert suite.name == "cities_fr"


def test_changed_conditions_need_a_new_suite_name():
    """Extra conditions under the shipped name would replace eval_in_distribution.json/.md with other conditions."""
    with pytest.raises(ConfigError, match="eval_env.conditions.big changes the suite's conditions but keeps its name.*"
                                          "set eval_env.name=<a new name>"):
        compose_settings(["+eval_env.conditions.big={scale: {num_nodes: 2}}"])
    with pytest.raises(ConfigError, match="eval_env.conditions changes the suite's conditions"):
        compose_settings(["eval_env=cities", "~eval_env.conditions", "+eval_env.conditions={fr: {country: FR}}"])
    _settings, suite = compose_settings(["+eval_env.conditions.big={scale: {num_nodes: 2}}", "eval_env.name=big"])
    assert suite.name == "big" and list(suite.conditions) == ["held_out", "big"]


# ------------------------------------------------------------------------------------------- table
def _fake_result(arm: str, seed: int, ratios: dict[str, float]) -> dict:
    """A coverage run's result (headline eval/greedy_ratio), as evaluate_run writes it."""
    return {
        "metric": "eval/greedy_ratio",
        "run": {"name": arm, "seed": seed},
        "conditions": {
            c: {"env": {"num_nodes": 50, "num_sites": 5}, "changed": {}, "references": ["greedy", "random"],
                "greedy_return": 0.8, "random_greedy_ratio": 0.5, "greedy_ratio": r, "stochastic_greedy_ratio": r - 0.1,
                "sampled_greedy_ratio": r + 0.05}
            for c, r in ratios.items()
        },
    }


def _plain_result(arm: str, seed: int, returns: dict[str, float]) -> dict:
    """A run of an env without references (headline eval/return)."""
    return {
        "metric": "eval/return",
        "run": {"name": arm, "seed": seed},
        "conditions": {
            c: {"env": {"kwargs": {"picks": 2}}, "changed": {"kwargs.picks": 4} if c == "b" else {}, "references": [],
                "return": r, "stochastic_return": r - 0.5, "sampled_return": r + 0.25}
            for c, r in returns.items()
        },
    }


def test_table_uses_the_report_statistics():
    results = [
        _fake_result("base", 0, {"a": 0.6, "b": 0.7}), _fake_result("base", 1, {"a": 0.8, "b": 0.9}),
        _fake_result("wsa", 0, {"a": 0.9, "b": 0.95}), _fake_result("wsa", 1, {"a": 0.7, "b": 0.8}),
        _fake_result("wsa", 2, {"a": 0.8, "b": 0.85}),
    ]
    table = format_table("demo", results, from_yaml(EvaluateSettings, "evaluate.yaml", bootstrap_reps=300), COLUMNS)
    ci = stats.bootstrap_ci(np.array([0.9, 0.7, 0.8]), stats.mean, reps=300, seed=0)
    assert f"{ci.value:.3f} [{ci.low:.3f}, {ci.high:.3f}]" in table  # wsa deterministic on condition a
    assert "| condition | N | K | greedy ref. return | random | base deterministic |" in table
    assert "| a | 50 | 5 | 0.800 | 0.500 |" in table and "fraction of the `greedy` reference's" in table
    assert "base: 2 (seeds 0, 1); wsa: 3 (seeds 0, 1, 2)" in table
    assert "**all (IQM over seeds x conditions)**" in table
    p = np.mean([stats.probability_of_improvement([0.9, 0.7, 0.8], [0.6, 0.8]),
                 stats.probability_of_improvement([0.95, 0.8, 0.85], [0.7, 0.9])])
    assert f"P(wsa > base) = {p:.2f}" in table
    unfinished = _fake_result("wsa", 3, {"a": 0.0, "b": 0.0})
    unfinished["run"].update(status="failed", path="/x/run3")
    assert format_table("demo", [*results, unfinished], from_yaml(EvaluateSettings, "evaluate.yaml", bootstrap_reps=300), COLUMNS) == table + (
        "\n- not averaged in: /x/run3 (status 'failed')\n"
    )
    assert "No completed run" in format_table("demo", [unfinished], from_yaml(EvaluateSettings, "evaluate.yaml"))
    single = format_table("demo", results[:1], from_yaml(EvaluateSettings, "evaluate.yaml", bootstrap_reps=300), COLUMNS)
    assert "| 0.600 | 0.500 |" in single and "[" not in single.split("| a |")[1]  # one seed: no CI
    one_each = format_table("demo", [results[0], results[2]], from_yaml(EvaluateSettings, "evaluate.yaml", bootstrap_reps=300), COLUMNS)
    assert "P(wsa > base) = n/a (needs >= 2 seeds per arm)" in one_each


def test_table_of_an_env_without_references_shows_the_return():
    results = [_plain_result("plain", s, {"a": 1.0 + s, "b": 2.0 + s}) for s in range(2)]
    settings = from_yaml(EvaluateSettings, "evaluate.yaml", bootstrap_reps=300)
    table = format_table("demo", results, settings, COLUMNS)  # COLUMNS: absent, left out
    assert f"| condition | changed | plain deterministic | plain stochastic | plain best of {settings.episodes} |" in table
    assert "| a | - | 1.500 [1.000, 2.000] | 1.000 [0.500, 1.500] | 1.750 [1.250, 2.250] |" in table and "| b | kwargs.picks=4 | 2.500" in table
    assert "the agent's mean episode return" in table and "greedy" not in table
    with pytest.raises(ConfigError, match="different headline metrics \\(eval/return: 2 runs, eval/greedy_ratio: 1 run\\)"):
        format_table("demo", [*results, _fake_result("cov", 0, {"a": 0.5, "b": 0.5})], from_yaml(EvaluateSettings, "evaluate.yaml"))


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
        (["{tmp}/bad_yaml"], "bad_yaml: resolved_config.yaml is not readable YAML (expected ',' or ']'"),
        (["{tmp}/list_yaml"], "list_yaml: resolved_config.yaml is not readable YAML (a list, not a mapping)"),
        (["{tmp}/bad_json"], "bad_json: summary.json is not readable JSON (Expecting value at line 1, column 1)"),
        (["{tmp}/ckpt", "{tmp}/bad_yaml"], "bad_yaml: resolved_config.yaml is not readable YAML"),  # before any play
        (["{tmp}/ckpt", "table={tmp}/bad_json/summary.json/t.md"], "bad_json/summary.json is a file, not a folder; choose another table"),
        ([], "usage: python -m wsa_lab.evaluate"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], message: str):
    _fake_run(tmp_path / "run")
    resolved = OmegaConf.to_yaml(compose_config([*TINY, "ptm=[graph_cnn]"], tmp_path / "ckpt"), resolve=True)
    for name, config in (("ckpt", resolved), ("bad_yaml", "env: [1\n"), ("list_yaml", "- 1\n"), ("bad_json", resolved)):
        (_fake_run(tmp_path / name, checkpoint=True) / "resolved_config.yaml").write_text(config)
    (tmp_path / "bad_json" / "summary.json").write_text("not json")
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
        mp.setenv(ALLOW_UNVERIFIED_ENV, "1")  # the fake cache's stand-in ImageNet files (conftest)
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
        assert list(on_disk["conditions"]) == list(suite_cfg.conditions) and on_disk["metric"] == "eval/greedy_ratio"
        for name, c in on_disk["conditions"].items():
            assert c["references"] == ["greedy", "random", "optimum"]  # conf/env/coverage.yaml: optimum_reference
            assert c["optimum_return"] >= c["greedy_return"] - 1e-6, name
            assert c["greedy_return"] > 0 and c["greedy_return"] >= c["random_return"] - 1e-6, name
            for key in ("return", "stochastic_return", "greedy_ratio", "stochastic_greedy_ratio", "random_greedy_ratio",
                        "random_ratio", "stochastic_random_ratio"):
                assert math.isfinite(c[key]), (name, key)
            assert c["greedy_ratio"] == pytest.approx(c["return"] / c["greedy_return"])
            assert c["stochastic_greedy_ratio"] == pytest.approx(c["stochastic_return"] / c["greedy_return"])
            assert c["random_greedy_ratio"] == pytest.approx(c["random_return"] / c["greedy_return"])
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
        "wsa_lab.evaluate: error: unknown eval_env 'moon'; choose one of: cities, in_distribution, jobshop_sizes, size_shift, structure_shift"
    ]


def test_deterministic_policy_plays_unseen_sizes(tmp_path: Path):
    """The actor-critic is size-agnostic in N: a model built for N=20 plays N=40 (as in size_shift)."""
    cfg = compose_config([*TINY, "ptm=[graph_cnn]"], tmp_path)
    agent = make_agent(cfg, coverage_env()).eval()
    env = CoverageEnv(num_envs=2, num_nodes=40, knn_k=4, num_sites=6)
    returns = play(agent, env, seed=0, deterministic=True)
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
    with pytest.raises(WeightsNotFoundError, match="resnet18.* not found"):  # training still needs the file
        train(compose_config([*TINY, "ptm=[resnet18_imagenet,graph_cnn]"], tmp_path / "new_run"))
    assert evaluate_runs([run], args).runs[0]["conditions"] == with_file
    # A checkpoint that lacks the backbone's tensors is refused, never completed with random weights.
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    state["agent"] = {k: v for k, v in state["agent"].items() if "conv1" not in k}
    torch.save(state, run / "checkpoints" / "last.pt")
    with pytest.raises(WsaLabError, match="cannot load the agent"):
        evaluate_runs([run], args)


# ------------------------------------------------------------------------------------------- a user's env
@pytest.fixture(scope="module")
def gym_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's plain Gymnasium env trained through env=gym: `value` (with references, seeds 0 and 1) and `plain`
    (the same env without references), each a few PPO iterations."""
    root = tmp_path_factory.mktemp("gym_runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(EXAMPLES))
        mp.syspath_prepend(str(Path(__file__).parent))
        for name, seed, extra in (("value", 0, [f"env.id={VALUE_GRAPH}"]), ("value", 1, [f"env.id={VALUE_GRAPH}"]),
                                  ("plain", 0, PLAIN)):
            train(compose_config([*GYM_TINY, *extra, f"name={name}", f"seed={seed}"], root / f"{name}_{seed}"))
    return root


MORE_PICKS = "+eval_env.conditions.more_picks={scale: {kwargs: {picks: 2}}}"  # picks 2 -> 4 (min_nodes is 6)
MORE_PICKS_SUITE = [MORE_PICKS, "eval_env.name=more_picks"]


def test_a_users_env_evaluates_under_a_shifted_kwarg(gym_runs: Path):
    runs = [gym_runs / "value_0", gym_runs / "value_1"]
    result = evaluate_runs(runs, [*FAST, "device=cpu", *MORE_PICKS_SUITE])
    headline = json.loads((runs[0] / "summary.json").read_text())["metric"]  # eval/<the env's first reference>_ratio
    first, other = json.loads((runs[0] / "eval_more_picks.json").read_text())["conditions"]["more_picks"]["references"]
    assert headline == f"eval/{first}_ratio"
    for run_result, folder in zip(result.runs, runs):
        assert json.loads((folder / "eval_more_picks.json").read_text()) == json.loads(json.dumps(run_result))
        assert run_result["metric"] == headline and run_result["run"]["env"] == VALUE_GRAPH
        held_out, more = run_result["conditions"]["held_out"], run_result["conditions"]["more_picks"]
        assert held_out["changed"] == {} and held_out["env"]["kwargs"] == {"picks": 2}
        assert more["changed"] == {"kwargs.picks": 4} and more["env"]["kwargs"] == {"picks": 4}
        assert "demand_sigma" not in more and more["num_instances"] == 2 and more["episodes"] == 1
        for c in (held_out, more):
            reference = c[f"{first}_return"]
            assert c[f"{first}_ratio"] == pytest.approx(ratio_to_reference(c["return"], reference))
            assert c[f"stochastic_{first}_ratio"] == pytest.approx(ratio_to_reference(c["stochastic_return"], reference))
            assert c[f"{other}_{first}_ratio"] == pytest.approx(ratio_to_reference(c[f"{other}_return"], reference))
            assert math.isfinite(c["return_std"]) and math.isfinite(c["stochastic_return_std"])
            # best of `episodes` sampled plays: at least their mean (episodes=1 here: equal)
            assert c["sampled_return"] == pytest.approx(c["stochastic_return"])
            assert c[f"sampled_{first}_ratio"] == pytest.approx(ratio_to_reference(c["sampled_return"], reference))
        assert more[f"{first}_return"] > held_out[f"{first}_return"]  # 4 picks earn more than 2
    table = result.table
    assert f"| condition | changed | {first} ref. return | {other} | value deterministic | value stochastic |" in table
    assert "| more_picks | kwargs.picks=4 |" in table and "| held_out | - |" in table
    assert "value: 2 (seeds 0, 1)" in table and "greedy" not in table


def test_a_users_env_without_references_is_tabled_by_its_return(gym_runs: Path):
    result = evaluate_runs([gym_runs / "plain_0"], [*FAST, "device=cpu", *MORE_PICKS_SUITE])
    (run,) = result.runs
    assert run["metric"] == "eval/return"
    for c in run["conditions"].values():
        assert c["references"] == [] and not any(k.endswith(("_ratio", "_return")) and k not in ("stochastic_return", "sampled_return") for k in c)
    assert "| condition | changed | plain deterministic | plain stochastic |" in result.table
    assert "the agent's mean episode return" in result.table and "greedy" not in result.table


def test_a_users_env_runs_reproduce_and_leave_the_global_rng_alone(gym_runs: Path):
    run = load_run(gym_runs / "value_0", torch.device("cpu"))
    (condition,) = build_conditions({"held_out": {}}, run.cfg.env)
    prepared = prepare_condition(condition, num_instances=3, seed=11)
    try:
        state = torch.random.get_rng_state()
        first = sampled_returns(run.agent, prepared, seed=11, episodes=2)
        assert torch.equal(torch.random.get_rng_state(), state)
        assert first.shape == (2, 3) and torch.equal(sampled_returns(run.agent, prepared, seed=11, episodes=2), first)
        cell = evaluate_agent(run.agent, prepared, seed=11, episodes=2)  # best of 2 = the max over those two plays
        assert cell["sampled_return"] == pytest.approx(first.max(dim=0).values.mean().item())
        assert cell["stochastic_return"] == pytest.approx(first.mean().item())
        assert cell["stochastic_return"] <= cell["sampled_return"] + 1e-6
    finally:
        prepared.close()


@pytest.mark.parametrize(
    "runs, overrides, message",
    [
        (["value_0", "plain_0"], [], "have different headline metrics (eval/"),
        (["value_0"], ["+eval_env.conditions.u={demand_sigma: 0.0}", "eval_env.name=shifted"],
         "eval_env.conditions.u: demand_sigma applies to the built-in coverage env (env=coverage) only"),
        (["value_0"], ["+eval_env.conditions.x={env: {kwargs: {pics: 3}}}", "eval_env.name=shifted"], "eval_env condition 'x': "),
        (["value_0"], ["+eval_env.conditions.bid={env: {kwargs: {continuous_dim: 2}}}", "eval_env.name=shifted"],
         "eval_env condition 'bid': its env does not fit the trained agent (node feature width 4, trained on 2; "
         "continuous action dim 2, trained on 0)"),
    ],
)
def test_a_users_env_bad_conditions_are_one_line(
    gym_runs: Path, capsys: pytest.CaptureFixture, runs: list[str], overrides: list[str], message: str
):
    before = {p: p.stat().st_mtime_ns for p in gym_runs.glob("*/eval_*.json")}
    assert main([*(str(gym_runs / r) for r in runs), *FAST, "device=cpu", *overrides]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("wsa_lab.evaluate: error: ") and message in err, err
    if len(runs) > 1:  # the metrics are compared before any run plays
        assert {p: p.stat().st_mtime_ns for p in gym_runs.glob("*/eval_*.json")} == before
