"""Experiment tracking: every metric goes through one `Tracker`, which fans out to the run folder's
`metrics.jsonl` (always) and the configured logger backends."""

from wsa_lab.tracking.metrics import MetricsWriter, read_metrics, write_json_atomic
from wsa_lab.tracking.tracker import Tracker, build_tracker

__all__ = ["MetricsWriter", "Tracker", "build_tracker", "read_metrics", "write_json_atomic"]
