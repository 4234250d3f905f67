"""Logger backends: real offline W&B runs read back from their .wandb files, TensorBoard events read back
with tensorboard's own reader, one W&B run per job, resumed runs keep their id, config validation."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import compose_config, from_yaml, subprocess_env
from wandb_records import offline_run_files, read_offline_run, read_records
from wsa_lab.config.schema import WandbConfig
from wsa_lab.config.validate import logger_settings
from wsa_lab.errors import ConfigError
from wsa_lab.tracking import Continuation, Tracker, build_tracker, read_metrics
from wsa_lab.tracking.wandb_backend import RUN_ID_FILE, TrackingError
from wsa_lab.train import train

MICRO = [
    "algo.total_timesteps=16", "algo.num_envs=2", "algo.num_steps=4", "algo.num_minibatches=2", "algo.update_epochs=1",
    "env.num_nodes=20", "env.knn_k=4", "env.num_sites=3", "evaluation.num_instances=2", "evaluation.interval=1",
    "checkpoint.interval=100", "logger.console.progress_bar=false",
]
ALL_LOGGERS = "logger=[console,health,wandb,tensorboard]"


@pytest.fixture(autouse=True)
def offline_wandb(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """W&B offline, with its config/cache folders in a temp dir: no network, nothing in the user's home."""
    home = tmp_path_factory.mktemp("wandb_home")
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(home / var.lower()))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def only_wandb_file(run_dir: Path) -> Path:
    (path,) = offline_run_files(run_dir)
    return path


def read_back(path: Path):
    """The offline run in `path`, once W&B's service has flushed it (it may lag `finish()` briefly)."""
    return read_offline_run(path, wait_s=30)


# ------------------------------------------------------------------------------------------ a real training
@pytest.mark.slow
def test_tiny_training_logs_to_offline_wandb_and_tensorboard(tmp_path: Path, capsys: pytest.CaptureFixture):
    out = tmp_path / "run"
    summary = train(compose_config(
        [*MICRO, "ptm=[graph_cnn,resnet18_random]", "name=my_arm", "phase=phase3", "seed=3", ALL_LOGGERS], out,
    ))
    assert summary["status"] == "completed"
    records = read_metrics(out)
    local = {r["global_step"]: r for r in records}
    assert sorted(local) == [0, 8, 16]

    # --- W&B: identity, config, series, histograms, exit code, read back from the .wandb file
    wb = read_back(only_wandb_file(out))
    assert wb.run_id == (out / RUN_ID_FILE).read_text().strip()
    assert (wb.group, wb.job_type, wb.name, wb.project) == ("phase3", "my_arm", "my_arm_seed3", "wsa_lab")
    assert set(wb.tags) == {"phase3", "graph_cnn", "resnet18_random"}
    assert wb.config["ptm_names"] == ["graph_cnn", "resnet18_random"] and wb.config["ptm_count"] == 2
    assert (wb.config["fusion"], wb.config["phase"], wb.config["arm"], wb.config["seed"]) == ("wsa", "phase3", "my_arm", 3)
    assert wb.config["algo"]["total_timesteps"] == 16  # the resolved config, nested as in resolved_config.yaml
    assert [p["name"] for p in wb.config["actor_critic"]["wsa"]["pretrained_models"]] == ["graph_cnn", "resnet18_random"]
    for key in ("wsa/attention_weights_0", "wsa/attention_weights_1", "wsa/attention/graph_cnn",
                "wsa/attention/resnet18_random", "wsa/attention_entropy", "wsa/attention_state_std",
                "wsa/attention_top_switch", "wsa/feature_norms_0", "losses/value_loss", "eval/greedy_ratio"):
        series = wb.series(key)
        assert [s for s, _ in series] == [8, 16], key
        assert [v for _, v in series] == pytest.approx([local[8][key], local[16][key]]), key
    assert wb.series("wsa/attention/graph_cnn") == wb.series("wsa/attention_weights_0")
    hist = wb.series("wsa/attention_hist/resnet18_random._type")
    assert [s for s, _ in hist] == [8, 16] and hist[0][1] == "histogram"
    assert wb.series("reference/greedy_return")[0][0] == 0
    assert wb.exit_code == 0 and wb.summary["status"] == "completed"
    assert wb.summary["eval/greedy_ratio"] == pytest.approx(summary["eval/greedy_ratio"])
    metric_defs = [r.metric for r in read_records(only_wandb_file(out)) if r.WhichOneof("record_type") == "metric"]
    assert any(m.glob_name == "*" and m.step_metric == "global_step" for m in metric_defs)

    # --- the documented one-liner: the summary, or one series, not the whole record dump
    from wandb_records import main as wandb_records

    assert wandb_records([str(out)]) == 0
    shown = capsys.readouterr().out
    assert "my_arm_seed3" in shown and "eval/greedy_ratio" in shown and len(shown) < 20_000
    assert wandb_records([str(out), "--series", "eval/greedy_ratio"]) == 0
    lines = capsys.readouterr().out.split()
    assert lines[0::2] == ["8", "16"] and float(lines[1]) == pytest.approx(local[8]["eval/greedy_ratio"])
    assert wandb_records([str(tmp_path / "nowhere")]) == 1
    assert "no offline W&B run under" in capsys.readouterr().err

    # --- TensorBoard, read with tensorboard's own event reader
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    for key in ("wsa/attention_weights_0", "wsa/attention/graph_cnn", "wsa/attention_entropy", "charts/SPS",
                "eval/greedy_ratio", "losses/policy_loss"):
        events = acc.Scalars(key)
        assert [e.step for e in events] == [8, 16], key
        assert [e.value for e in events] == pytest.approx([local[8][key], local[16][key]], rel=1e-5), key
    assert "wsa/attention_hist/graph_cnn" in tags["histograms"]
    assert [e.step for e in acc.Histograms("wsa/attention_hist/graph_cnn")] == [8, 16]
    assert {"run/text_summary", "config/text_summary", "summary/text_summary"} <= set(tags["tensors"])


@pytest.mark.slow
def test_a_two_job_multirun_gives_two_wandb_runs(tmp_path: Path, fake_torch_home: Path):
    env = subprocess_env(fake_torch_home)
    env.update({"WANDB_MODE": "offline", "WANDB_CONFIG_DIR": str(tmp_path / "wb_cfg"), "WANDB_CACHE_DIR": str(tmp_path / "wb_cache")})
    proc = subprocess.run(
        [sys.executable, "-m", "wsa_lab", "-m", "experiment=phase1_baseline", "seed=0,1", "logger=[console,wandb]", *MICRO],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = list((tmp_path / "multirun").glob("*/*"))
    jobs = sorted(p for p in sweep.iterdir() if (p / "summary.json").is_file())
    runs = [read_back(only_wandb_file(job)) for job in jobs]
    assert len(runs) == 2 and runs[0].run_id != runs[1].run_id
    assert [r.config["seed"] for r in runs] == [0, 1]
    assert [r.name for r in runs] == ["phase1_baseline_seed0", "phase1_baseline_seed1"]
    assert runs[0].group == runs[1].group == "sweep-" + "_".join(sweep.parts[-2:])
    for run in runs:
        assert run.job_type == "phase1_baseline" and run.exit_code == 0
        assert [s for s, _ in run.series("eval/greedy_ratio")] == [8, 16]  # its own job's rows only
    assert "wandb sync" in proc.stdout + proc.stderr


# --------------------------------------------------------------------------- tracker-level (no training)
def fake_attention(states: int = 6) -> torch.Tensor:
    return torch.softmax(torch.randn(states, 2, generator=torch.Generator().manual_seed(0)), dim=-1)


def log_two_steps(tracker: Tracker, start: int) -> None:
    for step in (start, start + 8):
        tracker.log({"wsa/attention_weights_0": 0.4, "wsa/attention_weights_1": 0.6, "charts/SPS": 1.0}, step)
        tracker.log_attention(fake_attention(), ["graph_cnn", "resnet18_random"], step)


def tracker_cfg(run_dir: Path, *overrides: str):
    return compose_config(["ptm=[graph_cnn,resnet18_random]", "logger=[console,wandb]", *overrides], run_dir)


def test_sequential_runs_in_one_process_are_distinct_wandb_runs_also_after_an_error(tmp_path: Path):
    first, second = tmp_path / "job0", tmp_path / "job1"
    tracker = build_tracker(tracker_cfg(first, "seed=0"), first)
    log_two_steps(tracker, 8)
    try:
        raise RuntimeError("training blew up")
    except RuntimeError:
        tracker.finish({"status": "failed", "error": "RuntimeError: training blew up"})
    tracker = build_tracker(tracker_cfg(second, "seed=1"), second)
    log_two_steps(tracker, 8)
    tracker.finish({"status": "completed"})
    a, b = read_back(only_wandb_file(first)), read_back(only_wandb_file(second))
    assert a.run_id != b.run_id
    assert (a.exit_code, b.exit_code) == (1, 0)
    assert a.summary["status"] == "failed" and b.summary["status"] == "completed"
    assert len(a.series("charts/SPS")) == len(b.series("charts/SPS")) == 2


def test_a_restarted_run_continues_the_same_wandb_run(tmp_path: Path):
    cfg = tracker_cfg(tmp_path)
    tracker = build_tracker(cfg, tmp_path)
    log_two_steps(tracker, 8)
    tracker.finish({"status": "failed", "error": "preempted"})
    run_id = (tmp_path / RUN_ID_FILE).read_text().strip()
    tracker = build_tracker(cfg, tmp_path, Continuation(step=16, logged_until=16))  # the requeued job, same folder
    log_two_steps(tracker, 24)
    tracker.finish({"status": "completed"})
    # W&B writes one offline-run-<start time>-<id> folder per start (`wandb sync` sends both to one run);
    # two starts within the same second would share a folder, which a real requeue never does
    files = offline_run_files(tmp_path)
    assert 1 <= len(files) <= 2
    assert {read_back(f).run_id for f in files} == {run_id}
    assert [s for s, _ in read_back(files[-1]).series("charts/SPS")] == [24, 32]


def test_a_resumed_run_logs_each_step_once_and_names_every_attempt_to_sync(tmp_path: Path, caplog, monkeypatch):
    """Attempt 1 logs steps 8..40 and dies; the checkpoint was at 16, so attempt 2 repeats 24..40 (same numbers, by
    exact resume): TensorBoard hides attempt 1's events after 16, W&B skips what attempt 1 already sent."""
    import time

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tracker_cfg(tmp_path, "logger=[console,wandb,tensorboard]")
    first = build_tracker(cfg, tmp_path)
    for step in range(8, 41, 8):
        first.log({"charts/SPS": float(step)}, step)
    first.finish({"status": "failed", "error": "SIGKILL"})
    time.sleep(1.1)  # a real requeue starts seconds later: W&B names each attempt's folder by its start second
    with caplog.at_level(logging.INFO, logger="wsa_lab"):
        second = build_tracker(cfg, tmp_path, Continuation(step=16, logged_until=40))
        for step in range(24, 57, 8):
            second.log({"charts/SPS": float(step)}, step)
        second.finish({"status": "completed"})
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("charts/SPS")] == list(range(8, 57, 8))  # each step once
    files = offline_run_files(tmp_path)
    assert len(files) == 2
    steps = [s for f in files for s, _ in read_back(f).series("charts/SPS")]
    assert steps == list(range(8, 57, 8))  # attempt 2 sent only 48 and 56
    (line,) = [r.getMessage() for r in caplog.records if "wandb sync" in r.getMessage()]
    assert all(str(f.parent) in line for f in files)  # both attempts' folders


def test_a_run_that_starts_over_is_a_new_wandb_run(tmp_path: Path):
    """resume=false (or no checkpoint yet) in a folder that held a run: not merged into the old W&B run."""
    cfg = tracker_cfg(tmp_path)
    first = build_tracker(cfg, tmp_path)
    first.finish({"status": "completed"})
    old = (tmp_path / RUN_ID_FILE).read_text().strip()
    second = build_tracker(cfg, tmp_path)  # no continuation: a fresh start
    second.finish({"status": "completed"})
    assert (tmp_path / RUN_ID_FILE).read_text().strip() != old


def test_attention_switch_and_health_only_for_learned_attention(tmp_path: Path):
    quiet = build_tracker(tracker_cfg(tmp_path / "q", "logger=[console]", "actor_critic.wsa.logging.log_attention_weights=false"), tmp_path / "q")
    assert not quiet.log_attention_enabled and quiet.health is None
    std = build_tracker(tracker_cfg(tmp_path / "s", "logger=[console]", "experiment=phase1_baseline"), tmp_path / "s")
    assert std.health is None and std.ptm_names == []
    mean = build_tracker(tracker_cfg(tmp_path / "m", "logger=[console]", "actor_critic.wsa.fusion=mean"), tmp_path / "m")
    assert mean.health is None and mean.log_attention_enabled  # uniform 1/P weights are still logged
    on = build_tracker(tracker_cfg(tmp_path / "o", "logger=[console]"), tmp_path / "o")
    assert on.health is not None and on.ptm_names == ["graph_cnn", "resnet18_random"]


class Recorder:
    def __init__(self, fail_on: str = "") -> None:
        self.calls: list[str] = []
        self.fail_on = fail_on

    def log(self, metrics, step):
        self.calls.append("log")
        if self.fail_on == "log":
            raise OSError("disk full")

    def log_attention(self, weights, names, step):
        self.calls.append("log_attention")

    def finish(self, summary):
        self.calls.append("finish")


def test_a_failing_backend_is_dropped_and_the_others_go_on(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    good, bad = Recorder(), Recorder(fail_on="log")
    tracker = Tracker(tmp_path, [bad, good], ptm_names=["a", "b"])
    with caplog.at_level(logging.WARNING, logger="wsa_lab"):
        log_two_steps(tracker, 8)
    tracker.finish({"status": "completed"})
    assert bad.calls == ["log"] and sum("failed" in r.getMessage() for r in caplog.records) == 1
    assert good.calls == ["log", "log_attention"] * 2 + ["finish"]  # wsa/attention_state_std comes with the metrics
    quiet = Recorder()
    tracker = Tracker(tmp_path / "q", [quiet], ptm_names=["a", "b"], log_attention=False)
    log_two_steps(tracker, 8)
    assert "log_attention" not in quiet.calls


# ------------------------------------------------------------------------------------------------ config
def test_logger_config_errors_are_one_line(tmp_path: Path):
    with pytest.raises(ConfigError, match="did you mean 'project'"):
        logger_settings(tracker_cfg(tmp_path, "+logger.wandb.projct=x"))
    with pytest.raises(ConfigError, match="never put keys or passwords in the config"):
        logger_settings(tracker_cfg(tmp_path, "+logger.wandb.api_key=0123456789abcdef"))
    with pytest.raises(ConfigError, match="logger.wandb.mode must be one of"):
        logger_settings(tracker_cfg(tmp_path, "logger.wandb.mode=onlin"))
    with pytest.raises(ConfigError, match="logger: unknown key 'csv'"):
        logger_settings(tracker_cfg(tmp_path, "+logger.csv.path=x"))
    with pytest.raises(ConfigError, match="logger.tensorboard.flush_secs: expected int"):
        logger_settings(compose_config(["logger=[tensorboard]", "logger.tensorboard.flush_secs=soon"], tmp_path))
    s = logger_settings(compose_config(["logger=[console,health,wandb,tensorboard]"], tmp_path))
    assert s.wandb is not None and s.tensorboard is not None and s.wandb.mode == "auto"


def test_wandb_mode_offline_by_default_online_when_asked(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("WANDB_MODE")
    assert from_yaml(WandbConfig, "logger/wandb.yaml", "wandb").resolved_mode() == "offline"
    assert from_yaml(WandbConfig, "logger/wandb.yaml", "wandb", mode="online").resolved_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "online")
    assert from_yaml(WandbConfig, "logger/wandb.yaml", "wandb").resolved_mode() == "online"
    assert from_yaml(WandbConfig, "logger/wandb.yaml", "wandb", mode="offline").resolved_mode() == "offline"  # an explicit mode wins
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert from_yaml(WandbConfig, "logger/wandb.yaml", "wandb").resolved_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ConfigError, match="WANDB_MODE"):
        from_yaml(WandbConfig, "logger/wandb.yaml", "wandb").resolved_mode()


def test_online_without_a_key_fails_with_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc with a key
    monkeypatch.setenv("NETRC", str(tmp_path / "home" / ".netrc"))
    with pytest.raises(TrackingError, match="wandb login") as info:
        build_tracker(tracker_cfg(tmp_path, "logger.wandb.mode=online"), tmp_path)
    assert "\n" not in str(info.value)
    assert not offline_run_files(tmp_path)


def test_disabled_wandb_writes_nothing(tmp_path: Path):
    tracker = build_tracker(tracker_cfg(tmp_path, "logger.wandb.mode=disabled"), tmp_path)
    log_two_steps(tracker, 8)
    tracker.finish({"status": "completed"})
    assert tracker.backends == [] and not (tmp_path / "wandb").exists()


def test_the_tensorboard_command_the_readme_shows_starts(tmp_path: Path):
    """`tensorboard --logdir ...` from the venv the README's commands make (tensorboard 2.20 needs pkg_resources)."""
    script = Path(sys.executable).with_name("tensorboard")
    assert script.is_file(), f"no tensorboard command next to {sys.executable}"
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip()[:1].isdigit(), proc.stdout
