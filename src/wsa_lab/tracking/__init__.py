"""Experiment tracking: every metric goes through one `Tracker`, which fans out to the run folder's
`metrics.jsonl` (always) and the configured logger backends (W&B, TensorBoard), and watches the attention
health of WSA runs."""

from wsa_lab.tracking.health import AttentionHealth, classify
from wsa_lab.tracking.metrics import MetricsWriter, read_metrics
from wsa_lab.tracking.tracker import Continuation, Tracker, build_tracker

__all__ = ["AttentionHealth", "Continuation", "MetricsWriter", "Tracker", "build_tracker", "classify", "read_metrics"]
