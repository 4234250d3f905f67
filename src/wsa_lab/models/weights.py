"""Backbone registry: `model_type` + `weights` -> a torchvision ResNet, loaded offline.

Every pre-trained file goes through `load_resnet`; nothing else in wsa_lab reads weights from disk.
ImageNet weights come from torchvision's weights API (its enum names the file and its checksum prefix).
At run time there is no download: the file is taken from an explicit `weights_path`, else from the
torch hub cache (`$TORCH_HOME/hub/checkpoints/`), and a missing file is an error that says where to put
it. Never falls back to random weights.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn
from torchvision import models as tvm

from wsa_lab.errors import ConfigError, WeightsNotFoundError


@dataclass(frozen=True)
class ResNetEntry:
    builder: Callable[..., tvm.ResNet]
    imagenet: tvm.WeightsEnum  # the ImageNet weights used for `weights: imagenet`
    out_dim: int  # width of the pooled feature (input of the removed `fc`)


RESNETS: dict[str, ResNetEntry] = {
    "resnet18": ResNetEntry(tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1, 512),
    "resnet34": ResNetEntry(tvm.resnet34, tvm.ResNet34_Weights.IMAGENET1K_V1, 512),
    "resnet50": ResNetEntry(tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V2, 2048),
}
GRAPH_TYPES = ("graph_cnn",)
MODEL_TYPES = tuple(RESNETS) + GRAPH_TYPES
WEIGHT_CHOICES = ("imagenet", "random")


# True only while `weights_from_checkpoint` rebuilds a trained agent (see there).
_CHECKPOINT_SUPPLIES_WEIGHTS: ContextVar[bool] = ContextVar("checkpoint_supplies_weights", default=False)


@contextmanager
def weights_from_checkpoint() -> Iterator[None]:
    """Build agents whose ImageNet ResNets are not read from disk, for a checkpoint to fill in.

    A trained agent's checkpoint holds every parameter and buffer, the frozen ImageNet backbones included, so
    evaluating it needs no weight file. Inside this block `weights: imagenet` builds the ImageNet architecture
    (BatchNorm) without loading the file; the caller must then `load_state_dict(..., strict=True)`, which fails
    on any missing tensor, so nothing ends up with random weights.
    """
    token = _CHECKPOINT_SUPPLIES_WEIGHTS.set(True)
    try:
        yield
    finally:
        _CHECKPOINT_SUPPLIES_WEIGHTS.reset(token)


def weights_file_name(model_type: str) -> str:
    """File name torchvision uses for the ImageNet weights of `model_type` (e.g. resnet18-f37072fd.pth)."""
    return Path(RESNETS[model_type].imagenet.url).name


def default_weights_dir() -> Path:
    """Where torchvision's `load_state_dict_from_url` caches files: `$TORCH_HOME/hub/checkpoints`."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_weights_file(model_type: str, weights_path: str | None = None, weights_dir: str | None = None) -> Path:
    """Find the ImageNet weight file for `model_type` on disk, or raise WeightsNotFoundError with instructions."""
    entry = RESNETS[model_type].imagenet
    if weights_path:
        path = Path(weights_path).expanduser()
    else:
        folder = Path(weights_dir).expanduser() if weights_dir else default_weights_dir()
        path = folder / weights_file_name(model_type)
    if path.is_file():
        return path
    raise WeightsNotFoundError(
        f"ImageNet weights for {model_type} not found at {path}. This run does not download: put the file "
        f"there (download {entry.url} on a machine with network, or run `python -m wsa_lab.weights download "
        f"{model_type}` there and copy {default_weights_dir()}), or set the PTM's `weights_path`, "
        f"or use `weights: random`."
    )


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
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None)
    with torch.no_grad():
        new.weight.copy_(adapted)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def load_resnet(
    model_type: str,
    weights: str,
    weights_path: str | None = None,
    weights_dir: str | None = None,
    in_channels: int = 3,
) -> nn.Module:
    """Build a torchvision ResNet with its classifier removed (`fc` = Identity); output (B, out_dim).

    `in_channels` other than 3 (an image of rasterised node features) adapts the first convolution
    (:func:`adapt_input_conv`).

    `weights="imagenet"` loads the torchvision ImageNet state dict from disk (see module docstring); its
    BatchNorm layers must be kept in eval mode (`freeze_batchnorm_stats`). `weights="random"` keeps
    torchvision's random initialisation (seeded by the caller) with GroupNorm(32) in place of BatchNorm:
    in PPO, batch statistics would make a state's action log-probability depend on which other states
    share its batch (rollout vs minibatch), and a random net has no statistics worth freezing.
    """
    if model_type not in RESNETS:
        raise ConfigError(f"unknown ResNet model_type {model_type!r}; choose one of {sorted(RESNETS)}")
    if weights not in WEIGHT_CHOICES:
        raise ConfigError(f"{model_type}: weights must be one of {WEIGHT_CHOICES}, got {weights!r}")
    if weights == "random":
        model = RESNETS[model_type].builder(weights=None, norm_layer=lambda channels: nn.GroupNorm(32, channels))
    else:
        model = RESNETS[model_type].builder(weights=None)
        if not _CHECKPOINT_SUPPLIES_WEIGHTS.get():  # else the caller's strict checkpoint load fills it in
            path = resolve_weights_file(model_type, weights_path, weights_dir)
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                model.load_state_dict(state)
            except Exception as exc:  # a truncated or foreign file must not become a silent random model
                raise WeightsNotFoundError(
                    f"could not load ImageNet weights for {model_type} from {path}: {exc}. "
                    f"Replace the file with {RESNETS[model_type].imagenet.url}."
                ) from exc
    model.fc = nn.Identity()
    model.conv1 = adapt_input_conv(model.conv1, in_channels)
    return model


def freeze_batchnorm_stats(module: nn.Module) -> None:
    """Put every BatchNorm layer in eval mode: normalise with the stored (ImageNet) statistics.

    Called after each `train()`, so a trainable ImageNet ResNet fine-tunes its weights (and BN's affine
    parameters) while every state is normalised the same way whatever batch it is in.
    """
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
