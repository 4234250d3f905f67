"""Checkpoint files: atomic writes, the previous checkpoint kept, damaged files detected on load.

A run's `checkpoints/` folder holds `last.pt` (the newest) and `prev.pt` (the one before). Every write goes
to a temp file in the same folder, is fsync'ed, then renamed over `last.pt` (atomic on POSIX), so a crash
mid-write never leaves a half-written `last.pt`. Loading checks each zip record's CRC (torch itself does
not: a flipped byte in a tensor would load silently) and falls back to `prev.pt` when `last.pt` is damaged.
"""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from wsa_lab.errors import WsaLabError
from wsa_lab.run.atomic import output_error

log = logging.getLogger(__name__)

LAST, PREVIOUS = "last.pt", "prev.pt"


class CheckpointError(WsaLabError):
    """A run folder's checkpoints exist but none can be used."""


def _write_temp(state: dict[str, Any], folder: Path, name: str) -> Path:
    """`torch.save` into a fsync'ed temp file next to `folder/name`; the caller renames it into place."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        cause = _os_error_in(exc)
        if cause is not None and (error := output_error(folder / name, cause)) is not None:
            raise error from exc  # disk full, read-only: one line; the previous checkpoint is intact
        raise
    return Path(tmp)


def _os_error_in(exc: BaseException) -> OSError | None:
    """The OSError behind `exc`: itself, or one it was raised while handling. torch.save's zip writer turns a
    full disk (ENOSPC) into `RuntimeError: [enforce fail ...] unexpected pos` when it closes the file."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _fsync_dir(folder: Path) -> None:
    """Make the renames in `folder` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write `state` to `path` via a temp file in the same folder + fsync + rename (atomic on POSIX)."""
    path = Path(path)
    tmp = _write_temp(state, path.parent, path.name)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def save_rotating(state: dict[str, Any], folder: str | Path) -> Path:
    """Write `folder/last.pt` atomically and keep the checkpoint it replaces as `folder/prev.pt`.

    `last.pt` exists at every moment after the first save: the old one is hard-linked to `prev.pt`
    before the new one is renamed over it (file systems without hard links: moved, and a crash in
    that instant leaves only `prev.pt`, which `load_latest` then uses).
    """
    folder = Path(folder)
    last, prev = folder / LAST, folder / PREVIOUS
    tmp = _write_temp(state, folder, LAST)
    try:
        if last.exists():
            link = folder / f".{PREVIOUS}.link"
            link.unlink(missing_ok=True)
            try:
                os.link(last, link)
                os.replace(link, prev)
            except OSError:
                link.unlink(missing_ok=True)
                os.replace(last, prev)
        os.replace(tmp, last)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(folder)
    return last


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without unpickling arbitrary objects (weights_only=True), checking its integrity.

    Raises `CheckpointError` naming the file when it is truncated or any record fails its CRC check.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # reads every record and checks its CRC-32
        if bad is not None:
            raise CheckpointError(f"{path} is corrupted (record {bad} fails its checksum)")
        state = torch.load(path, map_location=map_location, weights_only=True)
    except CheckpointError:
        raise
    except Exception as exc:  # truncated zip, bad pickle, unexpected types, ...
        raise CheckpointError(f"{path} is unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a checkpoint (a {type(state).__name__}, not a dict)")
    return state


#: what to do when a run's own checkpoints are all damaged (a caller reading another run's folder says its own)
START_OVER_HINT = "Start over with resume=false (replaces this folder's checkpoints and metrics) or use another run folder"


def load_latest(
    folder: str | Path, map_location: str | torch.device = "cpu", required: tuple[str, ...] = (), *,
    tidy: bool = True, hint: str = START_OVER_HINT,
) -> tuple[dict[str, Any], Path] | None:
    """The newest usable checkpoint of `folder`: `last.pt`, else `prev.pt`, with its path.

    A damaged `last.pt` (or one without the `required` keys) is reported as a warning and `prev.pt` is used.
    With `tidy`, temp files left by a process killed mid-write are removed (`tidy=False`: a folder this process
    does not own, e.g. `init_from`'s, is only read). Returns None when `folder` holds neither file; raises
    `CheckpointError` (ending with `hint`) when they exist but none loads.
    """
    folder = Path(folder)
    for stale in [*folder.glob(".*.tmp"), *folder.glob(f".{PREVIOUS}.link")] if tidy else ():
        stale.unlink(missing_ok=True)  # a process killed while writing a checkpoint leaves its temp file
    candidates = [p for p in (folder / LAST, folder / PREVIOUS) if p.is_file()]
    if not candidates:
        return None
    problems = []
    for path in candidates:
        try:
            state = load_checkpoint(path, map_location)
            missing = [key for key in required if key not in state]
            if missing:
                raise CheckpointError(f"{path} lacks {', '.join(missing)} (written by another version of wsa_lab?)")
        except CheckpointError as exc:
            problems.append(str(exc))
            log.warning("%s%s", exc, "; trying the previous checkpoint" if path.name == LAST and len(candidates) > 1 else "")
            continue
        if problems:
            log.warning("using %s instead of the damaged %s", path.name, LAST)
        return state, path
    raise CheckpointError(
        f"no usable checkpoint in {folder}: {'; '.join(problems)}. {hint}"
    )
