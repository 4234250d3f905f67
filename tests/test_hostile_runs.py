"""Hostile inputs and faults: Ctrl-C on a run and on a sweep, a SIGKILLed sweep job, two processes in one run
folder, `metrics.jsonl` deleted or replaced mid-run, a full disk or read-only folder. Each must end in one clear
line with the documented exit code, within seconds, and leave what was already saved intact.

The fast tests run in-process or with tiny helper processes. The `slow` ones drive the real CLI
(`python -m wsa_lab`) in subprocesses that import torch and train: on a 2-core machine about 30-90 s each.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import wsa_lab.train as train_module
from conftest import compose_config, subprocess_env
from test_resume import crash_after_logging
from test_train import TINY
from wsa_lab.errors import OutputFolderError, RunFolderBusyError
from wsa_lab.run.atomic import write_text_atomic
from wsa_lab.run import lock as runlock
from wsa_lab.run.checkpoint import load_checkpoint
from wsa_lab.run.lock import RunLock
from wsa_lab.run.signals import Interrupted, StopSignals
from wsa_lab.tracking import MetricsWriter, read_metrics
from wsa_lab.train import train

# 4 iterations of 32 steps over a trainable Graph-CNN; in-process
RESUMABLE = [*TINY, "algo.total_timesteps=128", "ptm=[graph_cnn]", "checkpoint.interval=2"]
BATCH = 32
# for the CLI: the same, with a budget set per test
CLI_RUN = [*[o for o in TINY if not o.startswith(("algo.total_timesteps=", "checkpoint.interval="))], "ptm=[graph_cnn]"]
# train.py's except block counts an Interrupted raised by a second Ctrl-C as `interrupted` (wired separately)
TRAIN_WIRED = hasattr(train_module, "Interrupted")


def run(out: Path, *overrides: str) -> dict:
    return train(compose_config([*RESUMABLE, *overrides], out))


def steps(run_dir: Path) -> list[int]:
    return [r["global_step"] for r in read_metrics(run_dir)]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def wsa_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("wsa_lab:")]


def alive(pid: int) -> bool:
    """Running (a zombie, exited but not yet reaped by its parent, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


# ============================================================================== Ctrl-C on a run (in-process)
def test_sigint_checkpoints_at_the_end_of_the_iteration_exits_130_and_resumes(tmp_path: Path, monkeypatch, capfd):
    out = tmp_path / "run"
    # Python's own handler, or SIG_IGN where pytest was started in the background by a non-interactive shell
    before = signal.getsignal(signal.SIGINT)
    with monkeypatch.context() as m:
        # Ctrl-C during iteration 2 (while logging it); no periodic checkpoint before step 128
        crash_after_logging(m, at_step=64, action=lambda: os.kill(os.getpid(), signal.SIGINT))
        with pytest.raises(SystemExit) as stopped:
            run(out, "checkpoint.interval=4")
    assert stopped.value.code == 130 and isinstance(stopped.value, Interrupted)
    assert signal.getsignal(signal.SIGINT) is before  # the handler from before the run is back
    assert load_checkpoint(out / "checkpoints/last.pt")["global_step"] == 64
    assert summary(out)["status"] == "interrupted"
    lines = wsa_lines(capfd.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("wsa_lab: run stopped by SIGINT after writing a checkpoint")
    if TRAIN_WIRED:  # StopSignals(run_dir): the folder is known without Hydra too (the CLI test checks the command)
        assert str(out / "checkpoints" / "last.pt") in lines[0] and f"hydra.run.dir={out}" in lines[0]
    resumed = run(out, "checkpoint.interval=4")
    assert resumed["status"] == "completed" and resumed["resumed_from_steps"] == [64]
    assert steps(out) == [0, 32, 64, 96, 128]  # continuous: no gap, no duplicate


def test_a_second_sigint_stops_at_once_without_a_new_checkpoint(tmp_path: Path, monkeypatch, capfd):
    out = tmp_path / "run"

    def ctrl_c_twice():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # the handler raises here: no waiting for the iteration's checkpoint
        time.sleep(1)
        raise AssertionError("the second SIGINT did not stop the run at once")

    with monkeypatch.context() as m:
        crash_after_logging(m, at_step=64, action=ctrl_c_twice)  # after the line of step 64, before its checkpoint
        with pytest.raises(Interrupted) as stopped:
            run(out, "checkpoint.interval=1")
    assert stopped.value.code == 130 and not stopped.value.checkpoint
    assert load_checkpoint(out / "checkpoints/last.pt")["global_step"] == 32  # the last one, untouched
    assert not list((out / "checkpoints").glob(".*"))  # no temp file
    assert steps(out) == [0, 32, 64]  # complete lines only
    lines = wsa_lines(capfd.readouterr().err)
    assert len(lines) == 1 and "stopped at once by a second SIGINT without a new checkpoint" in lines[0]
    if TRAIN_WIRED:
        assert f"the last one, {out / 'checkpoints' / 'last.pt'}, is intact" in lines[0]
        assert summary(out)["status"] == "interrupted"
    assert run(out, "checkpoint.interval=1")["resumed_from_steps"] == [32]
    assert steps(out) == [0, 32, 64, 96, 128]


def test_stop_signals_sigint_after_sigterm_stops_at_once():
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.requested and not signals.stopped_at_once
        with pytest.raises(Interrupted) as stopped:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGINT)  # on the way out: ignored, not a KeyboardInterrupt
    assert stopped.value.signum == signal.SIGINT and signals.stopped_at_once
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


# ============================================================================== metrics.jsonl deleted / replaced
@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_metrics_file_deleted_or_replaced_mid_run_gets_the_later_lines(how: str, tmp_path: Path, monkeypatch, caplog):
    out = tmp_path / "run"
    path = out / "metrics.jsonl"

    def tamper():
        if how == "deleted":
            path.unlink()
        else:  # e.g. an editor or a sync tool writing its own copy over the path
            other = tmp_path / "other.jsonl"
            other.write_text('{"global_step": 0, "note": "the replacement"}\n')
            os.replace(other, path)

    with monkeypatch.context() as m, caplog.at_level(logging.WARNING):
        crash_after_logging(m, at_step=64, action=tamper)
        assert run(out)["status"] == "completed"
    assert f"was {how} while the run wrote it" in caplog.text and "from global_step 96" in caplog.text
    records = read_metrics(out)
    if how == "deleted":
        assert [r["global_step"] for r in records] == [96, 128]
    else:
        assert records[0] == {"global_step": 0, "note": "the replacement"}
        assert [r["global_step"] for r in records[1:]] == [96, 128]
    assert "charts/SPS" in records[-1]


def test_metrics_writer_notices_each_deletion_once(tmp_path: Path, caplog):
    with MetricsWriter(tmp_path) as writer, caplog.at_level(logging.WARNING):
        writer.log({"a": 1.0}, 0)
        writer.log({"a": 2.0}, 1)
        assert caplog.text == ""  # an untouched file: no warning
        writer.path.unlink()
        writer.log({"a": 3.0}, 2)
        writer.log({"a": 4.0}, 3)
    assert caplog.text.count("was deleted while the run wrote it") == 1 and writer.reopened == 1
    assert [r["global_step"] for r in read_metrics(tmp_path)] == [2, 3]


# ============================================================================== disk full / read-only
@pytest.mark.parametrize(
    "code, where, fragment",
    [
        (errno.ENOSPC, "write",
         "no space left on device (ENOSPC); free space on that disk or choose another hydra.run.dir"),
        (errno.EDQUOT, "write", "disk quota exceeded (EDQUOT)"),
        (errno.EROFS, "rename", "read-only file system (EROFS); choose another hydra.run.dir on a writable file system"),
    ],
)
def test_atomic_writer_on_a_full_or_read_only_disk(code: int, where: str, fragment: str, tmp_path: Path, monkeypatch):
    path = tmp_path / "summary.json"
    path.write_text('{"status": "running"}\n')
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"checkpoint")
    real_write_text, real_replace = Path.write_text, os.replace

    def half_then_fail(self, data, *args, **kwargs):  # what a full disk does: part of the data, then ENOSPC
        real_write_text(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError(code, os.strerror(code), str(self))

    def replace_fails(src, dst):
        raise OSError(code, os.strerror(code), str(dst))

    if where == "write":
        monkeypatch.setattr(Path, "write_text", half_then_fail)
    else:
        monkeypatch.setattr(os, "replace", replace_fails)
    with pytest.raises(OutputFolderError) as failed:
        write_text_atomic(path, '{"status": "completed"}\n')
    monkeypatch.setattr(os, "replace", real_replace)
    message = str(failed.value)
    assert "\n" not in message and message.startswith(f"cannot write {path}: ")
    assert fragment in message
    assert "the previous summary.json is intact" in message
    assert f"the last checkpoint {tmp_path / 'checkpoints' / 'last.pt'} is intact" in message
    assert isinstance(failed.value, OSError) and failed.value.errno == code  # `except OSError` callers still work
    assert path.read_text() == '{"status": "running"}\n'  # the old file, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "summary.json"]  # no temp file


def test_a_checkpoint_on_a_full_disk_is_one_line_also_through_torchs_zip_writer(tmp_path: Path, monkeypatch):
    """torch.save on a full disk: its zip writer hits ENOSPC, then fails closing the file with a RuntimeError
    (`[enforce fail at inline_container.cc:672] . unexpected pos`, seen on a 3 MB tmpfs): still one line, and
    the checkpoint already there stays loadable."""
    import torch

    from wsa_lab.run.checkpoint import save_rotating

    folder = tmp_path / "checkpoints"
    save_rotating({"global_step": 8}, folder)
    real_save = torch.save

    def full_disk(state, f):
        real_save({"partial": True}, f)
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2976832 vs 2976720")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OutputFolderError) as failed:
        save_rotating({"global_step": 16}, folder)
    assert "no space left on device (ENOSPC)" in str(failed.value) and "\n" not in str(failed.value)
    assert load_checkpoint(folder / "last.pt")["global_step"] == 8
    assert sorted(p.name for p in folder.iterdir()) == ["last.pt"]  # no temp file left


def test_metrics_writer_on_a_full_disk_leaves_complete_lines(tmp_path: Path, monkeypatch):
    writer = MetricsWriter(tmp_path)
    writer.log({"a": 1.0}, 0)
    real_write = os.write

    def half_then_fail(fd, data):
        if fd == writer._fd:
            real_write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", half_then_fail)
    with pytest.raises(OutputFolderError, match=r"cannot write .*metrics.jsonl: no space left on device \(ENOSPC\)"):
        writer.log({"a": 2.0}, 1)
    monkeypatch.setattr(os, "write", real_write)
    assert (tmp_path / "metrics.jsonl").read_text() == '{"global_step": 0, "a": 1.0}\n'  # no torn half line
    writer.close()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_metrics_writer_on_a_device_that_is_really_full(tmp_path: Path):
    """A real ENOSPC from the kernel: /dev/full accepts the open and fails every write."""
    (tmp_path / "metrics.jsonl").symlink_to("/dev/full")
    with MetricsWriter(tmp_path) as writer, pytest.raises(OutputFolderError) as failed:
        writer.log({"a": 1.0}, 0)
    assert failed.value.errno == errno.ENOSPC and "\n" not in str(failed.value)
    assert "no space left on device (ENOSPC)" in str(failed.value)


def test_sweep_index_on_a_full_disk_names_the_sweep_folder_setting(tmp_path: Path, monkeypatch):
    from wsa_lab.run import sweep

    sweep.update_job(tmp_path, 0, state="pending")
    before = (tmp_path / "index.json").read_text()

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OutputFolderError, match=r"no space left on device \(ENOSPC\); .*choose another hydra.sweep.dir"):
        sweep.update_job(tmp_path, 0, state="running")
    monkeypatch.undo()
    assert (tmp_path / "index.json").read_text() == before
    assert json.loads((tmp_path / ".jobs" / "0.json").read_text())["state"] == "pending"


# ============================================================================== one run folder, one writer
HOLD = (
    "import sys, time\n"
    "from wsa_lab.run.lock import RunLock\n"
    "RunLock(sys.argv[1]).acquire()\n"
    "print('held', flush=True)\n"
    "time.sleep(600)\n"
)


def hold(folder: Path, env: dict | None = None) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_run_lock_refuses_while_the_holder_lives_and_is_taken_over_after_sigkill(tmp_path: Path):
    folder = tmp_path / "run"
    holder = hold(folder)
    try:
        started = time.monotonic()
        with pytest.raises(RunFolderBusyError) as busy:
            RunLock(folder).acquire()
        assert time.monotonic() - started < 1  # at once, no waiting
        message = str(busy.value)
        assert message.startswith(f"{folder} is in use by a running wsa_lab (pid {holder.pid} on ")
        assert message.endswith("; wait for it or choose another hydra.run.dir") and "\n" not in message
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    with RunLock(folder) as lock:  # the kernel released the dead holder's lock: taken over silently
        assert lock.held and json.loads((folder / ".lock").read_text())["pid"] == os.getpid()
        with RunLock(folder) as again:  # held once per process: a second RunLock holds nothing of its own
            assert again.held
        assert (folder / ".lock").is_file()  # still held by the first
        assert runlock.holder_of(folder) is None  # this process is no other live holder
    assert not (folder / ".lock").exists() and not lock.held


FORK_AND_HOLD = (
    "import os, sys, time\n"
    "from wsa_lab.run.lock import RunLock\n"
    "RunLock(sys.argv[1]).acquire()\n"
    "child = os.fork()\n"
    "if child == 0:\n"
    "    time.sleep(60)\n"  # e.g. a multiprocessing worker that outlives the run
    "    os._exit(0)\n"
    "print(child, flush=True)\n"
    "time.sleep(600)\n"
)


def test_a_forked_child_does_not_keep_a_dead_runs_lock(tmp_path: Path):
    folder = tmp_path / "run"
    run_proc = subprocess.Popen([sys.executable, "-c", FORK_AND_HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    child = int(run_proc.stdout.readline())
    try:
        run_proc.kill()
        run_proc.wait()
        run_proc.stdout.close()
        assert alive(child)  # the run is dead, its forked child is not
        with RunLock(folder):  # the child closed its copy of the lock's descriptor at fork
            pass
    finally:
        os.kill(child, signal.SIGKILL)


def test_lock_of_an_earlier_attempt_of_the_same_slurm_job_is_broken(tmp_path: Path, monkeypatch):
    """An NFS server can keep a crashed node's lock for minutes; the requeued task is provably its successor."""
    folder = tmp_path / "run"
    holder = hold(folder, {"SLURM_JOB_ID": "4242", "SLURM_RESTART_COUNT": "0"})
    try:
        monkeypatch.setenv("SLURM_JOB_ID", "4242")
        monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
        with pytest.raises(RunFolderBusyError):  # the same attempt (a second srun step, a user's mistake): refused
            RunLock(folder).acquire()
        monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
        with RunLock(folder):
            assert json.loads((folder / ".lock").read_text())["slurm_restart"] == 1
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def test_without_flock_a_pid_file_with_liveness_checks_is_used(tmp_path: Path, monkeypatch, caplog):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)  # what filelock calls
    folder = tmp_path / "run"
    with caplog.at_level(logging.WARNING), RunLock(folder):
        info = json.loads((folder / ".lock").read_text())
        assert info["pid"] == os.getpid()
    assert "has no flock" in caplog.text and not (folder / ".lock").exists()

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    host = runlock.socket.gethostname()
    try:
        cases = [  # (holder recorded in the file, file age in s, refused?)
            ({"pid": sleeper.pid, "host": host, "pid_start": runlock._process_start(sleeper.pid)}, 0, True),
            ({"pid": sleeper.pid, "host": host, "pid_start": 1}, 0, False),  # its pid, reused by another process
            ({"pid": finished.pid, "host": host}, 0, False),  # dead
            ({"pid": 12345, "host": "elsewhere"}, 60, True),  # another host, refreshed a minute ago
            ({"pid": 12345, "host": "elsewhere"}, runlock.STALE_AFTER_S + 60, False),  # another host, gone quiet
            ({}, 5, True),  # just created, info not written yet
            ({}, runlock.UNWRITTEN_GRACE_S + 5, False),  # its writer died before filling it
        ]
        for holder, age, refused in cases:
            (folder / ".lock").write_text(json.dumps(holder) if holder else "")
            os.utime(folder / ".lock", (time.time() - age, time.time() - age))
            if refused:
                with pytest.raises(RunFolderBusyError):
                    RunLock(folder).acquire()
                (folder / ".lock").unlink()
            else:
                with RunLock(folder):
                    assert json.loads((folder / ".lock").read_text())["pid"] == os.getpid(), (holder, age)
    finally:
        sleeper.kill()
        sleeper.wait()


# ============================================================================== Slurm: Ctrl-C leaves the jobs running
def test_ctrl_c_on_a_slurm_sweep_says_the_jobs_go_on_and_how_to_cancel_them(tmp_path: Path, capsys):
    from hydra_plugins.wsa_lab_launcher.launchers import SlurmLauncher
    from wsa_lab.run import sweep

    class Job:
        job_id = "5150_0"

    launcher = SlurmLauncher.__new__(SlurmLauncher)
    launcher.params = {"name": "wsa_lab"}
    with pytest.raises(sweep.SweepStopped) as stopped:  # the sweeper then prints nothing more (index untouched)
        launcher._left_running(tmp_path, [Job()], 3, signal.SIGINT)
    assert stopped.value.code == 130
    (line,) = capsys.readouterr().err.splitlines()
    assert "the 3 jobs of Slurm array 5150 go on on the cluster" in line
    assert "`squeue -j 5150`" in line and "`scancel 5150`" in line


# ============================================================================== the real CLI (slow)
def cli(args: list[str], cwd: Path, torch_home: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "wsa_lab", *args], cwd=cwd, env=subprocess_env(torch_home),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kwargs,
    )


def wait_for(what: str, check, proc: subprocess.Popen | None = None, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not check():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the process ended (rc={proc.returncode}) before {what}:\n{proc.stderr.read()[-3000:]}")
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def metrics_lines(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


@pytest.mark.slow
def test_ctrl_c_on_a_cli_run_exits_130_and_its_printed_command_resumes_it(tmp_path: Path, fake_torch_home: Path):
    run_dir = tmp_path / "run"
    overrides = [*CLI_RUN, f"algo.total_timesteps={12 * BATCH}", "checkpoint.interval=100"]
    proc = cli([*overrides, f"hydra.run.dir={run_dir}"], tmp_path, fake_torch_home)
    wait_for("3 metrics lines", lambda: metrics_lines(run_dir) >= 3, proc)
    proc.send_signal(signal.SIGINT)
    sent = time.time()
    _, err = proc.communicate(timeout=120)
    print(f"\nexit {time.time() - sent:.1f} s after SIGINT")
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    (line,) = wsa_lines(err)
    assert line.startswith("wsa_lab: run stopped by SIGINT after writing a checkpoint in ")
    stopped_at = load_checkpoint(run_dir / "checkpoints/last.pt")["global_step"]
    assert 0 < stopped_at < 12 * BATCH
    state = summary(run_dir)
    assert state["status"] == "interrupted" and state["global_step"] == stopped_at

    command = shlex.split(line.split("resume with: ", 1)[1])  # the printed command, as a user would paste it
    assert command[:3] == ["python", "-m", "wsa_lab"] and command[-1] == f"hydra.run.dir={run_dir}"
    rerun = subprocess.run(
        [sys.executable, *command[1:]], cwd=tmp_path, env=subprocess_env(fake_torch_home),
        capture_output=True, text=True, timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert steps(run_dir) == list(range(0, 12 * BATCH + 1, BATCH))  # continuous history
    final = summary(run_dir)
    assert final["status"] == "completed" and final["resumed_from_steps"] == [stopped_at]


@pytest.mark.slow
def test_a_second_process_into_a_live_run_folder_is_refused_and_resumes_after_sigkill(
    tmp_path: Path, fake_torch_home: Path
):
    run_dir = tmp_path / "run"
    iterations = 80  # long enough that the first run outlives the second process's start-up (imports: seconds)
    args = [*CLI_RUN, f"algo.total_timesteps={iterations * BATCH}", "checkpoint.interval=1", f"hydra.run.dir={run_dir}"]
    first = cli(args, tmp_path, fake_torch_home)
    try:
        wait_for("the first run to train", lambda: metrics_lines(run_dir) >= 2, first)
        hydra_files = {p: p.read_bytes() for p in (run_dir / ".hydra").iterdir()}
        started = time.time()
        second = subprocess.run(
            [sys.executable, "-m", "wsa_lab", *args], cwd=tmp_path, env=subprocess_env(fake_torch_home),
            capture_output=True, text=True, timeout=120,
        )
        print(f"\nthe second process was refused in {time.time() - started:.1f} s")
        assert second.returncode == 1, second.stderr
        assert "Traceback" not in second.stderr
        (line,) = wsa_lines(second.stderr)
        assert line.startswith(f"wsa_lab: error: {run_dir} is in use by a running wsa_lab (pid {first.pid} on ")
        assert first.poll() is None  # the first goes on, its files untouched by the second
        assert {p: p.read_bytes() for p in (run_dir / ".hydra").iterdir()} == hydra_files
    finally:
        first.kill()
        first.wait()
    reached = steps(run_dir)[-1]
    third = subprocess.run(
        [sys.executable, "-m", "wsa_lab", *args], cwd=tmp_path, env=subprocess_env(fake_torch_home),
        capture_output=True, text=True, timeout=300,
    )
    assert third.returncode == 0, third.stderr  # the dead holder's lock is taken over silently
    final = summary(run_dir)
    assert final["status"] == "completed" and final["resumed_from_steps"] and final["resumed_from_steps"][0] <= reached
    assert steps(run_dir) == list(range(0, iterations * BATCH + 1, BATCH))
    assert not (run_dir / ".lock").exists()


def local_sweep(args: list[str], sweep_dir: Path, tmp_path: Path, torch_home: Path) -> subprocess.Popen:
    args = ["-m", "hydra/launcher=local_parallel", *CLI_RUN, *args, f"hydra.sweep.dir={sweep_dir}"]
    return cli(args, tmp_path, torch_home)


def job_records(sweep_dir: Path) -> dict[int, dict]:
    records = {}
    for path in (sweep_dir / ".jobs").glob("*.json"):
        try:
            record = json.loads(path.read_text())
        except ValueError:
            continue
        records[record["num"]] = record
    return records


def job_lines(sweep_dir: Path, num: int) -> int:
    folder = job_records(sweep_dir).get(num, {}).get("folder")
    return metrics_lines(sweep_dir / folder) if folder else 0


@pytest.mark.slow
def test_ctrl_c_on_a_local_parallel_sweep_stops_every_job_with_a_checkpoint(tmp_path: Path, fake_torch_home: Path):
    sweep_dir = tmp_path / "sweep"
    proc = local_sweep([f"algo.total_timesteps={2000 * BATCH}", "checkpoint.interval=1000", "seed=0,1"],
                       sweep_dir, tmp_path, fake_torch_home)
    wait_for("both jobs to train", lambda: job_lines(sweep_dir, 0) >= 2 and job_lines(sweep_dir, 1) >= 2, proc)
    controllers = [int(p.name) for p in (sweep_dir / ".submitit").iterdir() if p.name.isdigit()]
    proc.send_signal(signal.SIGINT)
    sent = time.time()
    _, err = proc.communicate(timeout=180)
    print(f"\nthe sweep exited {time.time() - sent:.1f} s after SIGINT")
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert err.strip().splitlines() == [
        f"wsa_lab: sweep interrupted: 2 jobs stopped with a checkpoint; rerun the same command with "
        f"hydra.sweep.dir={sweep_dir} to resume them (index: {sweep_dir / 'index.md'})"
    ]
    index = json.loads((sweep_dir / "index.json").read_text())
    assert index["counts"]["interrupted"] == 2
    for job in index["jobs"]:
        assert job["state"] == "interrupted" and "with a checkpoint at global_step" in job["error"]
        folder = sweep_dir / job["folder"]
        assert summary(folder)["status"] == "interrupted"
        assert load_checkpoint(folder / "checkpoints/last.pt")["global_step"] == summary(folder)["global_step"]
        assert not alive(job["pid"]), f"job #{job['num']} (pid {job['pid']}) outlived the sweep"
    assert len(controllers) == 2 and not any(alive(pid) for pid in controllers)
    assert "| interrupted |" in (sweep_dir / "index.md").read_text()


@pytest.mark.slow
def test_a_sigkilled_local_parallel_job_is_reported_as_killed_by_sigkill(tmp_path: Path, fake_torch_home: Path):
    sweep_dir = tmp_path / "sweep"
    proc = local_sweep([f"algo.total_timesteps={2000 * BATCH},{2 * BATCH}", "checkpoint.interval=1"],
                       sweep_dir, tmp_path, fake_torch_home)
    wait_for("job 0 to train", lambda: job_lines(sweep_dir, 0) >= 2, proc)
    # the metrics line of an iteration is written before its checkpoint: kill after the checkpoint is in place
    checkpoint = sweep_dir / job_records(sweep_dir)[0]["folder"] / "checkpoints/last.pt"
    wait_for("job 0's first checkpoint", checkpoint.exists, proc)
    os.kill(job_records(sweep_dir)[0]["pid"], signal.SIGKILL)
    killed = time.time()
    _, err = proc.communicate(timeout=180)
    print(f"\nthe sweep exited {time.time() - killed:.1f} s after the kill")
    assert proc.returncode == 1, err
    jobs = json.loads((sweep_dir / "index.json").read_text())["jobs"]
    assert [j["state"] for j in jobs] == ["failed", "done"]
    assert jobs[0]["error"].startswith("killed by signal 9 (SIGKILL), exit code -9")
    assert "state: FINISHED" not in jobs[0]["error"]
    assert f"wsa_lab: failed job #0 (algo.total_timesteps={2000 * BATCH}): killed by signal 9 (SIGKILL)" in err
    assert "killed by signal 9 (SIGKILL)" in (sweep_dir / jobs[0]["folder"] / "FAILED").read_text()
    assert load_checkpoint(sweep_dir / jobs[0]["folder"] / "checkpoints/last.pt")["global_step"] >= BATCH


def test_resuming_with_another_torch_thread_count_warns_and_the_summary_records_it(tmp_path: Path, monkeypatch, caplog):
    """CPU sums are split by thread, so a resume with another count differs in the last digits: said, not silent."""
    import torch

    out = tmp_path / "run"
    overrides = [*[o for o in TINY if not o.startswith(("algo.total_timesteps", "checkpoint.interval"))],
                 "algo.total_timesteps=96", "checkpoint.interval=1", "ptm=[graph_cnn]"]
    threads = torch.get_num_threads()
    try:
        with monkeypatch.context() as m:
            crash_after_logging(m, at_step=64)
            with pytest.raises(RuntimeError, match="simulated crash"):
                train(compose_config(overrides, out))
        assert load_checkpoint(out / "checkpoints" / "last.pt")["torch_threads"] == threads
        torch.set_num_threads(threads + 1)
        with caplog.at_level(logging.WARNING):
            summary = train(compose_config(overrides, out))
    finally:
        torch.set_num_threads(threads)
    assert summary["status"] == "completed" and summary["torch_threads"] == threads + 1
    assert f"checkpointed with {threads} torch threads and resumes with {threads + 1}" in caplog.text
    assert f"OMP_NUM_THREADS={threads}" in caplog.text
