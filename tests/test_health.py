"""Attention health on synthetic weight sequences: one per state, thresholds from the config, warnings."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from conftest import compose_config, from_yaml
from wsa_lab.errors import ConfigError
from wsa_lab.config.schema import HealthConfig
from wsa_lab.config.validate import logger_settings
from wsa_lab.tracking import AttentionHealth, Tracker, build_tracker, classify, read_metrics
from wsa_lab.tracking.health import STATES


def health_config(**overrides) -> HealthConfig:
    return from_yaml(HealthConfig, "logger/health.yaml", "health", **overrides)


CFG = health_config()


def drift(start: list[float], end: list[float], n: int = 10) -> np.ndarray:
    """n weight vectors moving linearly from start to end (rows sum to 1 if both do)."""
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) * np.array(start) + t * np.array(end)


def test_balanced_weights_that_keep_moving():
    w = drift([0.34, 0.33, 0.33], [0.30, 0.36, 0.34])
    r = classify(w, CFG)
    assert r.state == "balanced"
    assert r.change == pytest.approx(0.04) and r.noise < 1e-9


def test_collapsed_when_one_ptm_takes_over_90_percent():
    assert classify(drift([0.93, 0.04, 0.03], [0.96, 0.02, 0.02]), CFG).state == "collapsed"
    assert classify(drift([0.02, 0.98], [0.01, 0.99]), CFG).state == "collapsed"


def test_static_when_weights_stop_changing():
    rng = np.random.default_rng(0)
    w = np.array([0.3, 0.4, 0.3]) + rng.normal(scale=1e-4, size=(10, 3))
    r = classify(w, CFG)
    assert r.state == "static" and r.change < CFG.static_tolerance


def test_noisy_when_weights_jump_around_without_trend():
    rng = np.random.default_rng(0)
    w = rng.dirichlet([8, 8, 8], size=10)  # a fresh random split every iteration
    r = classify(w, CFG)
    assert r.state == "noisy" and r.noise > CFG.noise_threshold


def test_a_steep_or_bending_trend_is_not_noise():
    r = classify(drift([0.2, 0.4, 0.4], [0.45, 0.3, 0.25]), CFG)  # moves 25 points, perfectly smoothly
    assert r.noise < 1e-9 and r.state == "balanced"
    t = np.linspace(0, 1, 10)[:, None]
    bend = 0.4 - 0.15 * (1 - np.exp(-3 * t))  # a saturating curve, like a learned preference
    r = classify(np.hstack([bend, 1 - bend]), CFG)
    assert r.noise < 0.01 and r.state != "noisy"


def test_skewed_is_uneven_without_a_warning_sign():
    assert classify(drift([0.62, 0.28, 0.10], [0.60, 0.30, 0.10]), CFG).state == "skewed"


def test_unknown_until_min_points():
    assert classify(drift([0.5, 0.5], [0.4, 0.6], n=4), CFG).state == "unknown"
    assert classify(drift([0.5, 0.5], [0.4, 0.6], n=5), CFG).state == "balanced"


def test_thresholds_change_the_verdict():
    w = drift([0.85, 0.10, 0.05], [0.86, 0.09, 0.05])
    assert classify(w, CFG).state == "skewed"
    assert classify(w, health_config(collapse_threshold=0.8)).state == "collapsed"
    flat = drift([0.34, 0.33, 0.33], [0.335, 0.333, 0.332])  # moves 0.005
    assert classify(flat, CFG).state == "balanced"
    assert classify(flat, health_config(static_tolerance=0.01)).state == "static"


def test_monitor_warns_once_per_change_and_keeps_the_verdict(caplog: pytest.LogCaptureFixture):
    monitor = AttentionHealth(health_config(window=6, min_points=3), ["resnet18_imagenet", "graph_cnn"])
    # balanced, then a smooth slide (8 iterations) into collapse
    sequence = [*drift([0.5, 0.5], [0.45, 0.55], 8), *drift([0.45, 0.55], [0.97, 0.03], 8)[1:], *drift([0.97, 0.03], [0.98, 0.02], 10)[1:]]
    with caplog.at_level(logging.INFO, logger="wsa_lab"):
        logged = [monitor.update(w, step=100 * (i + 1)) for i, w in enumerate(sequence)]
    assert logged[0] == {} and logged[1] == {}  # unknown: nothing logged yet
    assert logged[2]["wsa/health/state"] == STATES.index("balanced")
    assert logged[-1]["wsa/health/state"] == STATES.index("collapsed")
    assert [t["state"] for t in monitor.transitions] == ["balanced", "skewed", "collapsed"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "COLLAPSED" in warnings[0].getMessage()
    assert "resnet18_imagenet gets" in warnings[0].getMessage()
    summary = monitor.summary()
    assert summary["wsa/health/verdict"] == "collapsed"
    assert summary["wsa/health/warnings_seen"] == ["collapsed"]
    assert summary["wsa/health/mean_weights"]["resnet18_imagenet"] > 0.9


def test_tracker_logs_health_and_names_and_writes_the_verdict(tmp_path: Path):
    names = ["resnet18_imagenet", "graph_cnn", "resnet18_random"]
    tracker = Tracker(tmp_path, ptm_names=names, health=AttentionHealth(health_config(), names))
    for i, w in enumerate(drift([0.34, 0.33, 0.33], [0.30, 0.36, 0.34], 12)):
        tracker.log({**{f"wsa/attention_weights_{j}": v for j, v in enumerate(w)}, "wsa/feature_norms_1": 2.0}, step=8 * (i + 1))
    tracker.finish({"status": "completed"})
    last = read_metrics(tmp_path)[-1]
    assert last["wsa/attention/graph_cnn"] == pytest.approx(0.36)
    assert last["wsa/feature_norms/graph_cnn"] == 2.0
    assert last["wsa/health/state"] == STATES.index("balanced")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["wsa/health/verdict"] == "balanced" and summary["status"] == "completed"


def test_health_thresholds_are_config_keys(tmp_path: Path):
    cfg = compose_config(["logger=[console,health]", "logger.health.collapse_threshold=0.5"], tmp_path)
    assert logger_settings(cfg).health.collapse_threshold == 0.5
    cfg = compose_config(["logger=[console]", "+logger.health.window=20"], tmp_path)  # health not in the list
    assert logger_settings(cfg).health.window == 20
    assert logger_settings(compose_config([], tmp_path)).health == health_config()
    with pytest.raises(ConfigError, match="did you mean 'window'"):
        logger_settings(compose_config(["+logger.health.windw=20"], tmp_path))
    with pytest.raises(ConfigError, match="min_points"):
        logger_settings(compose_config(["logger.health.min_points=2"], tmp_path))


def test_a_resumed_run_restores_the_health_window_from_its_metrics(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    cfg = compose_config(["ptm=[graph_cnn,resnet18_random]", "logger=[console]"], tmp_path)
    sequence = [*drift([0.5, 0.5], [0.45, 0.55], 8), *drift([0.45, 0.55], [0.97, 0.03], 8)[1:], *drift([0.97, 0.03], [0.98, 0.02], 6)[1:]]
    steps = [8 * (i + 1) for i in range(len(sequence))]
    first = build_tracker(cfg, tmp_path)
    for step, w in zip(steps[:14], sequence[:14]):
        first.log({"wsa/attention_weights_0": w[0], "wsa/attention_weights_1": w[1]}, step)
    first.finish({"status": "failed"})  # preempted; the restarted job builds a new tracker on the same folder
    with caplog.at_level(logging.INFO, logger="wsa_lab"):
        resumed = build_tracker(cfg, tmp_path)
        assert not caplog.records  # replaying the logged window prints nothing
        for step, w in zip(steps[14:], sequence[14:]):
            resumed.log({"wsa/attention_weights_0": w[0], "wsa/attention_weights_1": w[1]}, step)
    resumed.finish({"status": "completed"})
    straight = AttentionHealth(health_config(), ["graph_cnn", "resnet18_random"])
    for step, w in zip(steps, sequence):
        straight.update(w, step)
    assert resumed.health.transitions == straight.transitions
    assert resumed.health.summary() == straight.summary()
