"""The SHA-256 check of weight files, its on-disk cache, its opt-out, and the record of what this process loaded.

torchvision's file names carry the first hex digits of the file's SHA-256 (``resnet18-f37072fd.pth``). torch.hub
checks them only while downloading; a file already in the cache (copied in, truncated, replaced) is loaded
unchecked, so every file is checked here before it is loaded. Hashing 100 MB costs ~0.3 s, so digests are cached
in ``$TORCH_HOME/hub/checkpoints/.wsa_lab_sha256.json`` (in memory only when that is not writable), keyed by the
file's path, size, mtime, ctime and inode: a changed file whose mtime is set back still has a new ctime (which no
user can set), so it is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any, NamedTuple, Optional

import torch

from wsa_lab.errors import WeightsNotFoundError
from wsa_lab.run.atomic import write_text_atomic

log = logging.getLogger(__name__)

#: Environment variable: "1" loads weight files whose SHA-256 does not match their name (stand-ins), loudly.
ALLOW_UNVERIFIED_ENV = "WSA_LAB_ALLOW_UNVERIFIED_WEIGHTS"
#: File (in the torch hub cache folder) that caches the SHA-256 of checked files.
SHA256_CACHE_NAME = ".wsa_lab_sha256.json"
#: torch.hub's convention: ``<name>-<first hex digits of the SHA-256>.<ext>`` (at least 8 digits here).
HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")
#: What identifies one version of a file in the cache (st_ctime_ns and st_ino cannot be set back by a user).
STAMP_FIELDS = ("size", "mtime_ns", "ctime_ns", "ino")

_lock = threading.Lock()
_digests: dict[str, tuple[tuple[int, ...], str]] = {}  # resolved path -> (stamp, sha256): this process's cache
_checks: dict[str, str] = {}  # resolved path -> verified | unverified | unchecked (files loaded by this process)
_warned: set[str] = set()
_cache_unwritable_noted = False


def env_flag(name: str) -> bool:
    """True when environment variable `name` is 1/true/yes/on."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def allow_unverified() -> bool:
    """True when ``WSA_LAB_ALLOW_UNVERIFIED_WEIGHTS`` is set to 1/true/yes/on."""
    return env_flag(ALLOW_UNVERIFIED_ENV)


def default_weights_dir() -> Path:
    """Where torchvision's `load_state_dict_from_url` caches files: `$TORCH_HOME/hub/checkpoints`."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def hash_prefix(name: str) -> Optional[str]:
    """The SHA-256 prefix a torch.hub-style file name carries (``resnet18-f37072fd.pth`` -> ``f37072fd``), or None."""
    match = HASH_IN_NAME.search(name)
    return match.group(1) if match else None


def _cache_file() -> Path:
    return default_weights_dir() / SHA256_CACHE_NAME


def _read_cache() -> dict[str, Any]:
    try:
        data = json.loads(_cache_file().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(key: str, entry: dict[str, Any]) -> None:
    global _cache_unwritable_noted
    path = _cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache()  # merge: another process may have added files meanwhile
        data[key] = entry
        write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True))  # readers never see half a file
    except OSError as exc:  # OutputFolderError included
        if not _cache_unwritable_noted:
            _cache_unwritable_noted = True
            log.info("cannot write the SHA-256 cache %s (%s); checked files are re-hashed by each process", path, exc)


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file, computed once per version of the file (:data:`STAMP_FIELDS`) and cached."""
    path = Path(path)
    key = str(path.resolve())
    st = path.stat()
    stamp = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    with _lock:
        hit = _digests.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        entry = _read_cache().get(key)
        if isinstance(entry, dict) and tuple(entry.get(f) for f in STAMP_FIELDS) == stamp \
                and isinstance(entry.get("sha256"), str):
            _digests[key] = (stamp, entry["sha256"])
            return entry["sha256"]
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        sha = digest.hexdigest()
        _digests[key] = (stamp, sha)
        _write_cache(key, {**dict(zip(STAMP_FIELDS, stamp)), "sha256": sha})
        return sha


class HashCheck(NamedTuple):
    state: str  # ok | MISMATCH | unchecked (no hash prefix to compare with)
    expected: Optional[str]
    found: Optional[str]


def check_weights_file(path: str | Path, url: str | None = None) -> HashCheck:
    """Compare a file's SHA-256 with the prefix its name carries, else the prefix in `url`'s file name (no raising)."""
    path = Path(path)
    expected = hash_prefix(path.name) or (hash_prefix(Path(url).name) if url else None)
    if expected is None:
        return HashCheck("unchecked", None, None)
    found = file_sha256(path)
    return HashCheck("ok" if found.startswith(expected) else "MISMATCH", expected, found[: len(expected)])


def verify_weights_file(path: str | Path, url: str | None = None) -> str:
    """Check a file before loading it: ``verified``, ``unchecked`` (no prefix known), or ``unverified`` (mismatch
    let through by ``WSA_LAB_ALLOW_UNVERIFIED_WEIGHTS=1``, with a WARNING once per file); a mismatch without the
    opt-out raises a one-line WeightsNotFoundError. Every loaded file is recorded (:func:`loaded_weight_files`)."""
    path = Path(path)
    key = str(path.resolve())
    check = check_weights_file(path, url)
    if check.state == "ok":
        status = "verified"
    elif check.state == "unchecked":
        status = "unchecked"
    elif allow_unverified():
        status = "unverified"
        with _lock:
            first = key not in _warned
            _warned.add(key)
        if first:
            log.warning(
                "loading UNVERIFIED weights file %s: its SHA-256 starts %s, expected %s (%s=1 lets stand-in files "
                "through; features from it are not the pre-trained model's)", path, check.found, check.expected,
                ALLOW_UNVERIFIED_ENV,
            )
    else:
        redo = (f"delete it and fetch {url} again" if url else
                "replace it with the file its name promises, or rename it if the digits after '-' are not a hash")
        raise WeightsNotFoundError(
            f"weights file {path} fails its checksum: SHA-256 should start {check.expected} (its name/URL), "
            f"it starts {check.found} (a truncated, corrupted or different file); {redo} "
            f"(`python -m wsa_lab.weights status` shows every file), or set {ALLOW_UNVERIFIED_ENV}=1 to load "
            "stand-in files anyway (tests, benchmarks; the run then records them as unverified)"
        )
    with _lock:
        _checks[key] = status
    return status


def unverified_weight_files() -> list[str]:
    """Weight files this process loaded although their SHA-256 did not match (only under the opt-out), sorted.

    For the run's summary: empty means every loaded file with a known hash matched it.
    """
    with _lock:
        return sorted(path for path, status in _checks.items() if status == "unverified")


def loaded_weight_files() -> dict[str, str]:
    """Every weight file this process loaded -> ``verified`` | ``unverified`` | ``unchecked`` (no hash to check)."""
    with _lock:
        return dict(sorted(_checks.items()))


def forget_weight_checks() -> None:
    """Clear the records of loaded files and the warnings already given (digests stay cached): each training run
    starts afresh, so its summary lists its own files (and tests)."""
    with _lock:
        _checks.clear()
        _warned.clear()
