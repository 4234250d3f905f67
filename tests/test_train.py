"""`train(cfg)` in-process on a tiny budget: the run folder, the metrics, reproducibility."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from conftest import compose_config
from wsa_lab.run.checkpoint import load_checkpoint
from wsa_lab.tracking import read_metrics
from wsa_lab.train import train

# A tiny budget; only the console logger (the W&B/TensorBoard backends have their own tests).
TINY = [
    "algo.total_timesteps=64", "algo.num_envs=4", "algo.num_steps=8", "algo.num_minibatches=2", "algo.update_epochs=1",
    "env.num_nodes=20", "env.knn_k=4", "env.num_sites=3", "evaluation.num_instances=4", "evaluation.interval=1",
    "checkpoint.interval=1", "logger=[console]", "logger.console.progress_bar=false",
]
TIMING_KEYS = {"charts/SPS"}


def run(tmp_path: Path, name: str, *overrides: str) -> tuple[dict, Path]:
    out = tmp_path / name
    return train(compose_config([*TINY, *overrides], out)), out


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def test_wsa_run_leaves_a_complete_run_folder(tmp_path: Path):
    summary, out = run(tmp_path, "wsa", "experiment=phase3_hybrid")
    assert summary["status"] == "completed" and summary["global_step"] == 64
    assert json.loads((out / "summary.json").read_text())["eval/greedy_ratio"] == summary["eval/greedy_ratio"]
    records = read_metrics(out)
    steps = [r["global_step"] for r in records]
    assert steps == [0, 32, 64]  # references at 0, then one line per iteration keyed by env steps
    last = records[-1]
    for key in ("charts/episodic_return", "charts/SPS", "losses/value_loss", "losses/policy_loss", "losses/entropy",
                "eval/return", "eval/greedy_ratio", "wsa/attention_entropy"):
        assert key in last, key
    weights = [last[f"wsa/attention_weights_{i}"] for i in range(3)]
    assert abs(sum(weights) - 1) < 1e-5
    assert all(f"wsa/feature_norms_{i}" in last for i in range(3))
    assert 0 < records[0]["reference/random_greedy_ratio"] < 1
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["global_step"] == 64 and state["iteration"] == 2
    assert {"agent", "optimizer", "rng", "env"} <= set(state) and "generator" in state["env"]  # env RNG too
    assert "phase3_hybrid" in (out / "resolved_config.yaml").read_text()
    assert not list((out / "checkpoints").glob("*.tmp"))


def test_standard_actor_run(tmp_path: Path):
    summary, out = run(tmp_path, "std", "experiment=phase1_baseline")
    assert summary["wsa_enabled"] is False and summary["ptm_names"] == []
    assert not any(k.startswith("wsa/") for r in read_metrics(out) for k in r)


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path: Path):
    _, a = run(tmp_path, "a", "seed=0", "ptm=[graph_cnn,resnet18_random]")
    _, b = run(tmp_path, "b", "seed=0", "ptm=[graph_cnn,resnet18_random]")
    _, c = run(tmp_path, "c", "seed=1", "ptm=[graph_cnn,resnet18_random]")
    assert without_timing(read_metrics(a)) == without_timing(read_metrics(b))
    assert without_timing(read_metrics(a)) != without_timing(read_metrics(c))
    sa, sb = load_checkpoint(a / "checkpoints/last.pt"), load_checkpoint(b / "checkpoints/last.pt")
    assert all(torch.equal(sa["agent"][k], sb["agent"][k]) for k in sa["agent"])


def test_wsa_logging_switches(tmp_path: Path):
    _, out = run(
        tmp_path, "quiet", "ptm=[graph_cnn,resnet18_random]",
        "actor_critic.wsa.logging.log_attention_weights=false", "actor_critic.wsa.logging.log_features=false",
    )
    assert not any(k.startswith("wsa/") for r in read_metrics(out) for k in r)
