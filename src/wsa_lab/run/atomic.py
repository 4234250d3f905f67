"""Atomic text files: readers (and a process killed mid-write) never see a half-written file.

A write that fails because the disk is full, the quota is used up, the file system is read-only or the folder
is not writable raises `OutputFolderError` (one line: which file, why, what to do, what is still intact);
the temp file is removed and the previous file stays as it was.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from wsa_lab.errors import OutputFolderError

# errno -> (what it means, what to do); other OSErrors pass through unchanged
_OUTPUT_PROBLEMS = {
    errno.ENOSPC: ("no space left on device", "free space on that disk or choose another {where}"),
    errno.EDQUOT: ("disk quota exceeded", "free space within your quota or choose another {where}"),
    errno.EROFS: ("read-only file system", "choose another {where} on a writable file system"),
    errno.EACCES: ("permission denied", "make the folder writable or choose another {where}"),
    errno.EPERM: ("operation not permitted", "make the folder writable or choose another {where}"),
}


def _last_checkpoint(path: Path) -> Path | None:
    """The run's newest checkpoint near `path` (a file of a run folder or of its checkpoints/ folder)."""
    for folder in (path.parent, path.parent.parent):
        for candidate in (folder / "checkpoints" / "last.pt", folder / "last.pt"):
            if candidate != path and candidate.is_file():
                return candidate
    return None


def output_error(path: str | Path, exc: OSError, where: str = "hydra.run.dir") -> OutputFolderError | None:
    """The one-line `OutputFolderError` for `exc` raised while writing `path`; None when `exc` is another problem.

    `where` names the setting that chooses the folder (`hydra.run.dir`, `hydra.sweep.dir`, ...).
    """
    if isinstance(exc, OutputFolderError):
        return exc
    problem = _OUTPUT_PROBLEMS.get(exc.errno) if exc.errno is not None else None
    if problem is None:
        return None
    path = Path(path)
    meaning, fix = problem
    parts = [f"cannot write {path}: {meaning} ({errno.errorcode.get(exc.errno, exc.errno)}); {fix.format(where=where)}"]
    if path.is_file():
        parts.append(f"the previous {path.name} is intact")
    checkpoint = _last_checkpoint(path)
    if checkpoint is not None:
        parts.append(f"the last checkpoint {checkpoint} is intact")
    return OutputFolderError("; ".join(parts), exc.errno, str(path))


def write_text_atomic(path: str | Path, text: str, where: str = "hydra.run.dir") -> Path:
    """Write `text` to a temp file next to `path`, then rename it over `path` (atomic on POSIX).

    The temp name carries the process id, so concurrent writers never share a temp file. Disk full, quota,
    read-only or permission problems raise `OutputFolderError` (see `output_error`), with the temp file
    removed and `path` unchanged.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # e.g. the file system went read-only: nothing was created then
        if isinstance(exc, OSError):
            error = output_error(path, exc, where)
            if error is not None:
                raise error from exc
        raise
    return path
