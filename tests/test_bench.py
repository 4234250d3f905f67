"""`python benchmarks/bench.py`: runs every section at tiny sizes, reports ratios and verdicts, writes JSON;
the evaluation set's reference returns are computed once, not at every evaluation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import bench
from conftest import REPO, actor_critic_kwargs, coverage_specs, subprocess_env
from wsa_lab.envs import CoverageEnv
from wsa_lab.models import build_actor_critic
from wsa_lab.rl import Evaluator


def row(arm: str, seconds: float, env_share: float = 0.01) -> dict:
    return {"arm": arm, "iteration_s": seconds, "env_share": env_share}


def test_ratios_and_verdicts():
    rows = [row("standard", 4.0), row("wsa3_hybrid", 4.4), row("wsa3_hybrid_nocache", 5.5),
            row("wsa3_frozen", 1.6, env_share=0.08), row("wsa3_frozen_nocache", 3.2)]
    r = bench.ratios(rows)
    assert r["hybrid_cost_vs_standard"] == pytest.approx(1.1)
    assert r["frozen_speedup_vs_standard"] == pytest.approx(2.5)
    assert r["wsa3_hybrid_cache_speedup"] == pytest.approx(1.25)
    assert r["wsa3_frozen_cache_speedup"] == pytest.approx(2.0)
    assert rows[0]["cost_vs_standard"] == 1.0
    verdicts = bench.target_verdicts(r)
    assert verdicts["hybrid_cost_vs_standard"]["met"] and verdicts["frozen_speedup_vs_standard"]["met"]
    assert not verdicts["env_share_max"]["met"]  # 8% > 5%


def test_references_are_computed_once():
    env = bench.CountedReferences(CoverageEnv(num_envs=4, num_nodes=20, num_sites=3, knn_k=4, image_size=16))
    ptms = [{"name": "g", "model_type": "graph_cnn", "weights": None, "freeze_backbone": False}]
    agent = build_actor_critic(*coverage_specs(image_size=16), **actor_critic_kwargs(wsa={"enabled": True, "pretrained_models": ptms}))
    evaluator = Evaluator(env, seed=3)
    assert env.calls == 1 and evaluator.reference_names == ["greedy", "random", "optimum"]
    for _ in range(3):
        metrics = evaluator.evaluate(agent)
    assert env.calls == 1  # none during the evaluations
    assert set(metrics) == {"eval/return", "eval/return_std", "eval/greedy_ratio", "eval/random_ratio", "eval/optimum_ratio"}


def test_the_env_timer_wraps_the_env_from_outside():
    env = CoverageEnv(num_envs=2, num_nodes=20, num_sites=3, knn_k=4)
    timed = bench.TimedEnv(env, torch.device("cpu"))
    timed.step(torch.zeros(2, dtype=torch.long), torch.zeros(2, 1))
    assert timed.seconds > 0 and timed.num_envs == 2 and type(env).step is CoverageEnv.step  # nothing replaced


def test_each_tree_runs_its_own_bench(tmp_path: Path):
    """compare_commits and its paired worker find a tree's bench where that tree has it: `benchmarks/bench.py`,
    or `wsa_lab.bench` in trees from before it moved out of the package."""
    from benchmarks import compare_commits

    assert compare_commits.bench_command(REPO / "src")[1:] == [str(REPO / "benchmarks" / "bench.py")]
    old_src = tmp_path / "old" / "src"
    (old_src / "wsa_lab").mkdir(parents=True)
    assert compare_commits.bench_command(old_src)[1:] == ["-m", "wsa_lab.bench"]
    (old_src / "wsa_lab" / "__init__.py").write_text("")
    (old_src / "wsa_lab" / "bench.py").write_text("WHERE = 'inside the package'\n")
    code = "from paired_worker import load_bench; b = load_bench(); print(getattr(b, 'WHERE', b.__file__))"
    for src, expected in ((old_src, "inside the package"), (REPO / "src", str(REPO / "benchmarks" / "bench.py"))):
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO / "benchmarks", env={**subprocess_env(tmp_path),
                              "PYTHONPATH": str(src)}, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.splitlines()[-1] == expected


def test_peak_rss_is_read():
    assert bench._max_rss_mib() > 10


def test_quick_bench_in_process(tmp_path: Path):
    out = tmp_path / "bench.json"
    report = bench.main(["--quick", "--no-memory", "--only", "arms", "gym", "mixed", "references", "--out", str(out)])
    assert json.loads(out.read_text())["ratios"] == report["ratios"]
    assert [r["arm"] for r in report["arms"]] == list(bench.ARMS)
    for r in report["arms"]:
        assert r["sps_overall"] > 0 and 0 <= r["env_share"] < 1 and r["batch_size"] == 16
    by = {r["arm"]: r for r in report["arms"]}
    assert by["wsa3_hybrid"]["frozen_feature_cache"] and not by["wsa3_hybrid_nocache"]["frozen_feature_cache"]
    assert by["wsa3_frozen"]["params_trainable"] < by["wsa3_hybrid"]["params_trainable"]
    assert {"hybrid_cost_vs_standard", "frozen_speedup_vs_standard", "env_share_max", "hybrid_cost_vs_standard_cpu_time"} <= set(report["verdicts"])
    assert report["references"]["computed_once"]
    assert [r["arm"] for r in report["gym"]] == ["standard", "wsa3_hybrid", "standard_gym", "wsa3_hybrid_gym"]
    assert all(r["cost_vs_batched"] > 0 for r in report["gym"][2:])
    assert [r["total_nodes"] for r in report["mixed_sizes"]] == list(bench.QUICK_MIXED_TOTAL_NODES)
    assert all(r["us_per_node"] > 0 and r["max_nodes"] > r["min_nodes"] for r in report["mixed_sizes"])
    # the test's torch hub cache holds stand-ins under torchvision's names: found, and labelled as stand-ins
    assert report["weights"].startswith("stand-in ImageNet files")


@pytest.mark.slow
def test_bench_cli_every_section(tmp_path: Path, fake_torch_home: Path):
    """The real command, tiny sizes, with the peak-RSS subprocesses: tables on stdout, JSON on disk."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench.py"), "--quick", "--out", str(out)],
        capture_output=True, text=True, env=subprocess_env(fake_torch_home), timeout=1800, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["weights"].startswith("stand-in ImageNet files")  # found like real files, but not called real
    for section in ("arms", "gym", "mixed_sizes", "sweep_nodes", "sweep_ptms", "checkpointing", "references"):
        assert section in report, section
    assert [r["num_nodes"] for r in report["sweep_nodes"]] == [20, 20, 40, 40]
    assert [len(r["ptm_names"]) for r in report["sweep_ptms"]] == [1, 2]
    assert all(r["rss_peak_mib"] >= r["rss_build_mib"] > 50 for r in report["arms"] + report["checkpointing"])
    assert "## Main arms" in proc.stdout and "## Gradient checkpointing" in proc.stdout
    on = [r for r in report["checkpointing"] if r["checkpointing"]]
    assert len(on) == 2 and all(r["grad_max_abs_diff"] <= 1e-6 for r in on), on  # same gradients, less memory


def test_checkpointing_leaves_gradients_unchanged_in_the_bench_probe(tmp_path: Path):
    """The bench's own gradient comparison (what BENCHMARKS.md reports) on a tiny WSA-3 hybrid."""
    common = [*bench.QUICK, "env.image_size=64", "experiment=phase3_hybrid"]
    off = [*common, "actor_critic.checkpoint_min_nodes=1000000"]
    on = [*common, "actor_critic.checkpoint_min_nodes=0"]
    weights, _ = bench.weights_dir_for("synthetic", str(tmp_path))
    extra = [f"paths.weights_dir={weights}"]
    assert bench.checkpoint_gradient_diff([*off, *extra], [*on, *extra], "cpu", str(tmp_path)) <= 1e-6


def test_coverage_gap_best_radius_is_the_best_one_step_reward():
    """`benchmarks/coverage_gap.py`'s radius rule agrees with the env's reward: no radius does better at that site."""
    from benchmarks.coverage_gap import RADII, best_radius

    def env() -> CoverageEnv:
        made = CoverageEnv(num_envs=4, num_nodes=20, num_sites=3, knn_k=4, image_size=16, seed=0)
        made.reset(seed=3)
        return made

    node = torch.tensor([0, 5, 11, 19])
    probe = env()
    best = best_radius(probe, node)
    _, best_reward, *_ = probe.step(node, best[:, None])
    for radius in RADII[::10]:
        _, reward, *_ = env().step(node, radius.expand(4, 1))
        assert bool((best_reward >= reward - 1e-6).all()), float(radius)


def test_coverage_gap_replays_the_runs_final_evaluation(tmp_path: Path):
    """Its `agent` play is the run's own final evaluation (same return); greedy is 1.0 of itself."""
    from benchmarks.coverage_gap import measure
    from test_train import run

    summary, out = run(tmp_path, "run")
    row = measure(out)
    assert row["returns"]["agent"] == pytest.approx(summary["eval/return"], rel=1e-6)
    assert row["greedy_ratio"]["greedy"] == 1.0 and 0.0 <= row["greedy_site_share"] <= 1.0
    assert row["returns"]["agent_nodes_best_radius"] > 0 and row["arm"] == summary["name"]
