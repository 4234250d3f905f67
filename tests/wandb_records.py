"""Read an offline W&B run back from its `run-<id>.wandb` file (no server, no W&B API).

The file is a LevelDB-style log: a 7-byte file header (`:W&B`, magic, version), then 32 KiB blocks of
chunks, each with a 7-byte header (crc32, length, type: full / first / middle / last). Each reassembled
record is a protobuf `wandb.proto.wandb_internal_pb2.Record` (wandb 0.31 has no offline reader of its own:
`wandb.Api()` needs a server and `wandb sync --view` is gone). Used by tests/test_tracking.py; in a checkout,
`python tests/wandb_records.py <run folder>` shows what an offline run holds before `wandb sync`.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def iter_record_bytes(path: str | Path) -> Iterator[bytes]:
    """The raw protobuf bytes of each record in a `.wandb` file, in order."""
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log")
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 and length == 0:  # zero padding up to the end of the block
            pos += left
            continue
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""


def read_records(path: str | Path) -> list[Any]:
    """Every `Record` message of a `.wandb` file."""
    from wandb.proto import wandb_internal_pb2 as pb

    records = []
    for raw in iter_record_bytes(path):
        record = pb.Record()
        record.ParseFromString(raw)
        records.append(record)
    return records


def _item_key(item: Any) -> str:
    return item.key or ".".join(item.nested_key)


@dataclass
class OfflineRun:
    """What an offline run file holds: identity, config, history rows, summary, exit code."""

    run_id: str = ""
    project: str = ""
    group: str = ""
    job_type: str = ""
    name: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None

    def series(self, key: str) -> list[tuple[int, Any]]:
        """(global_step, value) of every history row that has `key`."""
        return [(row.get("global_step"), row[key]) for row in self.history if key in row]

    def describe(self) -> str:
        """A few lines: who the run is, how much history it holds, and its summary's scalars."""
        keys = sorted({k for row in self.history for k in row if not k.startswith("_")})
        scalars = {k: v for k, v in sorted(self.summary.items()) if isinstance(v, (int, float)) and not k.startswith("_")}
        lines = [
            f"run {self.run_id} in project {self.project}: group {self.group}, job_type {self.job_type}, name {self.name}",
            f"tags: {', '.join(self.tags) or '-'}; exit code: {self.exit_code}; config keys: {len(self.config)}",
            f"history: {len(self.history)} rows, {len(keys)} keys (print one with --series KEY)",
            "summary: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in scalars.items()),
        ]
        return "\n".join(lines)


def read_offline_run(path: str | Path, wait_s: float = 0.0) -> OfflineRun:
    """Parse a `run-<id>.wandb` file (or an `offline-run-*` folder holding one).

    W&B's service process writes the file in the background and may still be flushing it for a moment
    after `run.finish()` returns (seen here with wandb 0.31 on a loaded machine); `wait_s` > 0 polls until
    the run's exit record is in the file (or the time is up), so a run finished by this process reads whole.
    """
    path = Path(path)
    if path.is_dir():
        (path,) = sorted(path.glob("*.wandb"))
    deadline = time.monotonic() + wait_s
    records = read_records(path)
    while time.monotonic() < deadline and not any(r.WhichOneof("record_type") == "exit" for r in records):
        time.sleep(0.1)
        records = read_records(path)
    run = OfflineRun()
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id, run.project, run.group, run.job_type = r.run_id, r.project, r.run_group, r.job_type
            run.name, run.tags = r.display_name, list(r.tags)
            for item in r.config.update:
                run.config[_item_key(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                run.config[_item_key(item)] = json.loads(item.value_json)
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                row[_item_key(item)] = json.loads(item.value_json)
            run.history.append(row)
        elif kind == "summary":
            for item in record.summary.update:
                run.summary[_item_key(item)] = json.loads(item.value_json)
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run


def offline_run_files(run_dir: str | Path) -> list[Path]:
    """The `.wandb` files under a run folder's `wandb/` (one per start of the run), oldest first."""
    return sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))


def main(argv: list[str] | None = None) -> int:
    """`python tests/wandb_records.py RUN [--series KEY]`: what an offline W&B run holds, before syncing."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python tests/wandb_records.py", description=main.__doc__)
    parser.add_argument("run", help="a wsa_lab run folder, an offline-run-* folder or a run-*.wandb file")
    parser.add_argument("--series", help="print this metric's (global_step, value) pairs instead of the summary")
    args = parser.parse_args(argv)
    path = Path(args.run)
    files = offline_run_files(path) if (path / "wandb").is_dir() else [path]
    if not files or not files[-1].exists():
        print(f"wsa_lab: error: no offline W&B run under {path}", file=sys.stderr)
        return 1
    run = read_offline_run(files[-1])
    if args.series:
        for step, value in run.series(args.series):
            print(step, value)
    else:
        print(run.describe())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
