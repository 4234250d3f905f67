"""Sweeps through `hydra/launcher=slurm` on a real Slurm (CI brings one up: scripts/slurm/cluster.sh up).

Without a usable Slurm these tests skip, saying why; with WSA_LAB_REQUIRE_SLURM=1 (set by .ci/run) they fail
instead. Jobs are CPU-only (gpus_per_node=0) and tiny; each still starts a Python that imports torch.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import subprocess_env
from test_train import TINY

CPU_SLURM = [
    "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10", "device=cpu", "ptm=[graph_cnn]",
]
SHORT = [o for o in TINY if not o.startswith(("algo.total_timesteps=", "checkpoint.interval="))]
BATCH = 32  # algo.num_envs=4 x algo.num_steps=8 in TINY: env steps per iteration


def slurm_problem() -> str | None:
    """Why Slurm cannot run these tests here, or None."""
    for tool in ("sbatch", "squeue", "sacct", "scontrol", "scancel", "sinfo"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    try:
        nodes = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
        if nodes.returncode != 0 or not {"idle", "mixed", "allocated"} & set(nodes.stdout.split()):
            return f"sinfo shows no usable node ({(nodes.stdout + nodes.stderr).strip()[:200]})"
        acct = subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True, text=True, timeout=20)
        if acct.returncode != 0:
            return f"sacct does not answer (submitit needs accounting): {acct.stderr.strip()[:200]}"
    except subprocess.TimeoutExpired as exc:
        return f"{exc.cmd[0]} did not answer in 20 s"
    return None


@pytest.fixture(scope="module")
def slurm() -> None:
    problem = slurm_problem()
    if problem:
        message = f"no usable Slurm here: {problem}. To run these tests (Debian/Ubuntu, root): scripts/slurm/cluster.sh up"
        if os.environ.get("WSA_LAB_REQUIRE_SLURM") == "1":
            pytest.fail(message + " (WSA_LAB_REQUIRE_SLURM=1: these tests must run)")
        pytest.skip(message)


class Sweep:
    """A `python -m wsa_lab -m ...` running in the background, with its sweep folder."""

    def __init__(self, args: list[str], tmp_path: Path, torch_home: Path, env: dict[str, str] | None = None) -> None:
        self.dir = tmp_path / "sweep"
        self.log = tmp_path / "sweep.log"
        self.started = time.time()
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "wsa_lab", "-m", *args, f"hydra.sweep.dir={self.dir}"],
                cwd=tmp_path, env={**subprocess_env(torch_home), **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
                text=True,
            )

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            subprocess.run(["scancel", "--name=wsa_lab"], check=False)
            pytest.fail(f"the sweep did not return in {timeout} s:\n{self.output()[-3000:]}")

    def output(self) -> str:
        return self.log.read_text()

    def job(self, num: int) -> dict:
        path = self.dir / ".jobs" / f"{num}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def steps(self, num: int) -> list[int]:
        folder = self.job(num).get("folder")
        path = self.dir / folder / "metrics.jsonl" if folder else None
        if path is None or not path.is_file():
            return []
        return [json.loads(line)["global_step"] for line in path.read_text().splitlines() if line.endswith("}")]

    def until(self, what: str, check, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while not check():
            if self.proc.poll() is not None:
                pytest.fail(f"the sweep ended (rc={self.proc.returncode}) before {what}:\n{self.output()[-3000:]}")
            if time.time() > deadline:
                pytest.fail(f"timed out waiting for {what}:\n{self.output()[-3000:]}")
            time.sleep(0.5)


def slurm_state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout.split()
    return out[0] if out else "GONE"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def release(sweep: Sweep, job_id: str, pid: int) -> int:
    """Start the requeued job now (Slurm would hold it ~2 minutes); return the last step its previous attempt logged.

    Slurm's hold is there for a reason: slurmd refuses to start a job id whose credential it revoked (killed)
    in the same second. So: wait until the job is pending and the interrupted process (`pid`) has exited,
    then a little longer, then release it.
    """
    sweep.until(f"{job_id} to be requeued", lambda: slurm_state(job_id) == "PENDING", timeout=120)
    sweep.until(f"the interrupted process {pid} to exit", lambda: not alive(pid), timeout=120)
    reached = max(sweep.steps(0))
    time.sleep(2.5)
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], check=True)
    return reached


def test_without_slurm_these_tests_skip_saying_why(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert slurm_problem() == "`sbatch` is not installed"


def test_three_job_sweep_finishes_with_every_output(slurm, tmp_path: Path, fake_torch_home: Path):
    sweep = Sweep([*CPU_SLURM, "seed=0,1,2", *TINY], tmp_path, fake_torch_home)
    assert sweep.wait(timeout=400) == 0, sweep.output()[-3000:]
    wall = time.time() - sweep.started
    print(f"\n3-job Slurm sweep: {wall:.1f} s wall time")
    jobs = json.loads((sweep.dir / "index.json").read_text())["jobs"]
    assert [j["state"] for j in jobs] == ["done"] * 3
    array = jobs[0]["slurm_job_id"].split("_")[0]
    assert [j["slurm_job_id"] for j in jobs] == [f"{array}_{i}" for i in range(3)]
    for seed, job in enumerate(jobs):
        folder = sweep.dir / job["folder"]
        assert folder.name == f"{seed}_wsa3_default_seed{seed}"
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["seed"] == seed and summary["global_step"] == 64
        for name in ("metrics.jsonl", "checkpoints/last.pt", ".hydra/config.yaml", "resolved_config.yaml"):
            assert (folder / name).is_file(), name
        assert job["log"] == f".submitit/{job['slurm_job_id']}/{job['slurm_job_id']}_0_log.err"
        assert (sweep.dir / job["log"]).is_file()
    assert "3 jobs: 3 done" in sweep.output()


def test_a_users_env_sweeps_on_slurm(slurm, tmp_path: Path, fake_torch_home: Path):
    """A user's own env (examples/graph_envs, on the jobs' PYTHONPATH as an installed package would be)."""
    examples = Path(__file__).resolve().parents[1] / "examples" / "graph_envs"
    not_coverage = [o for o in TINY if not o.startswith("env.")]
    sweep = Sweep(
        [*CPU_SLURM, "env=gym", "env.id=graph_envs:graph_envs/ValueGraph-v0", "+env.kwargs.continuous_dim=2",
         "seed=0,1", *not_coverage],
        tmp_path, fake_torch_home, env={"PYTHONPATH": os.pathsep.join([str(examples), os.environ.get("PYTHONPATH", "")])},
    )
    assert sweep.wait(timeout=400) == 0, sweep.output()[-3000:]
    jobs = json.loads((sweep.dir / "index.json").read_text())["jobs"]
    assert [j["state"] for j in jobs] == ["done", "done"]
    for job in jobs:
        summary = json.loads((sweep.dir / job["folder"] / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["metric"] == "eval/optimal_ratio"
        assert summary["env"] == "graph_envs:graph_envs/ValueGraph-v0" and "eval/optimal_ratio" in summary


def test_cancelled_killed_and_raising_jobs_are_failed_and_the_launcher_returns(slurm, tmp_path: Path, fake_torch_home: Path):
    # jobs 0 and 1 would train for long (2000 iterations); job 2 is short and must still finish; job 3 raises
    # at start-up (16 steps < one rollout): Slurm calls it COMPLETED, the sweep must call it failed
    sweep = Sweep(
        [*CPU_SLURM, "algo.total_timesteps=64000,64032,64,16", "checkpoint.interval=1", *SHORT], tmp_path, fake_torch_home
    )
    sweep.until("jobs 0 and 1 to train", lambda: len(sweep.steps(0)) >= 2 and len(sweep.steps(1)) >= 2)
    subprocess.run(["scancel", sweep.job(0)["slurm_job_id"]], check=True)  # SIGTERM, then SIGKILL after KillWait
    os.kill(sweep.job(1)["pid"], signal.SIGKILL)  # the training process itself (this node)
    killed = time.time()
    assert sweep.wait(timeout=300) == 1, sweep.output()[-3000:]
    print(f"\nthe launcher returned {time.time() - killed:.1f} s after the kills")
    jobs = json.loads((sweep.dir / "index.json").read_text())["jobs"]
    assert [j["state"] for j in jobs] == ["failed", "failed", "done", "failed"]
    for job, state in zip(jobs, ("CANCELLED", "FAILED")):
        assert job["error"].startswith("UncompletedJobError") and f"state: {state}" in job["error"], job["error"]
        marker = (sweep.dir / job["folder"] / "FAILED").read_text()
        assert "UncompletedJobError" in marker and job["log"] in marker
    assert jobs[3]["error"].startswith("ConfigError: algo.total_timesteps=16 is less than one rollout")
    assert "Traceback" in (sweep.dir / jobs[3]["folder"] / "FAILED").read_text()
    output = sweep.output()
    assert "4 jobs: 1 done, 3 failed" in output
    assert "failed job #0 (algo.total_timesteps=64000)" in output and "failed job #1 (algo.total_timesteps=64032)" in output
    # the cancelled job had time to write a checkpoint on SIGTERM: it could resume
    summary = json.loads((sweep.dir / jobs[0]["folder"] / "summary.json").read_text())
    assert summary["status"] == "interrupted"


def test_requeued_and_preempted_job_resumes_with_a_continuous_history(slurm, tmp_path: Path, fake_torch_home: Path):
    total = 150 * BATCH  # long enough that the second attempt is still training when USR2 arrives (a tiny batch takes ~0.1 s)
    sweep = Sweep([*CPU_SLURM, f"algo.total_timesteps={total}", "checkpoint.interval=4", *SHORT], tmp_path, fake_torch_home)
    sweep.until("training to start", lambda: len(sweep.steps(0)) >= 6)
    job_id = sweep.job(0)["slurm_job_id"]

    # 1. an administrator's requeue: Slurm sends SIGTERM (KillWait later SIGKILL) and queues the job again
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    reached_1 = release(sweep, job_id, sweep.job(0)["pid"])  # what the first attempt had logged when it ended
    sweep.until(
        "the second attempt to train",
        lambda: sweep.job(0).get("attempts") == 2 and max(sweep.steps(0) or [0]) > reached_1,
    )

    # 2. what submitit does before a time limit (and on preemption): USR2; the run checkpoints, submitit requeues
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    reached_2 = release(sweep, job_id, sweep.job(0)["pid"])
    assert sweep.wait(timeout=300) == 0, sweep.output()[-3000:]

    folder = sweep.dir / sweep.job(0)["folder"]
    assert sweep.steps(0) == list(range(0, total + 1, BATCH))  # no gap, no duplicate
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["global_step"] == total
    resumed = summary["resumed_from_steps"]
    assert len(resumed) == 2
    lost = [reached_1 - resumed[0], reached_2 - resumed[1]]
    print(f"\nsteps lost per requeue: scontrol requeue {lost[0]}, USR2 {lost[1]} (an iteration is {BATCH} steps)")
    assert all(0 <= n < 4 * BATCH for n in lost)  # at most what the periodic checkpoint would lose; 0 when the signal is handled
    job = sweep.job(0)
    assert job["attempts"] == 3 and job["state"] == "done"
    assert "Caught signal SIGUSR2" in (sweep.dir / job["log"]).read_text()
