"""One run folder, one writer: an exclusive lock on `<run dir>/.lock` for as long as a process uses the folder.

    with RunLock(run_dir):      # raises RunFolderBusyError at once if a live wsa_lab holds the folder
        ...train...

How it works
- `fcntl.flock(LOCK_EX | LOCK_NB)` on `<run dir>/.lock`, kept open for the lock's lifetime. The kernel drops
  the lock when the process ends, however it ends (crash, SIGKILL, OOM killer), so a dead run never leaves
  its folder locked, and a Slurm requeue (a new process; the old one is gone) takes it again. The file holds
  the holder's pid, host, start time and Slurm job id, for the message a refused process prints; it is
  removed on a clean release. Forked children close their copy of the descriptor (`os.register_at_fork`),
  so a leftover worker process does not keep a dead run's folder locked.
- The lock is re-entrant within a process (the Hydra callback takes it before Hydra writes `.hydra/`, and
  `train` takes it again).
- File systems without `flock` (NFS mounted without a lock manager: ENOLCK; some FUSE file systems): the same
  file is created with `O_CREAT | O_EXCL` as a pid file instead, and refreshed every `HEARTBEAT_S` seconds.
  An existing one is stale, and taken over, when its process is dead (same host: the pid is gone, or reused by
  another process), when it belongs to an earlier attempt of the same Slurm job (`SLURM_RESTART_COUNT` went
  up: Slurm runs one attempt at a time), or, on another host, when it has not been refreshed for
  `STALE_AFTER_S` seconds (5 minutes: a run on another machine that crashed blocks its folder that long).
- Even with flock, a lock held by an earlier attempt of the same Slurm job is broken (an NFS server can keep a
  crashed node's lock for minutes), and so is one whose recorded holder on this host has been dead for a second.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from wsa_lab.errors import RunFolderBusyError
from wsa_lab.files import output_error

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
HEARTBEAT_S = 60.0  # pid-file mode: the holder refreshes the file's mtime this often
STALE_AFTER_S = 300.0  # pid-file mode, holder on another host: considered dead after this long without a refresh
UNWRITTEN_GRACE_S = 30.0  # an empty lock file (holder died between creating and filling it) is stale after this
DEAD_HOLDER_GRACE_S = 1.0  # flock mode: a holder recorded dead on this host for this long is broken
NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS}

_registry_lock = threading.Lock()
_held: dict[str, "_Held"] = {}  # real path of the lock file -> what this process holds
_warned_no_flock = False


class _Held:
    def __init__(self, path: Path, fd: int | None, mode: str) -> None:
        self.path, self.fd, self.mode, self.count = path, fd, mode, 1
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None


def _after_fork_in_child() -> None:
    """A forked child does not own its parent's locks: close its copies of the descriptors (not LOCK_UN)."""
    for held in _held.values():
        if held.fd is not None:
            with contextlib.suppress(OSError):
                os.close(held.fd)
    _held.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


# ---------------------------------------------------------------------------------------------- holder info
def _slurm_job() -> str | None:
    if "SLURM_ARRAY_JOB_ID" in os.environ:
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
    return os.environ.get("SLURM_JOB_ID")


def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22): tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
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
        "pid_start": _process_start(os.getpid()), "slurm_job": _slurm_job(),
        "slurm_restart": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
    }


def _read_info(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _earlier_attempt_of_this_job(info: dict[str, Any]) -> bool:
    """The holder is a previous attempt of this very Slurm job (requeued): Slurm has ended it."""
    mine = _slurm_job()
    return bool(mine) and info.get("slurm_job") == mine and int(info.get("slurm_restart") or 0) < int(
        os.environ.get("SLURM_RESTART_COUNT", "0") or 0
    )


def _dead_on_this_host(info: dict[str, Any]) -> bool:
    return (
        info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int)
        and not _alive(info["pid"], info.get("pid_start"))
    )


def describe(info: dict[str, Any]) -> str:
    if not info.get("pid"):
        return "a process that is still writing its lock file"
    return f"pid {info['pid']} on {info.get('host', '?')}, since {info.get('since', '?')}"


# ---------------------------------------------------------------------------------------------- the lock
class RunLock:
    """An exclusive, re-entrant (per process) lock on a run folder; see the module docstring.

    `hint` ends the refusal's message: what the user can change (`choose another hydra.run.dir`).
    """

    def __init__(self, run_dir: str | Path, hint: str = "choose another hydra.run.dir") -> None:
        self.run_dir = Path(run_dir).absolute()
        self.path = self.run_dir / LOCK_NAME
        self.hint = hint
        self._key: str | None = None

    # -------------------------------------------------------------- public
    def acquire(self) -> "RunLock":
        """Take the lock (or count up if this process holds it); RunFolderBusyError if a live process does."""
        if self._key is not None:
            return self
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            error = output_error(self.path, exc)
            raise (error or exc) from exc
        key = os.path.realpath(self.path)
        with _registry_lock:
            held = _held.get(key)
            if held is not None:
                held.count += 1
            else:
                _held[key] = self._take()
        self._key = key
        return self

    def release(self) -> None:
        """Give the lock back (the last release of this process removes the lock file)."""
        key, self._key = self._key, None
        if key is None:
            return
        with _registry_lock:
            held = _held.get(key)
            if held is None:
                return
            held.count -= 1
            if held.count > 0:
                return
            del _held[key]
        _let_go(held)

    @property
    def held(self) -> bool:
        return self._key is not None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -------------------------------------------------------------- internals
    def _busy(self, info: dict[str, Any]) -> RunFolderBusyError:
        return RunFolderBusyError(
            f"{self.run_dir} is in use by a running wsa_lab ({describe(info)}); wait for it or {self.hint}",
            str(self.run_dir), info,
        )

    def _take(self) -> _Held:
        for _ in range(20):  # a retry only after a holder let go / was found dead meanwhile
            try:
                try:
                    fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                    created = True
                except FileExistsError:
                    fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
                    created = False
            except FileNotFoundError:
                continue  # removed between the two opens
            except OSError as exc:
                error = output_error(self.path, exc)
                raise (error or exc) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if self._break_dead_holder():
                    continue
                raise self._busy(_read_info(self.path)) from None
            except OSError as exc:
                if exc.errno not in NO_FLOCK:
                    os.close(fd)
                    raise
                _warn_no_flock(self.path, exc)
                if created:  # created with O_EXCL just now: it is this process's pid file already
                    try:
                        _write_info(fd)
                    finally:
                        os.close(fd)
                    return _pid_file_held(self.path)
                os.close(fd)
                return self._take_pid_file()
            if not _same_file(fd, self.path):  # removed/replaced between open and flock: lock the new one
                os.close(fd)
                continue
            try:
                _write_info(fd)
            except OSError as exc:
                os.close(fd)
                error = output_error(self.path, exc)
                raise (error or exc) from exc
            return _Held(self.path, fd, "flock")
        raise self._busy(_read_info(self.path))

    def _break_dead_holder(self) -> bool:
        """flock said busy: break it if the holder is provably gone (see the module docstring)."""
        deadline = time.monotonic() + DEAD_HOLDER_GRACE_S
        while True:
            info = _read_info(self.path)
            if _earlier_attempt_of_this_job(info):
                break
            if not _dead_on_this_host(info):
                return False  # alive, elsewhere, or not yet written: a live holder
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)  # a new holder may be about to write its info over a dead one's
        log.warning("%s: breaking the lock of %s, which has ended", self.path, describe(info))
        _unlink_if_same(self.path, info)
        return True

    def _take_pid_file(self) -> _Held:
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            except FileExistsError:
                info = _read_info(self.path)
                if not self._stale(info):
                    raise self._busy(info) from None
                log.warning("%s: taking over the lock of %s, which has ended", self.path, describe(info))
                _unlink_if_same(self.path, info)
                continue
            except OSError as exc:
                error = output_error(self.path, exc)
                raise (error or exc) from exc
            try:
                _write_info(fd)
            finally:
                os.close(fd)
            return _pid_file_held(self.path)
        raise self._busy(_read_info(self.path))

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


def _same_file(fd: int, path: Path) -> bool:
    try:
        there = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino)


def _write_info(fd: int) -> None:
    data = (json.dumps(holder_info()) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _unlink_if_same(path: Path, info: dict[str, Any]) -> bool:
    """Remove the lock file judged stale, unless another process replaced it meanwhile (then keep that one).

    The file is first renamed to a name of our own (only one process's rename succeeds), then checked.
    """
    aside = path.with_name(f"{path.name}.stale.{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False  # someone else took it away first
    if _read_info(aside) != info:  # not the file we judged: a new holder's; put it back (never over another)
        with contextlib.suppress(OSError):
            os.link(aside, path)
        aside.unlink(missing_ok=True)
        return False
    aside.unlink(missing_ok=True)
    return True


def _pid_file_held(path: Path) -> _Held:
    """A pid file this process wrote: keep it fresh (its mtime tells other hosts this run is alive)."""
    held = _Held(path, None, "pid file")
    held.thread = threading.Thread(target=_heartbeat, args=(held,), daemon=True, name="wsa_lab-runlock")
    held.thread.start()
    return held


def _heartbeat(held: _Held) -> None:
    while not held.stop.wait(HEARTBEAT_S):
        with contextlib.suppress(OSError):
            os.utime(held.path)


def _let_go(held: _Held) -> None:
    held.stop.set()
    if held.mode == "flock" and held.fd is not None:
        try:
            if _same_file(held.fd, held.path):
                held.path.unlink(missing_ok=True)  # waiting processes re-check the inode after their flock
        except OSError:
            pass
        os.close(held.fd)  # releases the flock
    elif held.mode == "pid file":
        info = _read_info(held.path)
        if info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
            with contextlib.suppress(OSError):
                held.path.unlink()


def _warn_no_flock(path: Path, exc: OSError) -> None:
    global _warned_no_flock
    if not _warned_no_flock:
        _warned_no_flock = True
        log.warning(
            "%s: this file system has no flock (%s); using a pid file instead (a run on another host that stops "
            "refreshing it counts as ended after %.0f s)", path, os.strerror(exc.errno or 0), STALE_AFTER_S,
        )


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


def held_locks() -> list[str]:
    """The lock files this process holds (for tests and diagnostics)."""
    with _registry_lock:
        return sorted(_held)
