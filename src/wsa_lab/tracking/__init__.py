"""Experiment tracking: the run folder's metrics.jsonl and summary.json."""

from wsa_lab.tracking.metrics import MetricsWriter, read_metrics, write_json_atomic

__all__ = ["MetricsWriter", "read_metrics", "write_json_atomic"]
