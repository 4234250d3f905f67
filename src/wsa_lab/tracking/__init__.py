"""Experiment tracking: every metric goes through one `Tracker`, which fans out to the run folder's
`metrics.jsonl` (always) and the configured logger backends (W&B, TensorBoard), and watches the attention
health of WSA runs."""

from wsa_lab.tracking.health import AttentionHealth, HealthConfig, classify
from wsa_lab.tracking.metrics import MetricsWriter, read_metrics, write_json_atomic
from wsa_lab.tracking.settings import LoggerSettings, logger_settings, run_identity
from wsa_lab.tracking.tracker import Continuation, Tracker, build_tracker

__all__ = [
    "AttentionHealth", "Continuation", "HealthConfig", "LoggerSettings", "MetricsWriter", "Tracker", "build_tracker", "classify",
    "logger_settings", "read_metrics", "run_identity", "write_json_atomic",
]
