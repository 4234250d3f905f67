"""One run folder, one writer: an exclusive lock on `<run dir>/.lock` for as long as a process uses the folder.

    with RunLock(run_dir):      # raises RunFolderBusyError at once if a live wsa_lab holds the folder
        ...train...

The lock itself is `filelock.FileLock` (flock on Linux): the kernel drops it when the holder ends, however it
ends (crash, SIGKILL, OOM killer), so a dead run never leaves its folder locked and a Slurm requeue (a new
process) takes it again; filelock also makes forked children let go of their copy. What filelock lacks, and
this module adds:

- Who holds it: the lock file holds the holder's pid, host, start time and Slurm job (written by filelock's
  `on_acquired` while the lock is held), for the one line a refused process prints; it is removed on a clean
  release (also when the process ends by `SystemExit`: an `atexit` hook).
- Held once per process: a second `RunLock` on a folder whose lock file names this very process (the Hydra
  callback took it before Hydra wrote `.hydra/`, and the run then opens the folder) holds nothing of its own.
- A stale rule for holders that are provably gone although their lock is still there: an earlier attempt of
  the same Slurm job (`SLURM_RESTART_COUNT` went up; an NFS server can keep a crashed node's lock for minutes)
  is broken, with flock or without.
- File systems without flock (NFS without a lock manager: ENOLCK; some FUSE file systems). filelock's own
  fallback only covers ENOSYS and cannot tell a dead holder on another host from a live one, so a pid file is
  used: created with `O_EXCL`, refreshed every `HEARTBEAT_S` seconds, and taken over when its holder is dead
  (same host: the pid is gone or reused), is an earlier attempt of the same Slurm job, or on another host has
  not refreshed it for `STALE_AFTER_S` seconds (5 minutes: a crashed run on another machine blocks that long).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import filelock

from wsa_lab.errors import RunFolderBusyError
from wsa_lab.run.atomic import output_error

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
HEARTBEAT_S = 60.0  # pid-file mode: the holder refreshes the file's mtime this often
STALE_AFTER_S = 300.0  # pid-file mode, holder on another host: considered dead after this long without a refresh
UNWRITTEN_GRACE_S = 30.0  # pid-file mode: an empty lock file (its writer died before filling it) is stale after this
NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS}


# ---------------------------------------------------------------------------------------------- the holder
def slurm_job() -> str | None:
    """This process's Slurm job (`<array>_<task>` in a job array), or None outside Slurm."""
    if "SLURM_ARRAY_JOB_ID" in os.environ:
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
    return os.environ.get("SLURM_JOB_ID")


def _restart_count() -> int:
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)


def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22): tells a reused pid apart."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int, start: int | None) -> bool:
    """Is process `pid` (started at `start`, if known) still running on this host?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False  # a zombie: it has exited, its parent has not reaped it yet
    except (OSError, IndexError):
        pass
    now = _process_start(pid)
    return start is None or now is None or now == start


def holder_info() -> dict[str, Any]:
    """What this process writes into a lock file it holds."""
    return {
        "pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "pid_start": _process_start(os.getpid()), "slurm_job": slurm_job(), "slurm_restart": _restart_count(),
    }


def _write_info(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder_info()) + "\n").encode(), 0)


def read_info(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _is_this_process(info: dict[str, Any]) -> bool:
    return (
        info.get("pid") == os.getpid() and info.get("host") == socket.gethostname()
        and info.get("pid_start") == _process_start(os.getpid())
    )


def _earlier_attempt_of_this_job(info: dict[str, Any]) -> bool:
    """The holder is a previous attempt of this very Slurm job (requeued): Slurm has ended it."""
    mine = slurm_job()
    return bool(mine) and info.get("slurm_job") == mine and int(info.get("slurm_restart") or 0) < _restart_count()


def describe(info: dict[str, Any]) -> str:
    if not info.get("pid"):
        return "a process that is still writing its lock file"
    return f"pid {info['pid']} on {info.get('host', '?')}, since {info.get('since', '?')}"


# ---------------------------------------------------------------------------------------------- the lock
class RunLock:
    """An exclusive lock on a run folder, held once per process; see the module docstring.

    `hint` ends the refusal's message: what the user can change (`choose another hydra.run.dir`).
    """

    def __init__(self, run_dir: str | Path, hint: str = "choose another hydra.run.dir") -> None:
        self.run_dir = Path(run_dir).absolute()
        self.path = self.run_dir / LOCK_NAME
        self.hint = hint
        self.held = False  # this object holds the lock (or this process did already: then `_owner` is None)
        self._owner: filelock.FileLock | threading.Event | None = None  # flock, or the pid file's heartbeat stop

    def acquire(self) -> "RunLock":
        """Take the lock; RunFolderBusyError if a live process holds it (a no-op if this process does)."""
        if self.held:
            return self
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise output_error(self.path, exc) or exc from exc
        for _ in range(20):  # a retry only after a stale holder's file was moved away
            info = read_info(self.path)
            if _is_this_process(info):
                self.held = True  # taken by this process already; its first holder releases it
                return self
            try:
                self._owner = self._take()
            except RunFolderBusyError as busy:
                if not _earlier_attempt_of_this_job(busy.holder):
                    raise
                log.warning("%s: breaking the lock of %s, which has ended", self.path, describe(busy.holder))
                _unlink_if_same(self.path, busy.holder)
                continue
            self.held = True
            atexit.register(self.release)  # a run that ends by SystemExit skips Hydra's end callbacks
            return self
        raise self._busy(read_info(self.path))

    def release(self) -> None:
        """Give the lock back and remove its file (when this object took it)."""
        owner, self._owner, self.held = self._owner, None, False
        if owner is None:
            return
        atexit.unregister(self.release)
        if _is_this_process(read_info(self.path)):
            with contextlib.suppress(OSError):
                self.path.unlink()  # before letting go: filelock's waiters retry on the new file
        if isinstance(owner, filelock.FileLock):
            owner.release()
        else:
            owner.set()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _busy(self, info: dict[str, Any]) -> RunFolderBusyError:
        return RunFolderBusyError(
            f"{self.run_dir} is in use by a running wsa_lab ({describe(info)}); wait for it or {self.hint}",
            str(self.run_dir), info,
        )

    def _take(self) -> filelock.FileLock | threading.Event:
        lock = filelock.FileLock(self.path, timeout=0, thread_local=False, on_acquired=_write_info)
        existed = self.path.exists()
        try:
            lock.acquire()
        except filelock.Timeout:
            raise self._busy(read_info(self.path)) from None
        except OSError as exc:
            if exc.errno not in NO_FLOCK:
                raise output_error(self.path, exc) or exc from exc
            if not existed:  # the empty file filelock created before flock failed: the pid file is made anew
                _unlink_if_same(self.path, {})
            log.warning(
                "%s: this file system has no flock (%s); using a pid file instead (a run on another host that stops "
                "refreshing it counts as ended after %.0f s)", self.path, os.strerror(exc.errno or 0), STALE_AFTER_S,
            )
            return self._take_pid_file()
        return lock

    def _take_pid_file(self) -> threading.Event:
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            except FileExistsError:
                info = read_info(self.path)
                if not self._stale(info):
                    raise self._busy(info) from None
                log.warning("%s: taking over the lock of %s, which has ended", self.path, describe(info))
                _unlink_if_same(self.path, info)
                continue
            except OSError as exc:
                raise output_error(self.path, exc) or exc from exc
            try:
                _write_info(fd)
            finally:
                os.close(fd)
            stop = threading.Event()  # keep the file fresh: its mtime tells other hosts this run is alive
            threading.Thread(target=_heartbeat, args=(self.path, stop), daemon=True, name="wsa_lab-lock").start()
            return stop
        raise self._busy(read_info(self.path))

    def _stale(self, info: dict[str, Any]) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return True
        if not info.get("pid"):
            return age > UNWRITTEN_GRACE_S
        if _earlier_attempt_of_this_job(info):
            return True
        if info.get("host") == socket.gethostname():
            return not _alive(int(info["pid"]), info.get("pid_start"))
        return age > STALE_AFTER_S


def _heartbeat(path: Path, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        with contextlib.suppress(OSError):
            os.utime(path)


def _unlink_if_same(path: Path, info: dict[str, Any]) -> bool:
    """Remove the lock file judged stale, unless another process replaced it meanwhile (then keep that one).

    The file is first renamed to a name of our own (only one process's rename succeeds), then checked.
    """
    aside = path.with_name(f"{path.name}.stale.{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False  # someone else took it away first
    if read_info(aside) != info:  # not the file we judged: a new holder's; put it back (never over another)
        with contextlib.suppress(OSError):
            os.link(aside, path)
        aside.unlink(missing_ok=True)
        return False
    aside.unlink(missing_ok=True)
    return True


def holder_of(run_dir: str | Path) -> dict[str, Any] | None:
    """Who holds `run_dir` now, if a live process other than this one does (else None). Takes and gives back
    the lock to find out; a folder that does not exist is free (and is not created)."""
    if not Path(run_dir).is_dir():
        return None
    try:
        RunLock(run_dir).acquire().release()
    except RunFolderBusyError as exc:
        return exc.holder
    return None
