"""Where weight files are, fetching a missing torchvision file on first use, and reading state dicts.

A torchvision weights enum (``ResNet18_Weights.IMAGENET1K_V1``) names its file: the last part of its URL,
``resnet18-f37072fd.pth``. Loading looks for it in the PTM's `weights_path` alone when that is set, else in
`paths.weights_dir` (`weights_dir` here), then in the torch hub cache (``$TORCH_HOME/hub/checkpoints/``). A file
found nowhere is downloaded into the hub cache by torch.hub, which keeps it only when its SHA-256 starts with the
digits after the ``-`` in its name; not when `weights_path` is set (that file is the user's), nor when
``WSA_LAB_OFFLINE=1`` (cluster nodes without a route). A file that cannot be had is a one-line
WeightsNotFoundError naming the paths looked at, the URL and the alternatives; never random weights instead.
"""

from __future__ import annotations

import logging
import socket
import urllib.error
import urllib.request
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from torchvision.models import WeightsEnum

from wsa_lab.errors import ConfigError, WeightsNotFoundError
from wsa_lab.weights.checks import default_weights_dir, env_flag, hash_prefix, verify_weights_file
from wsa_lab.weights.names import cli_name, enum_label, torchvision_weights

log = logging.getLogger(__name__)

#: Environment variable: "1" never downloads (a missing file is the one-line error at once).
OFFLINE_ENV = "WSA_LAB_OFFLINE"
#: Seconds to wait for the server to answer before a download counts as "no network".
CONNECT_TIMEOUT_S = 10.0


def weights_url(enum: WeightsEnum) -> str:
    """The URL of `enum`'s file (``enum.url``); every other name here derives from it (tests serve files locally)."""
    return enum.url


def enum_file_name(enum: WeightsEnum) -> str:
    """``resnet18-f37072fd.pth``: the last part of the URL, as torch.hub names the cached file."""
    return Path(weights_url(enum)).name


def weights_file_name(model_type: str, weights: str = "imagenet") -> str:
    """File name torchvision uses for `model_type`'s `weights` (e.g. resnet18-f37072fd.pth)."""
    enum = torchvision_weights(model_type, weights)
    if enum is None:
        raise ConfigError(f"{model_type} with weights: random has no weight file")
    return enum_file_name(enum)


def candidate_paths(file_name: str, weights_path: str | None = None, weights_dir: str | None = None) -> list[Path]:
    """Where loading looks for `file_name`, in order: `weights_path` alone if set, else `weights_dir`, then the hub cache."""
    if weights_path:
        return [Path(weights_path).expanduser()]
    paths = [Path(weights_dir).expanduser() / file_name] if weights_dir else []
    hub = default_weights_dir() / file_name
    return paths + [hub] if hub not in paths else paths


class DownloadError(Exception):
    """A download that gave no file; `network`: the network was the problem (no route, refused, HTTP error)."""

    def __init__(self, reason: str, network: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.network = network


def fetch(url: str, dst: str, expected_prefix: Optional[str]) -> None:
    """torch.hub's download (a temporary file, renamed to `dst` only when its SHA-256 starts with `expected_prefix`),
    after a HEAD request with a short timeout: torch.hub's own request has none, so without a route it would hang."""
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=CONNECT_TIMEOUT_S):
        pass
    torch.hub.download_url_to_file(url, dst, hash_prefix=expected_prefix, progress=True)


def download(url: str, dst: Path) -> None:
    """:func:`fetch` `url` to `dst`, checked against the SHA-256 prefix in `dst`'s name; any failure is a
    :class:`DownloadError` with a one-line reason, and leaves nothing at `dst`."""
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        fetch(url, str(dst), hash_prefix(dst.name))
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"HTTP {exc.code} {exc.reason}", network=True) from exc
    except (urllib.error.URLError, socket.timeout, ConnectionError, TimeoutError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise DownloadError(f"no network: {reason}", network=True) from exc
    except (RuntimeError, OSError) as exc:  # torch.hub's "invalid hash value", a full disk, a read-only folder
        raise DownloadError(" ".join(str(exc).split()), network=False) from exc


def weights_file(
    model_type: str,
    enum: WeightsEnum,
    weights_path: str | None = None,
    weights_dir: str | None = None,
    override: str | None = None,
    allow_download: bool = True,
) -> Path:
    """The file of `enum`: found on disk (:func:`candidate_paths`), else downloaded into the hub cache (unless
    `weights_path` is set, ``WSA_LAB_OFFLINE=1`` or not `allow_download`); else a one-line WeightsNotFoundError.

    `override`: the command-line override that would train without it (e.g. ``ptm.resnet18_imagenet.weights=random``).
    """
    name, url = enum_file_name(enum), weights_url(enum)
    looked = candidate_paths(name, weights_path, weights_dir)
    for path in looked:
        if path.is_file():
            return path
    if weights_path:
        why = "nothing is downloaded for a PTM's weights_path"
    elif env_flag(OFFLINE_ENV) or not allow_download:
        why = f"nothing is downloaded ({OFFLINE_ENV}=1)" if allow_download else "nothing is downloaded here"
    else:
        dst = default_weights_dir() / name
        log.info("downloading %s to %s (first use; kept only if its SHA-256 matches its name)", url, dst)
        try:
            download(url, dst)
            return dst
        except DownloadError as exc:
            why = (f"it cannot be downloaded ({exc.reason})" if exc.network else
                   f"downloading it failed ({exc.reason}; nothing was kept)")
    cli = cli_name(model_type, enum)
    cli += f" --weights-dir {Path(weights_dir).expanduser()}" if weights_dir and not weights_path else ""
    raise WeightsNotFoundError(
        f"ImageNet weights for {model_type} ({enum_label(enum)}, file {name}) not found at "
        f"{', '.join(str(p) for p in looked)}, and {why}: fetch {url} on a machine with network "
        f"(`python -m wsa_lab.weights download {cli}` there) and copy it to {looked[0]}, or point "
        f"TORCH_HOME, paths.weights_dir or the PTM's weights_path at it; or train without it: `weights: random` "
        f"(on the command line: {override or 'weights=random'}), or experiment=phase2_all_random."
    )


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``TypeName: message`` on one line, cut at `limit` characters."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def read_state_dict(path: Path, what: str, url: str | None = None, fix: str | None = None) -> MutableMapping[str, Any]:
    """Verify (see :func:`~wsa_lab.weights.checks.verify_weights_file`) and `torch.load` a state dict; anything
    unreadable is one line. Returned as loaded: its `_metadata` (module versions) matters to `load_state_dict`."""
    verify_weights_file(path, url)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file must not become a silent random model
        fix = fix or (f"Replace the file with {url}." if url else "Replace the file.")
        raise WeightsNotFoundError(f"could not load {what} from {path}: {one_line(exc)}. {fix}") from exc
    if not isinstance(state, MutableMapping):
        raise WeightsNotFoundError(f"could not load {what} from {path}: it holds a {type(state).__name__}, not a state dict")
    return state


def load_module_weights(module: nn.Module, weights_path: str, who: str, made_by: str | None = None) -> None:
    """Load a state-dict file strictly into `module` (a PTM backbone); every problem is one line. `made_by`: the
    command that makes the file (named when it is missing)."""
    path = Path(weights_path).expanduser()
    if not path.is_file():
        if made_by:
            raise WeightsNotFoundError(f"{who}: weights_path {path} not found; make it first with `{made_by}`")
        raise WeightsNotFoundError(
            f"{who}: weights_path {path} not found (a state dict: torch.save(module.state_dict(), path)); fix the "
            "path, copy the file there, or remove weights_path to start from the module's own initialisation"
        )
    state = read_state_dict(path, f"{who}'s weights", fix="Save it with torch.save(module.state_dict(), path).")
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} in the file vs {tuple(own[k].shape)}"
        for k in own if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = [
        f"{label}: {', '.join(items[:3])}{f' (+{len(items) - 3} more)' if len(items) > 3 else ''}"
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("size mismatch", shapes))
        if items
    ]
    if problems:
        raise WeightsNotFoundError(
            f"{who}: {path} does not fit the module ({'; '.join(problems)}); build the module with the kwargs the "
            "file was saved with, or remove weights_path"
        )
    module.load_state_dict(state, strict=True)
