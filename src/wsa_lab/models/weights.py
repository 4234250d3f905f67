"""Weight files: find them offline, check their SHA-256, load them; torchvision models by name.

Every pre-trained file goes through this module; nothing else in wsa_lab reads weights from disk.

- **Where.** A torchvision weights enum (e.g. ``ResNet18_Weights.IMAGENET1K_V1``) names its file (the last
  part of its URL, ``resnet18-f37072fd.pth``). At run time there is no download: the file is taken from the
  PTM's explicit `weights_path`, else from `paths.weights_dir` (`weights_dir` here), else from the torch hub
  cache (``$TORCH_HOME/hub/checkpoints/``). A missing file is a one-line :class:`WeightsNotFoundError` that
  names the paths looked at, the URL and the alternatives. Never falls back to random weights.
- **Check.** torchvision's file names carry the first hex digits of the file's SHA-256 (``-f37072fd.``). A file
  whose name carries such a prefix, or any file loaded for an enum whose URL carries one, is hashed and
  compared (:func:`verify_weights_file`); a mismatch is refused with one line. Hashing 100 MB costs ~0.3 s, so
  the digest is cached per (path, size, mtime) in ``$TORCH_HOME/hub/checkpoints/.wsa_lab_sha256.json`` (in
  memory only when that is not writable).
- **Opt-out.** ``WSA_LAB_ALLOW_UNVERIFIED_WEIGHTS=1`` loads mismatching files anyway (stand-in files in tests
  and benchmarks), with a WARNING once per file; :func:`unverified_weight_files` lists them for the run's
  summary.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Optional

import torch
from torch import nn
from torchvision import models as tvm

from wsa_lab.errors import ConfigError, WeightsNotFoundError

log = logging.getLogger(__name__)

#: Environment variable: "1" loads weight files whose SHA-256 does not match their name (stand-ins), loudly.
ALLOW_UNVERIFIED_ENV = "WSA_LAB_ALLOW_UNVERIFIED_WEIGHTS"
#: File (in the torch hub cache folder) that caches the SHA-256 of checked files by (path, size, mtime).
SHA256_CACHE_NAME = ".wsa_lab_sha256.json"
#: torch.hub's convention: ``<name>-<first hex digits of the SHA-256>.<ext>`` (at least 8 digits here).
HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")


# ---------------------------------------------------------------------------------------------- ResNet table
@dataclass(frozen=True)
class ResNetEntry:
    builder: Callable[..., tvm.ResNet]
    imagenet: tvm.WeightsEnum  # the ImageNet weights used for `weights: imagenet`
    out_dim: int  # width of the pooled feature (input of the removed `fc`)


#: The three ResNets of the WSA design summary (the Standard Actor's choices; `weights: imagenet` keeps their enum).
RESNETS: dict[str, ResNetEntry] = {
    "resnet18": ResNetEntry(tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1, 512),
    "resnet34": ResNetEntry(tvm.resnet34, tvm.ResNet34_Weights.IMAGENET1K_V1, 512),
    "resnet50": ResNetEntry(tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V2, 2048),
}
GRAPH_TYPES = ("graph_cnn",)
MODEL_TYPES = tuple(RESNETS) + GRAPH_TYPES  # the WSA design summary's fixed list (any torchvision model works now: backbones.py)
WEIGHT_CHOICES = ("imagenet", "random")


# True only while `weights_from_checkpoint` rebuilds a trained agent (see there).
_CHECKPOINT_SUPPLIES_WEIGHTS: ContextVar[bool] = ContextVar("checkpoint_supplies_weights", default=False)


@contextmanager
def weights_from_checkpoint() -> Iterator[None]:
    """Build agents whose weight files are not read from disk, for a checkpoint to fill in.

    A trained agent's checkpoint holds every parameter and buffer, the frozen pre-trained backbones included, so
    evaluating it needs no weight file. Inside this block a pre-trained torchvision PTM builds its pre-trained
    architecture (BatchNorm, the enum's sizes) without loading the file, and `weights_path` files of PyG and
    custom PTMs are not read; the caller must then `load_state_dict(..., strict=True)`, which fails on any
    missing tensor, so nothing ends up with random weights.
    """
    token = _CHECKPOINT_SUPPLIES_WEIGHTS.set(True)
    try:
        yield
    finally:
        _CHECKPOINT_SUPPLIES_WEIGHTS.reset(token)


def checkpoint_supplies_weights() -> bool:
    """True inside :func:`weights_from_checkpoint` (weight files are not read)."""
    return _CHECKPOINT_SUPPLIES_WEIGHTS.get()


# ---------------------------------------------------------------------------------------------- torchvision names
@functools.lru_cache(maxsize=None)
def torchvision_models() -> tuple[str, ...]:
    """Every torchvision classification model (`torchvision.models.list_models(module=torchvision.models)`)."""
    return tuple(tvm.list_models(module=tvm))


def is_torchvision_model(model_type: str) -> bool:
    return model_type in torchvision_models()


def torchvision_weights(model_type: str, weights: Optional[str]) -> Optional[tvm.WeightsEnum]:
    """The weights enum member of `weights` for `model_type`, or None for ``random``.

    ``imagenet``: the WSA design summary's enum for resnet18/34/50 (IMAGENET1K_V1, V1, V2), else ``DEFAULT``; ``DEFAULT`` or a
    member name (``IMAGENET1K_V1``, also spelled ``ResNet18_Weights.IMAGENET1K_V1``): that member.
    """
    if weights == "random":
        return None
    enum_cls = tvm.get_model_weights(model_type)
    members = list(enum_cls.__members__)
    if weights == "imagenet":
        return RESNETS[model_type].imagenet if model_type in RESNETS else enum_cls.DEFAULT
    if isinstance(weights, str):
        name = weights[len(enum_cls.__name__) + 1:] if weights.startswith(enum_cls.__name__ + ".") else weights
        if name in enum_cls.__members__:
            return enum_cls[name]
    close = difflib.get_close_matches(str(weights), ["imagenet", "random", *members], n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(
        f"weights must be one of imagenet, random, {', '.join(members)} for {model_type}, got {weights!r}{hint}"
    )


def weights_file_name(model_type: str, weights: str = "imagenet") -> str:
    """File name torchvision uses for `model_type`'s `weights` (e.g. resnet18-f37072fd.pth)."""
    enum = torchvision_weights(model_type, weights)
    if enum is None:
        raise ConfigError(f"{model_type} with weights: random has no weight file")
    return Path(enum.url).name


def enum_label(enum: tvm.WeightsEnum) -> str:
    """``ResNet18_Weights.IMAGENET1K_V1``."""
    return f"{type(enum).__name__}.{enum.name}"


# ---------------------------------------------------------------------------------------------- finding files
def default_weights_dir() -> Path:
    """Where torchvision's `load_state_dict_from_url` caches files: `$TORCH_HOME/hub/checkpoints`."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def candidate_paths(file_name: str, weights_path: str | None = None, weights_dir: str | None = None) -> list[Path]:
    """Where loading looks for `file_name`, in order: `weights_path` alone if set, else `weights_dir`, then the hub cache."""
    if weights_path:
        return [Path(weights_path).expanduser()]
    paths = [Path(weights_dir).expanduser() / file_name] if weights_dir else []
    hub = default_weights_dir() / file_name
    return paths + [hub] if hub not in paths else paths


def resolve_weights_file(
    model_type: str,
    weights_path: str | None = None,
    weights_dir: str | None = None,
    weights: str = "imagenet",
    override: str | None = None,
) -> Path:
    """Find the weight file of `model_type`'s `weights` on disk, or raise a one-line WeightsNotFoundError.

    `override`: the command-line override that would train without it (e.g. ``ptm.resnet18_imagenet.weights=random``).
    """
    enum = torchvision_weights(model_type, weights)
    if enum is None:
        raise ConfigError(f"{model_type} with weights: random has no weight file")
    return _find_file(model_type, enum, weights_path, weights_dir, override)


def _find_file(model_type: str, enum: tvm.WeightsEnum, weights_path: str | None, weights_dir: str | None,
               override: str | None) -> Path:
    name = Path(enum.url).name
    looked = candidate_paths(name, weights_path, weights_dir)
    for path in looked:
        if path.is_file():
            return path
    override = override or "weights=random"
    cli = model_type if enum == torchvision_weights(model_type, "imagenet") else f"{model_type}:{enum.name}"
    cli += f" --weights-dir {Path(weights_dir).expanduser()}" if weights_dir and not weights_path else ""
    raise WeightsNotFoundError(
        f"ImageNet weights for {model_type} ({enum_label(enum)}, file {name}) not found at "
        f"{', '.join(str(p) for p in looked)}. This run does not download: fetch {enum.url} on a machine with network "
        f"(`python -m wsa_lab.weights download {cli}` there) and copy it to {looked[0]}, or point "
        f"TORCH_HOME, paths.weights_dir or the PTM's weights_path at it; or train without it: `weights: random` "
        f"(on the command line: {override}), or experiment=phase2_all_random."
    )


# ---------------------------------------------------------------------------------------------- checking files
_lock = threading.Lock()
_digests: dict[str, tuple[int, int, str]] = {}  # resolved path -> (size, mtime_ns, sha256): this process's cache
_checks: dict[str, str] = {}  # resolved path -> verified | unverified | unchecked (files loaded by this process)
_warned: set[str] = set()
_cache_unwritable_noted = False


def allow_unverified() -> bool:
    """True when ``WSA_LAB_ALLOW_UNVERIFIED_WEIGHTS`` is set to 1/true/yes/on."""
    return os.environ.get(ALLOW_UNVERIFIED_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def hash_prefix(name: str) -> Optional[str]:
    """The SHA-256 prefix a torch.hub-style file name carries (``resnet18-f37072fd.pth`` -> ``f37072fd``), or None."""
    match = HASH_IN_NAME.search(name)
    return match.group(1) if match else None


def sha256_cache_file() -> Path:
    return default_weights_dir() / SHA256_CACHE_NAME


def _read_cache() -> dict[str, Any]:
    try:
        data = json.loads(sha256_cache_file().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(key: str, entry: dict[str, Any]) -> None:
    global _cache_unwritable_noted
    path = sha256_cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache()  # merge: another process may have added files meanwhile
        data[key] = entry
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # atomic: readers never see half a file
        try:
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        if not _cache_unwritable_noted:
            _cache_unwritable_noted = True
            log.info("cannot write the SHA-256 cache %s (%s); checked files are re-hashed by each process", path, exc)


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file, computed once per (path, size, mtime) and cached (in memory and on disk)."""
    path = Path(path)
    key = str(path.resolve())
    stat = path.stat()
    stamp = (stat.st_size, stat.st_mtime_ns)
    with _lock:
        hit = _digests.get(key)
        if hit is not None and hit[:2] == stamp:
            return hit[2]
        entry = _read_cache().get(key)
        if isinstance(entry, dict) and (entry.get("size"), entry.get("mtime_ns")) == stamp and isinstance(entry.get("sha256"), str):
            _digests[key] = (*stamp, entry["sha256"])
            return entry["sha256"]
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        sha = digest.hexdigest()
        _digests[key] = (*stamp, sha)
        _write_cache(key, {"size": stamp[0], "mtime_ns": stamp[1], "sha256": sha})
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
    """Clear the records of loaded files and the warnings already given (digests stay cached); for tests."""
    with _lock:
        _checks.clear()
        _warned.clear()


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def read_state_dict(path: Path, what: str, url: str | None = None, fix: str | None = None) -> Mapping[str, Any]:
    """Verify (see :func:`verify_weights_file`) and `torch.load` a state dict; anything unreadable is one line."""
    verify_weights_file(path, url)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file must not become a silent random model
        fix = fix or (f"Replace the file with {url}." if url else "Replace the file.")
        raise WeightsNotFoundError(f"could not load {what} from {path}: {_one_line(exc)}. {fix}") from exc
    if not isinstance(state, Mapping):
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


# ---------------------------------------------------------------------------------------------- torchvision models
def adapt_input_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """`conv` for `in_channels` input channels, its RGB weights spread over them (timm's `adapt_input_conv`).

    One channel: the RGB kernels summed. C channels: the RGB kernels repeated cyclically and scaled by 3 / C, so
    an input with the same value in every channel gives the same response as the RGB image did.
    """
    if in_channels == conv.in_channels:
        return conv
    weight = conv.weight.detach()
    if in_channels == 1:
        adapted = weight.sum(dim=1, keepdim=True)
    else:
        repeat = -(-in_channels // weight.shape[1])
        adapted = weight.repeat(1, repeat, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)
    new = nn.Conv2d(
        in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups,
        bias=conv.bias is not None, padding_mode=conv.padding_mode,
    )
    with torch.no_grad():
        new.weight.copy_(adapted)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def adapt_first_conv(model: nn.Module, in_channels: int) -> None:
    """Give the model's first RGB convolution (its stem) `in_channels` inputs (:func:`adapt_input_conv`)."""
    if in_channels == 3:
        return
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            _set_submodule(model, name, adapt_input_conv(module, in_channels))
            if getattr(model, "transform_input", False):  # GoogLeNet/Inception re-normalise 3 RGB channels
                model.transform_input = False
            return
    raise ConfigError(f"{type(model).__name__} has no 3-channel convolution to adapt to {in_channels} input channels")


#: Where torchvision classification models keep their classifier.
HEAD_ATTRIBUTES = ("fc", "classifier", "heads", "head")


def remove_classifier(model: nn.Module) -> int:
    """Replace the classifier's last layer by Identity; return the feature width (that layer's input width).

    The head is the first of `fc`, `classifier`, `heads`, `head` the model has. Its last `nn.Linear` (SqueezeNet,
    whose classifier has none: its last `nn.Conv2d`) becomes Identity, and what comes before it stays: the
    pre-logit layers that belong to the feature path (ConvNeXt's LayerNorm2d + Flatten, MaxViT's Linear + Tanh,
    MobileNetV3's hidden Linear, VGG's two hidden Linear layers). Removing the whole head would drop those, and
    reading the width from the removed layer needs no forward pass at any input size.
    """
    for attr in HEAD_ATTRIBUTES:
        head = getattr(model, attr, None)
        if isinstance(head, nn.Module):
            break
    else:
        raise ConfigError(f"{type(model).__name__} has none of {HEAD_ATTRIBUTES}: cannot find its classifier")
    for kind, width in ((nn.Linear, "in_features"), (nn.Conv2d, "in_channels")):
        if isinstance(head, kind):
            setattr(model, attr, nn.Identity())
            return getattr(head, width)
        layers = [(name, m) for name, m in head.named_modules() if isinstance(m, kind)]
        if layers:
            name, layer = layers[-1]
            _set_submodule(head, name, nn.Identity())
            return getattr(layer, width)
    raise ConfigError(f"{type(model).__name__}.{attr} has no Linear or Conv2d layer to remove")


def is_resnet_family(model_type: str) -> bool:
    """resnet*, resnext*, wide_resnet*: built by torchvision's ResNet class (takes `norm_layer`)."""
    return tvm.get_model_builder(model_type).__module__ == "torchvision.models.resnet"


class _FromCheckpoint(dict):
    """The state dict "served" to a torchvision builder inside `weights_from_checkpoint`: loading it does nothing."""


_FROM_CHECKPOINT = _FromCheckpoint()
_builder_lock = threading.Lock()


@contextmanager
def _serve_state_dict(enum: tvm.WeightsEnum, state: Mapping[str, Any]) -> Iterator[None]:
    """Let torchvision's builder "download" `state`: its `weights.get_state_dict()` returns it.

    The builder then constructs the model exactly as for those weights (their sizes and flags: ViT's image_size,
    Inception's transform_input, ...) and loads `state` strictly. With `_FROM_CHECKPOINT` the load is skipped
    (the caller's checkpoint fills the tensors in).
    """
    enum_cls = type(enum)
    original_load = nn.Module.load_state_dict

    def load(module: nn.Module, state_dict: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:
        if state_dict is _FROM_CHECKPOINT:
            return None
        return original_load(module, state_dict, *args, **kwargs)

    with _builder_lock:
        enum_cls.get_state_dict = lambda self, *args, **kwargs: state  # type: ignore[method-assign]
        if state is _FROM_CHECKPOINT:
            nn.Module.load_state_dict = load  # type: ignore[method-assign]
        try:
            yield
        finally:
            del enum_cls.get_state_dict  # back to WeightsEnum.get_state_dict
            nn.Module.load_state_dict = original_load  # type: ignore[method-assign]


class TorchvisionBody(NamedTuple):
    module: nn.Module  # the classifier removed: (B, C, H, W) -> (B, out_dim)
    out_dim: int
    weights: Optional[tvm.WeightsEnum]  # None: random initialisation


def build_torchvision(
    model_type: str,
    weights: Optional[str],
    weights_path: str | None = None,
    weights_dir: str | None = None,
    in_channels: int = 3,
    kwargs: Optional[Mapping[str, Any]] = None,
    override: str | None = None,
) -> TorchvisionBody:
    """Any torchvision classification model by name, offline, its classifier removed (:func:`remove_classifier`).

    Pre-trained weights: the file is found (:func:`resolve_weights_file`), checked (:func:`verify_weights_file`)
    and loaded by torchvision's own builder (so the architecture is the one the weights were made for). Its
    BatchNorm layers must be kept in eval mode (:func:`freeze_batchnorm_stats`). ``random``: torchvision's random
    initialisation (seeded by the caller); ResNet-family models get GroupNorm(32) in place of BatchNorm, as in
    the WSA design summary's arms (in PPO, batch statistics would make a state's action log-probability depend on which other states
    share its batch, and a random net has no statistics worth freezing); other architectures keep their own norm
    layers, their BatchNorm layers frozen at the initial statistics (mean 0, variance 1: a learnable affine map).
    `in_channels` other than 3 adapts the first convolution (:func:`adapt_input_conv`). `kwargs` go to the builder.
    """
    if not is_torchvision_model(model_type):
        raise ConfigError(f"unknown torchvision model {model_type!r}; see torchvision.models.list_models()")
    enum = torchvision_weights(model_type, weights)
    kwargs = dict(kwargs or {})
    try:
        if enum is None:
            if is_resnet_family(model_type):
                kwargs.setdefault("norm_layer", _group_norm_32)
            if model_type in ("googlenet", "inception_v3"):
                kwargs.setdefault("aux_logits", False)
            model = tvm.get_model(model_type, weights=None, **kwargs)
        elif checkpoint_supplies_weights():
            with _serve_state_dict(enum, _FROM_CHECKPOINT):
                model = tvm.get_model(model_type, weights=enum, **kwargs)
        else:
            path = _find_file(model_type, enum, weights_path, weights_dir, override)
            state = read_state_dict(path, f"ImageNet weights for {model_type}", enum.url)
            try:
                with _serve_state_dict(enum, state):
                    model = tvm.get_model(model_type, weights=enum, **kwargs)
            except RuntimeError as exc:  # load_state_dict: the file's tensors do not fit the model
                raise WeightsNotFoundError(
                    f"could not load ImageNet weights for {model_type} from {path}: {_one_line(exc)}. "
                    f"Replace the file with {enum.url}."
                ) from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{model_type}: torchvision rejected the model's arguments ({_one_line(exc)})") from exc
    _drop_aux_classifiers(model)
    out_dim = remove_classifier(model)
    adapt_first_conv(model, in_channels)
    return TorchvisionBody(model, out_dim, enum)


def _drop_aux_classifiers(model: nn.Module) -> None:
    """GoogLeNet/Inception v3: no auxiliary classifiers (one output, also in train mode; as torchvision does for
    GoogLeNet's weights)."""
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        for name in ("AuxLogits", "aux1", "aux2"):
            if hasattr(model, name):
                setattr(model, name, None)


def _group_norm_32(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels)


def load_resnet(
    model_type: str,
    weights: str,
    weights_path: str | None = None,
    weights_dir: str | None = None,
    in_channels: int = 3,
    override: str | None = "actor_critic.standard.weights=random",
) -> nn.Module:
    """A ResNet of the WSA design summary's table (resnet18/34/50) with `fc` = Identity; output (B, out_dim). See
    :func:`build_torchvision` (`weights`: imagenet | random | an enum member name)."""
    if model_type not in RESNETS:
        raise ConfigError(f"unknown ResNet model_type {model_type!r}; choose one of {sorted(RESNETS)}")
    return build_torchvision(model_type, weights, weights_path, weights_dir, in_channels, override=override).module


def freeze_batchnorm_stats(module: nn.Module) -> None:
    """Put every BatchNorm layer in eval mode: normalise with the stored (pre-trained or initial) statistics.

    Called after each `train()`, so a trainable backbone fine-tunes its weights (and BN's affine parameters)
    while every state is normalised the same way whatever batch it is in.
    """
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


__all__ = [
    "ALLOW_UNVERIFIED_ENV", "HashCheck", "RESNETS", "SHA256_CACHE_NAME", "TorchvisionBody", "adapt_first_conv",
    "adapt_input_conv", "allow_unverified", "build_torchvision", "candidate_paths", "check_weights_file",
    "default_weights_dir", "file_sha256", "forget_weight_checks", "freeze_batchnorm_stats", "hash_prefix",
    "is_torchvision_model", "load_module_weights", "load_resnet", "loaded_weight_files", "read_state_dict",
    "remove_classifier", "resolve_weights_file", "torchvision_models", "torchvision_weights",
    "unverified_weight_files", "verify_weights_file", "weights_file_name", "weights_from_checkpoint",
]
