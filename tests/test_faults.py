"""Fault injection through the real CLI: SIGKILL at random moments, then SIGTERM; restarting the same run folder
each time must end exactly like a run that was never interrupted (same final step, same metrics, no gap or
duplicate in the history). The moments are random; the seed is printed (WSA_LAB_FAULT_SEED=<seed> repeats it).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import compose_config, subprocess_env
from test_train import TINY, without_timing
from wsa_lab.tracking import read_metrics
from wsa_lab.train import train

ITERATIONS, BATCH = 48, 32  # enough iterations that the kills below leave some for the SIGTERM
RUN = [
    *[o for o in TINY if not o.startswith(("algo.total_timesteps=", "checkpoint.interval="))],
    f"algo.total_timesteps={ITERATIONS * BATCH}", "checkpoint.interval=2", "ptm=[graph_cnn]",
]


def lines(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def start(run_dir: Path, cwd: Path, torch_home: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "wsa_lab", *RUN, f"hydra.run.dir={run_dir}"],
        cwd=cwd, env=subprocess_env(torch_home), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def wait_for_lines(proc: subprocess.Popen, run_dir: Path, count: int, timeout: float = 240) -> bool:
    """True once metrics.jsonl has `count` lines; False if the run ended first."""
    deadline = time.time() + timeout
    while lines(run_dir) < count:
        if proc.poll() is not None:
            return False
        assert time.time() < deadline, f"no progress to {count} metrics lines in {timeout} s"
        time.sleep(0.05)
    return True


@pytest.mark.slow
def test_sigkill_at_random_moments_then_sigterm_then_restart_matches_an_uninterrupted_run(
    tmp_path: Path, fake_torch_home: Path
):
    seed = int(os.environ.get("WSA_LAB_FAULT_SEED", time.time_ns() % 2**32))
    print(f"\nfault seed: {seed} (WSA_LAB_FAULT_SEED={seed} repeats these moments)")
    rng = random.Random(seed)
    run_dir = tmp_path / "run"
    events = []

    # 1. during start-up (before any checkpoint, perhaps before any metrics)
    proc = start(run_dir, tmp_path, fake_torch_home)
    time.sleep(rng.uniform(0.5, 4.0))
    proc.kill()
    proc.wait()
    events.append(("SIGKILL", lines(run_dir)))

    # 2-3. during training, a random number of iterations after the last restart, a random fraction into one
    for _ in range(2):
        proc = start(run_dir, tmp_path, fake_torch_home)
        target = min(lines(run_dir) + rng.randint(1, 4), ITERATIONS - 8)
        wait_for_lines(proc, run_dir, max(target, 2))
        time.sleep(rng.uniform(0.0, 0.4))
        proc.kill()
        proc.wait()
        events.append(("SIGKILL", lines(run_dir)))

    # 4. SIGTERM: checkpoint at the end of the current iteration, exit 128 + 15
    # Wait for a line this process wrote itself (more lines than before it started), and not the final one
    # (ITERATIONS + 1 lines: step 0 too), so the signal lands while the loop runs, not during start-up or exit.
    # If the earlier kills left nothing to train, skip to the last restart.
    before = lines(run_dir)
    proc = start(run_dir, tmp_path, fake_torch_home)
    if before < ITERATIONS and wait_for_lines(proc, run_dir, before + 1):
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        if proc.returncode != 0:  # 0: it happened to finish its last iteration meanwhile
            assert proc.returncode == 128 + signal.SIGTERM, err
            assert "Traceback" not in err, err
            summary = json.loads((run_dir / "summary.json").read_text())
            assert summary["status"] == "interrupted", summary
            events.append(("SIGTERM", lines(run_dir)))

    # 5. the last restart runs to the end
    proc = start(run_dir, tmp_path, fake_torch_home)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    print(f"(signal, metrics lines when it struck): {events}")

    reference = tmp_path / "reference"
    train(compose_config(RUN, reference))
    records = read_metrics(run_dir)
    assert [r["global_step"] for r in records] == list(range(0, ITERATIONS * BATCH + 1, BATCH))
    assert without_timing(records) == without_timing(read_metrics(reference))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["global_step"] == ITERATIONS * BATCH
    expected = json.loads((reference / "summary.json").read_text())
    assert summary["eval/greedy_ratio"] == expected["eval/greedy_ratio"]
    assert summary["best_greedy_ratio"] == expected["best_greedy_ratio"]
    assert not list((run_dir / "checkpoints").glob(".*"))  # no temp file left behind by a kill mid-write
