"""Sweeps through the real CLI: grids, the sweep index, failure markers, launcher presets, run folders."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from test_cli import wsa_lab
from test_train import TINY
from wsa_lab.conf_files import config_dir

FAIL_FAST = ["env.num_sites=99"]  # every job fails at start-up (num_sites >= num_nodes): a cheap way to list a grid


def index(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / "index.json").read_text())


def sweep(args: list[str], tmp_path: Path, torch_home: Path, name: str = "sweep") -> tuple:
    sweep_dir = tmp_path / name
    proc = wsa_lab(["-m", *args, f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path, torch_home=torch_home)
    return proc, sweep_dir


@pytest.mark.slow
def test_an_experiment_declares_its_grid_and_the_cli_narrows_it(tmp_path: Path, fake_torch_home: Path):
    proc, sweep_dir = sweep(["experiment=phase4_count", *FAIL_FAST], tmp_path, fake_torch_home)
    assert proc.returncode == 1
    jobs = index(sweep_dir)["jobs"]
    assert [j["overrides"][:2] for j in jobs] == [[f"ptm_count={k}", f"seed={s}"] for k in (2, 3, 4) for s in (0, 1, 2)]
    assert [j["folder"] for j in jobs][:2] == ["0_phase4_count_k2_seed0", "1_phase4_count_k2_seed1"]  # arm + seed
    assert all(j["state"] == "failed" and (sweep_dir / j["folder"] / "FAILED").is_file() for j in jobs)
    assert "9 jobs: 9 failed" in proc.stderr and "failed job #8 (ptm_count=4 seed=2)" in proc.stderr

    proc, sweep_dir = sweep(["experiment=phase4_count", "seed=5", *FAIL_FAST], tmp_path, fake_torch_home, "narrow")
    assert [j["folder"] for j in index(sweep_dir)["jobs"]] == [f"{i}_phase4_count_k{k}_seed5" for i, k in enumerate((2, 3, 4))]


@pytest.mark.parametrize(
    "args, folders",
    [
        (["experiment=glob(phase2_*)"], ["0_phase2_all_imagenet_seed0", "1_phase2_all_random_seed0", "2_phase2_mixed_seed0"]),
        (["experiment=phase4_wsa2,phase4_wsa3,phase4_wsa4", "seed=0,1,2"],
         [f"{3 * i + s}_phase4_wsa{k}_seed{s}" for i, k in enumerate((2, 3, 4)) for s in range(3)]),
    ],
)
def test_whole_phases_and_lists_of_arms_sweep(args: list[str], folders: list[str], tmp_path: Path, fake_torch_home: Path):
    proc, sweep_dir = sweep([*args, *FAIL_FAST], tmp_path, fake_torch_home)
    assert proc.returncode == 1
    assert [j["folder"] for j in index(sweep_dir)["jobs"]] == folders


@pytest.mark.slow
def test_a_failing_job_does_not_stop_the_others(tmp_path: Path, fake_torch_home: Path):
    proc, sweep_dir = sweep(["ptm=[graph_cnn]", "ptm_count=5,1", *TINY], tmp_path, fake_torch_home)
    assert proc.returncode == 1, proc.stderr
    failed, done = index(sweep_dir)["jobs"]
    assert (failed["state"], done["state"]) == ("failed", "done")
    assert "ptm_count=5 must be an integer" in failed["error"]
    marker = (sweep_dir / failed["folder"] / "FAILED").read_text()
    assert "Traceback" in marker and "ConfigError" in marker and "ptm_count=5" in marker
    assert json.loads((sweep_dir / done["folder"] / "summary.json").read_text())["status"] == "completed"
    assert not (sweep_dir / done["folder"] / "FAILED").exists()
    assert re.search(r"failed job #0 \(ptm_count=5\): ConfigError: .* -> .*0_wsa3_default_seed0/FAILED", proc.stderr)
    table = (sweep_dir / "index.md").read_text()
    assert "| 0 | failed | `ptm_count=5` |" in table and "| 1 | done | `ptm_count=1` |" in table


@pytest.mark.slow
def test_local_parallel_runs_every_job_at_most_max_parallel_at_once(tmp_path: Path, fake_torch_home: Path):
    proc, sweep_dir = sweep(
        ["hydra/launcher=local_parallel", "hydra.launcher.max_parallel=2", "ptm=[graph_cnn]", "seed=0,1,2", *TINY],
        tmp_path, fake_torch_home,
    )
    assert proc.returncode == 0, proc.stderr
    jobs = index(sweep_dir)["jobs"]
    assert [j["state"] for j in jobs] == ["done"] * 3
    assert len({j["pid"] for j in jobs} | {os.getpid()}) == 4  # each job its own process
    assert jobs[2]["started"] >= min(jobs[0]["ended"], jobs[1]["ended"])  # the third waited for a free slot
    assert len(list((sweep_dir / ".submitit").glob("*/*_log.out"))) == 3
    assert not [p for p in (sweep_dir / ".submitit").iterdir() if "%j" in p.name]  # no literal template folder


def compose_hydra(overrides: list[str]):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


def test_slurm_preset_reads_the_local_site_config_and_the_cli_wins(tmp_path: Path):
    launcher = compose_hydra(["hydra/launcher=slurm"]).hydra.launcher
    assert launcher.gpus_per_node == 1 and launcher.max_num_timeout > 0 and launcher.partition is None
    assert launcher._target_.endswith("SlurmLauncher")
    site = tmp_path / "site"
    (site / "local").mkdir(parents=True)
    (site / "local" / "slurm.yaml").write_text("partition: gpu\naccount: proj\nsetup: [module load cuda]\n")
    launcher = compose_hydra(
        ["hydra/launcher=slurm", f"hydra.searchpath=[file://{site}]", "hydra.launcher.account=other"]
    ).hydra.launcher
    assert (launcher.partition, launcher.account, list(launcher.setup)) == ("gpu", "other", ["module load cuda"])
    assert launcher.gpus_per_node == 1  # the preset's defaults stay
    example = OmegaConf.load(config_dir() / "slurm_local.example.yaml")
    assert set(example) <= set(launcher)  # the shipped example only uses keys the launcher takes


def test_run_and_sweep_folders_carry_the_process_id():
    cfg = compose_hydra(["experiment=phase3_hybrid", "seed=3"])
    run_dir, sweep_dir = str(cfg.hydra.run.dir), str(cfg.hydra.sweep.dir)
    assert re.fullmatch(rf"runs/\d{{4}}-\d\d-\d\d/\d\d-\d\d-\d\d-\d{{6}}-p{os.getpid()}_phase3_hybrid_seed3", run_dir)
    assert re.fullmatch(rf"multirun/\d{{4}}-\d\d-\d\d/\d\d-\d\d-\d\d-\d{{6}}-p{os.getpid()}", sweep_dir)


def test_the_wsa_lab_sweeper_keeps_a_failed_job_failed_and_ends_with_exit_1(tmp_path: Path, capsys):
    """Hydra's public Sweeper API: the basic sweeper's grid order and batches; a failed JobReturn is left FAILED
    (not rewritten to COMPLETED) and the sweep ends with one line per failed job, then SystemExit(1)."""
    from types import SimpleNamespace

    from hydra.core.utils import JobReturn, JobStatus
    from hydra_plugins.wsa_lab_launcher.sweeper import WsaLabSweeper

    from wsa_lab.run import sweep as index

    sweeper = WsaLabSweeper(max_batch_size=3, params={"seed": "0,1"})
    sweeper.hydra_context = SimpleNamespace(config_loader=None)
    assert sweeper.batches(["a=x,y"]) == [
        [["seed=0", "a=x"], ["seed=0", "a=y"], ["seed=1", "a=x"]], [["seed=1", "a=y"]],
    ]

    returned: list[JobReturn] = []

    class Launcher:
        def launch(self, batch, initial_job_idx):
            results = []
            for num, overrides in enumerate(batch, start=initial_job_idx):
                ok = num != 1
                index.update_job(
                    tmp_path, num, overrides=list(overrides), state="done" if ok else "failed",
                    error=None if ok else "ValueError: bad",
                )
                done = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
                results.append(done if ok else index.failed_return(overrides, ValueError("bad")))
            returned.extend(results)
            return results

    sweeper.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    sweeper.launcher = Launcher()
    sweeper.validate_batch_is_legal = lambda batch: None
    with pytest.raises(SystemExit) as ended:
        sweeper.sweep(["a=x,y"])
    assert ended.value.code == 1
    assert [r.status for r in returned] == [JobStatus.COMPLETED, JobStatus.FAILED, *[JobStatus.COMPLETED] * 2]
    assert isinstance(index.job_error(returned[1]), ValueError)
    err = capsys.readouterr().err
    assert "4 jobs: 3 done, 1 failed" in err and "wsa_lab: failed job #1 (seed=0 a=y): ValueError: bad" in err
    assert "Traceback" not in err and "Error executing job" not in err


def test_a_sweep_index_callback_pickles_without_its_open_folders(tmp_path: Path):
    """submitit pickles Hydra's callbacks with the launcher when it requeues a Slurm job: the locks stay here."""
    import pickle

    from wsa_lab.run.sweep import SweepIndex

    callback = SweepIndex()
    callback._open(tmp_path / "job", "choose another hydra.sweep.dir")
    copy = pickle.loads(pickle.dumps(callback))
    assert copy.folders == {} and (tmp_path / "job" / ".lock").is_file()
    callback._close(tmp_path / "job")
    assert not (tmp_path / "job" / ".lock").exists()
