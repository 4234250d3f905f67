"""Resume in-process: a run stopped by a crash, a damaged checkpoint or a signal continues bit-identically."""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import pytest
import torch

from conftest import compose_config
from test_train import TINY, without_timing
from wsa_lab.envs import CoverageEnv
from wsa_lab.errors import ConfigError
from wsa_lab.run.checkpoint import CheckpointError, load_checkpoint, load_latest, save_rotating
from wsa_lab.run.folder import truncate_metrics
from wsa_lab.tracking import Tracker, read_metrics
from wsa_lab.train import train

# 4 iterations of 32 steps, WSA over a trainable Graph-CNN (optimiser state matters), a checkpoint every 2
RESUMABLE = [*TINY, "algo.total_timesteps=128", "ptm=[graph_cnn]", "checkpoint.interval=2"]


def run(out: Path, *overrides: str) -> dict:
    return train(compose_config([*RESUMABLE, *overrides], out))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    run(out)
    return out


def crash_after_logging(monkeypatch: pytest.MonkeyPatch, at_step: int, action=None) -> None:
    """Make the tracker fail (or do `action`) right after it wrote the metrics line of `at_step`."""
    original = Tracker.log

    def log(self: Tracker, metrics: dict, step: int) -> None:
        original(self, metrics, step)
        if step == at_step and "charts/SPS" in metrics:
            if action is None:
                raise RuntimeError(f"simulated crash at step {at_step}")
            action()

    monkeypatch.setattr(Tracker, "log", log)


def assert_same_run(out: Path, reference: Path) -> None:
    records = read_metrics(out)
    steps = [r["global_step"] for r in records]
    assert steps == [0, 32, 64, 96, 128], steps  # no duplicate, no gap
    assert without_timing(records) == without_timing(read_metrics(reference))
    a, b = load_checkpoint(out / "checkpoints/last.pt"), load_checkpoint(reference / "checkpoints/last.pt")
    assert all(torch.equal(a["agent"][k], b["agent"][k]) for k in a["agent"])
    ours, theirs = json.loads((out / "summary.json").read_text()), json.loads((reference / "summary.json").read_text())
    assert ours["status"] == "completed" and ours["global_step"] == 128
    assert ours["best_greedy_ratio"] == theirs["best_greedy_ratio"]
    assert ours["eval/greedy_ratio"] == theirs["eval/greedy_ratio"]


def test_crash_then_restart_continues_bit_identically(tmp_path: Path, uninterrupted: Path, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        crash_after_logging(m, at_step=96)
        with pytest.raises(RuntimeError, match="simulated crash"):
            run(out)
    assert [r["global_step"] for r in read_metrics(out)] == [0, 32, 64, 96]  # 96: after the last checkpoint (64)
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"
    summary = run(out)
    assert summary["resumed_from_steps"] == [64]
    assert_same_run(out, uninterrupted)
    assert (out / "checkpoints/prev.pt").is_file()
    assert load_checkpoint(out / "checkpoints/prev.pt")["global_step"] == 64


@pytest.mark.parametrize("damage", ["flipped_byte", "truncated"])
def test_damaged_last_checkpoint_falls_back_to_the_previous_one(
    damage: str, tmp_path: Path, uninterrupted: Path, monkeypatch, caplog
):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        crash_after_logging(m, at_step=96)
        with pytest.raises(RuntimeError):
            run(out, "checkpoint.interval=1")  # last.pt at 64, prev.pt at 32
    last = out / "checkpoints/last.pt"
    data = bytearray(last.read_bytes())
    if damage == "flipped_byte":
        data[len(data) // 2] ^= 0xFF  # inside a tensor: torch.load alone would not notice
    else:
        data = data[: len(data) // 2]
    last.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        summary = run(out, "checkpoint.interval=1")
    assert "last.pt" in caplog.text and ("corrupted" in caplog.text or "unreadable" in caplog.text)
    assert summary["resumed_from_steps"] == [32]
    assert_same_run(out, uninterrupted)


def test_sigterm_checkpoints_at_the_next_iteration_and_exits(tmp_path: Path, uninterrupted: Path, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        # the signal arrives during iteration 2 (here: while logging it); no regular checkpoint before step 128
        crash_after_logging(m, at_step=64, action=lambda: os.kill(os.getpid(), signal.SIGTERM))
        with pytest.raises(SystemExit) as stopped:
            run(out, "checkpoint.interval=4")
    assert stopped.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    assert load_checkpoint(out / "checkpoints/last.pt")["global_step"] == 64
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    assert run(out, "checkpoint.interval=4")["resumed_from_steps"] == [64]
    assert_same_run(out, uninterrupted)


def test_sigterm_after_the_last_checkpoint_lets_the_run_complete(tmp_path: Path, uninterrupted: Path, monkeypatch):
    """A signal while the summary is written (training done, final checkpoint on disk) must not kill the
    process half-way through it: the run ends as completed."""
    original = Tracker.finish

    def finish_after_a_signal(self, summary):
        os.kill(os.getpid(), signal.SIGTERM)
        return original(self, summary)

    monkeypatch.setattr(Tracker, "finish", finish_after_a_signal)
    out = tmp_path / "run"
    assert run(out)["status"] == "completed"
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    assert_same_run(out, uninterrupted)


def test_usr_signal_is_handed_to_the_jobs_own_handler_after_the_checkpoint(tmp_path: Path, monkeypatch):
    """What submitit does in a Slurm job: its USR2 handler requeues the job, then exits."""
    calls = []

    def submitit_like(signum, frame):
        calls.append((signum, load_checkpoint(out / "checkpoints/last.pt")["global_step"]))
        raise SystemExit(-1)

    out = tmp_path / "run"
    previous = signal.signal(signal.SIGUSR2, submitit_like)
    try:
        with monkeypatch.context() as m:
            crash_after_logging(m, at_step=32, action=lambda: os.kill(os.getpid(), signal.SIGUSR2))
            with pytest.raises(SystemExit) as stopped:
                run(out, "checkpoint.interval=4")
        assert stopped.value.code == -1
        assert calls == [(signal.SIGUSR2, 32)]  # checkpoint first, then the job's handler
        assert signal.getsignal(signal.SIGUSR2) is submitit_like
    finally:
        signal.signal(signal.SIGUSR2, previous)


@pytest.mark.slow
def test_resuming_with_another_config_is_refused_and_resume_false_starts_over(tmp_path: Path, uninterrupted: Path, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        crash_after_logging(m, at_step=96)
        with pytest.raises(RuntimeError):
            run(out)
    with pytest.raises(ConfigError, match=r"algo.gamma: 0.99 -> 0.5"):  # (a lower learning rate may resume: test_ppo)
        run(out, "algo.gamma=0.5")
    summary = run(out, "resume=false")
    assert summary["resumed_from_steps"] == []
    assert_same_run(out, uninterrupted)
    with pytest.raises(ConfigError, match="resume must be true or false"):
        run(tmp_path / "other", "resume=maybe")


def test_a_finished_run_started_again_only_rewrites_its_summary(tmp_path: Path, uninterrupted: Path):
    out = tmp_path / "run"
    run(out)
    before = (out / "metrics.jsonl").read_text()
    summary = run(out)
    assert summary["resumed_from_steps"] == [128] and summary["status"] == "completed"
    assert (out / "metrics.jsonl").read_text() == before
    assert_same_run(out, uninterrupted)


def test_env_state_round_trip_continues_the_same_episodes():
    kwargs = dict(num_envs=3, num_nodes=20, num_sites=3, knn_k=4)
    a = CoverageEnv(seed=1, **kwargs)
    gen = torch.Generator().manual_seed(0)

    def act(env: CoverageEnv) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randint(0, env.num_nodes, (env.num_envs,), generator=gen), torch.rand(env.num_envs, generator=gen)

    for _ in range(2):
        a.step(*act(a))
    state = a.state_dict()
    b = CoverageEnv(seed=99, **kwargs)
    b.load_state_dict(state)
    for _ in range(5):  # across episode ends: autoreset draws from the restored generator
        actions = act(a)
        (obs_a, r_a, term_a, _, _), (obs_b, r_b, term_b, _, _) = a.step(*actions), b.step(*actions)
        assert torch.equal(r_a, r_b) and torch.equal(term_a, term_b)
        assert torch.equal(obs_a.image, obs_b.image) and torch.equal(obs_a.x, obs_b.x)


def test_checkpoint_files(tmp_path: Path):
    folder = tmp_path / "checkpoints"
    assert load_latest(folder) is None
    save_rotating({"step": 1}, folder)
    save_rotating({"step": 2}, folder)
    assert load_latest(folder)[0]["step"] == 2
    assert load_checkpoint(folder / "prev.pt")["step"] == 1
    assert not list(folder.glob(".*"))  # no temp files left
    for name in ("last.pt", "prev.pt"):
        (folder / name).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="no usable checkpoint.*resume=false"):
        load_latest(folder)
    save_rotating({"step": 3}, folder)
    with pytest.raises(CheckpointError, match="lacks env"):
        load_latest(folder, required=("env",))


def test_truncate_metrics_drops_later_and_torn_lines(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"global_step": 0, "a": 1}\n{"global_step": 32}\n{"global_step": 64}\n{"global_st')
    assert truncate_metrics(path, 32) == (2, 64)  # two lines went; the earlier attempt had logged up to 64
    assert [json.loads(line)["global_step"] for line in path.read_text().splitlines()] == [0, 32]
    assert truncate_metrics(tmp_path / "absent.jsonl", 0) == (0, 0)


def test_a_damaged_metrics_file_does_not_stop_a_resume(tmp_path: Path, caplog):
    """One byte that is not UTF-8, one global_step that is not a number: those lines go, with a warning."""
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"global_step": 0}\n{"global_step": 32, "x": "\xff"}\n{"global_step": "abc"}\n{"global_step": 64}\n')
    with caplog.at_level("WARNING"):
        dropped, last = truncate_metrics(path, 64)
    assert (dropped, last) == (1, 64)
    assert [json.loads(line)["global_step"] for line in path.read_text(encoding="utf-8").splitlines()] == [0, 32, 64]
    assert "1 damaged line(s) dropped" in caplog.text
