"""Hostile inputs: every numeric key's bad values (zero, negative, huge, NaN, wrong type) stop a run at start-up with
one line, and its edge values train; runs that cannot fit in memory, secrets, names that leave the runs folder, a
file or a read-only folder in the way, duplicated PTMs and `--cfg ... --resolve` are each one line, before anything
is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import HydraException

from conftest import compose_config, subprocess_env
from test_train import TINY
from wsa_lab.errors import WsaLabError
from wsa_lab.train import train

GRAPH_ONLY = [*TINY, "ptm=[graph_cnn]"]

# key: (edge values that train, values refused at start-up)
NUMERIC = {
    "algo.learning_rate": (["1e-8"], ["0", "-1", "nan", "inf", "abc"]),
    "algo.clip_coef": (["0.001"], ["0", "-1", "nan"]),
    "algo.max_grad_norm": (["0.001"], ["0", "-1", "nan"]),
    "algo.ent_coef": (["0"], ["-1", "nan"]),
    "algo.vf_coef": (["0"], ["-0.5", "nan"]),
    "algo.gamma": (["0", "1"], ["-0.1", "1.1", "nan"]),
    "algo.gae_lambda": (["1"], ["-1", "2", "nan"]),
    "algo.target_kl": (["1e-6"], ["0", "-1", "nan"]),
    "algo.num_envs": (["1"], ["0", "-4", "1000000", "lots"]),
    "algo.num_steps": (["2"], ["0", "-3"]),
    "algo.update_epochs": (["1"], ["0", "-1"]),
    "algo.total_timesteps": (["32"], ["0", "-1", "31"]),
    "evaluation.interval": (["1"], ["0", "-2"]),
    "evaluation.num_instances": (["1"], ["0", "-1"]),
    "evaluation.seed": (["0", "4294967295"], ["-1", "4294967296", "1180591620717411303424"]),
    "checkpoint.interval": (["1"], ["0", "-1"]),
    "seed": (["0", "4294967295"], ["-1", "1180591620717411303424", "nan", "x"]),
    "env.cost": (["0"], ["-1", "nan", "inf"]),
    "env.r_min": (["0"], ["-0.1", "nan"]),
    "env.r_max": (["1"], ["nan", "0.01"]),
    "env.cluster_std": (["0"], ["-1", "nan"]),
    "env.background_frac": (["0", "1"], ["1.5", "nan"]),
    "env.num_nodes": (["5"], ["0", "-1", "3", "10000000", "1000000000"]),
    "env.max_episode_steps": (["1"], ["0", "-1"]),
    "env.greedy_radius_grid": (["1"], ["0"]),
    "actor_critic.hidden_dim": (["1"], ["0", "-1"]),
    "actor_critic.init_log_std": (["-5"], ["nan", "100"]),
    "actor_critic.wsa.attention.dropout": (["0"], ["1", "-0.1", "nan"]),
    "actor_critic.wsa.attention.temperature": (["0.01"], ["0", "-1", "nan"]),
    "actor_critic.wsa.attention.lr_scale": (["0.01"], ["0", "nan"]),
    "actor_critic.wsa.attention.uniform_warmup_steps": (["0"], ["-1"]),
    "ptm_count": (["1"], ["0", "2"]),
}
INVALID = [(key, value) for key, (_, bad) in NUMERIC.items() for value in bad]
EDGE = [(key, value) for key, (good, _) in NUMERIC.items() for value in good]


@pytest.mark.parametrize("key,value", INVALID, ids=[f"{k}={v}" for k, v in INVALID])
def test_a_bad_number_is_one_line_at_start_up(key: str, value: str, tmp_path: Path):
    out = tmp_path / "run"
    with pytest.raises((WsaLabError, HydraException)) as info:
        train(compose_config([*GRAPH_ONLY, f"{key}={value}"], out))
    message = str(info.value)
    assert "\n" not in message.strip() and (key.rsplit(".", 1)[-1] in message or "memory" in message), message
    assert not (out / "resolved_config.yaml").exists() and not (out / "metrics.jsonl").exists()


@pytest.mark.slow
@pytest.mark.parametrize("key,value", EDGE, ids=[f"{k}={v}" for k, v in EDGE])
def test_an_edge_value_trains(key: str, value: str, tmp_path: Path):
    summary = train(compose_config([*GRAPH_ONLY, f"{key}={value}"], tmp_path / "run"))
    assert summary["status"] == "completed"


def test_a_run_that_cannot_fit_in_memory_is_refused_before_it_allocates(tmp_path: Path):
    with pytest.raises(WsaLabError, match=r"this run needs about .* GiB of memory but .* is available: update activations .*graph and image sizes"):
        train(compose_config([*GRAPH_ONLY, "env.num_nodes=10000000"], tmp_path / "run"))
    with pytest.raises(WsaLabError, match=r"rollout buffer .* \(algo.num_steps x algo.num_envs x one observation\)"):
        train(compose_config([*GRAPH_ONLY, "algo.num_envs=1000000", "algo.total_timesteps=100000000"], tmp_path / "r"))


# ------------------------------------------------------------------------------------------ the real CLI
def wsa_lab(args: list[str], cwd: Path, torch_home: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wsa_lab", *args], cwd=cwd, env=subprocess_env(torch_home),
                          capture_output=True, text=True, timeout=300)


def one_line(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and fragment in proc.stderr, proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.startswith("wsa_lab: error:")]) == 1, proc.stderr


@pytest.mark.slow
def test_cli_refusals_before_hydra_writes_anything(tmp_path: Path, fake_torch_home: Path):
    """Each of these used to be a traceback or a leak; now one line, exit 1, and no file written."""
    secret = wsa_lab([*GRAPH_ONLY, "+logger.wandb.api_key=abc123secret"], tmp_path, fake_torch_home)
    one_line(secret, "never put keys or passwords in the config")
    assert not (tmp_path / "runs").exists()  # the key was written nowhere
    for override in ("+env.kwargs.access_token=abc", "+env.kwargs.sim_apikey=abc", "+hydra.job.env_set.WANDB_API_KEY=abc",
                     f"+env.kwargs.note={'0123456789abcdef' * 2 + '01234567'}"):
        leak = wsa_lab([*GRAPH_ONLY, override], tmp_path, fake_torch_home)
        one_line(leak, "never put keys or passwords in the config")
        assert override.split("=")[0].lstrip("+") in leak.stderr and not (tmp_path / "runs").exists()
    escape = wsa_lab([*GRAPH_ONLY, "name=../../../escape/x"], tmp_path, fake_torch_home)
    one_line(escape, "must be a plain name")
    assert not (tmp_path.parent.parent / "escape").exists() and not (tmp_path / "runs").exists()
    log_escape = wsa_lab([*GRAPH_ONLY, "hydra.job.name=../../escaped_log"], tmp_path, fake_torch_home)
    one_line(log_escape, "hydra.job.name='../../escaped_log' must be a plain name")
    assert not list(tmp_path.parent.glob("escaped_log*")) and not (tmp_path / "runs").exists()
    twice = wsa_lab([*TINY, "ptm=[graph_cnn,graph_cnn]"], tmp_path, fake_torch_home)
    one_line(twice, "names graph_cnn twice")
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way")
    file_dir = wsa_lab([*GRAPH_ONLY, f"hydra.run.dir={blocker}"], tmp_path, fake_torch_home)
    one_line(file_dir, "is a file, not a folder")
    assert blocker.read_text() == "in the way"
    # /proc refuses mkdir even to root, whose permission bits say "writable": a trial folder tells (was a traceback)
    one_line(wsa_lab([*GRAPH_ONLY, "hydra.run.dir=/proc/wsa_lab_run"], tmp_path, fake_torch_home),
             "/proc does not accept a new folder")
    if os.geteuid() != 0:  # root writes through read-only permission bits
        locked = tmp_path / "read_only"
        locked.mkdir(mode=0o555)
        one_line(wsa_lab([*GRAPH_ONLY, f"hydra.run.dir={locked}/run"], tmp_path, fake_torch_home), "does not accept a new folder")


@pytest.mark.slow
def test_cfg_resolve_prints_the_resolved_config(tmp_path: Path, fake_torch_home: Path):
    job = wsa_lab(["experiment=phase3_hybrid", "--cfg", "job"], tmp_path, fake_torch_home)
    assert job.returncode == 0, job.stderr
    assert "${wsa_lab.ptm_list" not in job.stdout and "- name: resnet18_imagenet" in job.stdout  # the list used
    hydra_cfg = wsa_lab(["experiment=phase3_hybrid", "--cfg", "hydra", "--resolve"], tmp_path, fake_torch_home)
    assert hydra_cfg.returncode == 0 and "Traceback" not in hydra_cfg.stderr, hydra_cfg.stderr


def test_a_refused_resume_leaves_the_run_folder_as_it_was(tmp_path: Path):
    out = tmp_path / "run"
    train(compose_config([*GRAPH_ONLY, "env.cost=1.0"], out))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(WsaLabError, match="holds a checkpoint of another config"):
        train(compose_config([*GRAPH_ONLY, "env.cost=2.0"], out))
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # resolved_config.yaml included
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"


def test_online_wandb_without_network_fails_in_seconds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import time

    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # the discard port: nothing listens
    start = time.time()
    with pytest.raises(WsaLabError, match="the W&B server 127.0.0.1:9 cannot be reached"):
        train(compose_config([*GRAPH_ONLY, "logger=[console,wandb]", "logger.wandb.mode=online"], tmp_path / "run"))
    assert time.time() - start < 10 and not (tmp_path / "run" / "wandb").exists()
