"""The real CLI (`python -m wsa_lab`) in subprocesses: both actors train, errors are one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import subprocess_env
from test_train import TINY


def wsa_lab(args: list[str], cwd: Path, torch_home: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wsa_lab", *args], cwd=cwd, env=subprocess_env(torch_home),
        capture_output=True, text=True, timeout=timeout,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["phase1_baseline", "phase3_hybrid"])
def test_cli_trains_from_any_working_directory(experiment: str, tmp_path: Path, fake_torch_home: Path):
    # the WSA run keeps the default loggers (console, health, W&B offline, TensorBoard)
    args = [o for o in TINY if experiment == "phase1_baseline" or not o.startswith("logger=")]
    proc = wsa_lab([f"experiment={experiment}", *args], cwd=tmp_path, torch_home=fake_torch_home)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = list((tmp_path / "runs").glob(f"*/*_{experiment}_seed0"))
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "metrics.jsonl", "summary.json", "checkpoints/last.pt"):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["name"] == experiment
    if experiment == "phase3_hybrid":
        assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
        assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
        assert "wandb sync" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_two_sweeps_started_together_get_their_own_folders(tmp_path: Path, fake_torch_home: Path):
    args = ["-m", "experiment=phase4_count", "ptm_count=2", "seed=0", "ptm=[graph_cnn,resnet18_random]", *TINY]
    procs = [
        subprocess.Popen([sys.executable, "-m", "wsa_lab", *args], cwd=tmp_path, env=subprocess_env(fake_torch_home),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    sweeps = list((tmp_path / "multirun").glob("*/*"))
    assert len(sweeps) == 2
    for sweep in sweeps:
        assert (sweep / "0_phase4_count_k2_seed0" / "summary.json").is_file()


def test_config_error_is_one_line(tmp_path: Path, fake_torch_home: Path):
    proc = wsa_lab(["env.num_sites=60"], cwd=tmp_path, torch_home=fake_torch_home)
    assert_one_line_error(proc, "wsa_lab: error: env:", "num_sites")


def test_missing_imagenet_weights_say_where_to_put_them(tmp_path: Path, fake_torch_home: Path):
    empty = tmp_path / "empty_torch_home"
    proc = wsa_lab(["experiment=phase3_hybrid"], cwd=tmp_path, torch_home=empty)
    assert_one_line_error(
        proc, str(empty / "hub" / "checkpoints" / "resnet18-f37072fd.pth"), "weights: random",
        "ptm.resnet18_imagenet.weights=random", "experiment=phase2_all_random", "TORCH_HOME", "paths.weights_dir",
    )
    assert not (tmp_path / "runs").exists()  # a refused start leaves no (empty) run folder behind


def test_unknown_ptm_name_is_hydras_clear_error(tmp_path: Path, fake_torch_home: Path):
    proc = wsa_lab(["ptm=[resnet18_imagnet]"], cwd=tmp_path, torch_home=fake_torch_home)
    assert_one_line_error(proc, "Could not load 'ptm/resnet18_imagnet'")


def test_an_unknown_key_on_the_command_line_gets_a_did_you_mean(tmp_path: Path, fake_torch_home: Path):
    proc = wsa_lab(["algo.learning_rte=0.1"], cwd=tmp_path, torch_home=fake_torch_home)
    assert_one_line_error(proc, "unknown key 'learning_rte' (did you mean 'learning_rate'?)", "+KEY=VALUE")
    assert not (tmp_path / "runs").exists()


def test_the_did_you_mean_check_knows_mandatory_and_group_keys():
    from wsa_lab.__main__ import unknown_override

    assert "did you mean 'num_nodes'" in unknown_override(["env.num_node=30"])
    # a `???` key (gym's env.id) exists even though it has no value yet; a group choice changes the keys
    assert unknown_override(["env=gym", "env.id=my_pkg/MyEnv-v0"]) is None
    assert "did you mean 'id'" in unknown_override(["env=gym", "env.idd=my_pkg/MyEnv-v0"])
    assert unknown_override(["+algo.learning_rte=0.1"]) is None  # `+` adds a key on purpose
    assert unknown_override(["-m", "env=gym,coverage", "env.id=x"]) is None  # a group sweep: keys differ per job


def test_the_progress_bar_shows_a_dash_before_the_first_evaluation():
    from wsa_lab.train import _fmt

    assert (_fmt(None), _fmt(float("nan")), _fmt(0.25)) == ("-", "-", "0.250")
