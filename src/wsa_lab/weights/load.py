"""Any torchvision classification model by name, its verified weights loaded, its classifier removed.

torchvision's builders fetch their weights themselves (``get_model(name, weights=enum)``); here the file comes
from :mod:`wsa_lab.weights.files` (found on disk or downloaded, and verified), so the model is built with
``weights=None`` plus the constructor arguments torchvision's builders derive from the enum
(:func:`builder_kwargs`), and the checked state dict is loaded with `load_state_dict`: the same model, from the
same random draws, as ``get_model(name, weights=enum)`` gives.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator, NamedTuple, Optional

import torch
from torch import nn
from torchvision import models as tvm

from wsa_lab.errors import ConfigError, WeightsNotFoundError
from wsa_lab.weights.files import one_line, read_state_dict, weights_file, weights_url
from wsa_lab.weights.names import RESNETS, is_torchvision_model, torchvision_weights

# True only while `weights_from_checkpoint` rebuilds a trained agent (see there).
_CHECKPOINT_SUPPLIES_WEIGHTS: ContextVar[bool] = ContextVar("checkpoint_supplies_weights", default=False)
#: torch's BatchNorm layers (the lazy ones become BatchNorm*d once materialised).
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
#: DenseNet files name some tensors the old way (``denselayer1.norm.1.weight``); torchvision's builder renames them.
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


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


def builder_kwargs(model_type: str, enum: tvm.WeightsEnum, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """`kwargs` plus what torchvision's builder of `model_type` sets for pre-trained `enum` (each builder's
    ``if weights is not None`` branch): ``num_classes`` from the enum's categories; ViT's ``image_size`` and
    MaxViT's ``input_size`` from its ``min_size``; GoogLeNet/Inception's ``transform_input`` (default True),
    ``aux_logits`` and ``init_weights``; VGG's ``init_weights``. A `kwargs` value that contradicts the weights is a
    ValueError, as in torchvision."""
    out = dict(kwargs)
    family = tvm.get_model_builder(model_type).__module__.rpartition(".")[2]
    if family == "vgg":
        out["init_weights"] = False  # torchvision's VGG builder overrides it without asking
    elif model_type in ("googlenet", "inception_v3"):
        out.setdefault("transform_input", True)
        _require(out, "aux_logits", True)
        _require(out, "init_weights", False)
    if enum.meta.get("categories") is not None:
        _require(out, "num_classes", len(enum.meta["categories"]))
    if family == "vision_transformer":
        _require(out, "image_size", enum.meta["min_size"][0])
    elif family == "maxvit":
        _require(out, "input_size", enum.meta["min_size"])
    return out


def _require(kwargs: dict[str, Any], name: str, value: Any) -> None:
    if name in kwargs and kwargs[name] != value:
        raise ValueError(f"{name} must be {value} for these weights, got {kwargs[name]}")
    kwargs[name] = value


def load_pretrained(model: nn.Module, state: MutableMapping[str, Any]) -> None:
    """`model.load_state_dict(state)` (strict) as torchvision's builders load: DenseNet's old key names renamed."""
    if isinstance(model, tvm.DenseNet):
        for key in list(state):
            match = _DENSENET_OLD_KEY.match(key)
            if match:
                state[match.group(1) + match.group(2)] = state.pop(key)
    model.load_state_dict(state)


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
    """Any torchvision classification model by name, its classifier removed (:func:`remove_classifier`).

    Pre-trained weights: the file is found or downloaded (:func:`~wsa_lab.weights.files.weights_file`), checked
    (:func:`~wsa_lab.weights.checks.verify_weights_file`) and loaded into the architecture torchvision builds for
    those weights (:func:`builder_kwargs`); inside :func:`weights_from_checkpoint` the file is not read. Its
    BatchNorm layers must be kept in eval mode (:func:`freeze_batchnorm_stats`). ``random``: torchvision's random
    initialisation (seeded by the caller); ResNet-family models get GroupNorm(32) in place of BatchNorm (in PPO,
    batch statistics would make a state's action log-probability depend on which other states share its batch,
    and a random net has no statistics worth freezing); other architectures keep their own norm layers, their
    BatchNorm layers frozen at the initial statistics (mean 0, variance 1: a learnable affine map).
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
        else:
            state = path = None
            if not checkpoint_supplies_weights():
                path = weights_file(model_type, enum, weights_path, weights_dir, override)
                state = read_state_dict(path, f"ImageNet weights for {model_type}", weights_url(enum))
            model = tvm.get_model(model_type, weights=None, **builder_kwargs(model_type, enum, kwargs))
            try:
                if state is not None:
                    load_pretrained(model, state)
            except RuntimeError as exc:  # load_state_dict: the file's tensors do not fit the model
                raise WeightsNotFoundError(
                    f"could not load ImageNet weights for {model_type} from {path}: {one_line(exc)}. "
                    f"Replace the file with {weights_url(enum)}."
                ) from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{model_type}: torchvision rejected the model's arguments ({one_line(exc)})") from exc
    drop_aux_classifiers(model)
    out_dim = remove_classifier(model)
    adapt_first_conv(model, in_channels)
    return TorchvisionBody(model, out_dim, enum)


def drop_aux_classifiers(model: nn.Module) -> None:
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
    """A ResNet of :data:`~wsa_lab.weights.names.RESNETS` (the Standard Actor's) with `fc` = Identity; output
    (B, out_dim). See
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
        if isinstance(m, BATCH_NORMS):
            m.eval()


