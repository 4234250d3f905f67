"""torchvision models and their weights enums by name: what `model_type` and `weights` in a PTM entry mean."""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from typing import Callable, Optional

from torchvision import models as tvm

from wsa_lab.errors import ConfigError


@dataclass(frozen=True)
class ResNetEntry:
    builder: Callable[..., tvm.ResNet]
    imagenet: tvm.WeightsEnum  # the ImageNet weights used for `weights: imagenet`
    out_dim: int  # width of the pooled feature (input of the removed `fc`)


#: The Standard Actor's ResNets; `weights: imagenet` means these enum members for them.
RESNETS: dict[str, ResNetEntry] = {
    "resnet18": ResNetEntry(tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1, 512),
    "resnet34": ResNetEntry(tvm.resnet34, tvm.ResNet34_Weights.IMAGENET1K_V1, 512),
    "resnet50": ResNetEntry(tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V2, 2048),
}


@functools.lru_cache(maxsize=None)
def torchvision_models() -> tuple[str, ...]:
    """Every torchvision classification model (`torchvision.models.list_models(module=torchvision.models)`)."""
    return tuple(tvm.list_models(module=tvm))


def is_torchvision_model(model_type: str) -> bool:
    return model_type in torchvision_models()


def torchvision_weights(model_type: str, weights: Optional[str]) -> Optional[tvm.WeightsEnum]:
    """The weights enum member of `weights` for `model_type`, or None for ``random``.

    ``imagenet``: IMAGENET1K_V1, V1, V2 for resnet18/34/50 (:data:`RESNETS`), else ``DEFAULT``; ``DEFAULT`` or a
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


def enum_label(enum: tvm.WeightsEnum) -> str:
    """``ResNet18_Weights.IMAGENET1K_V1``."""
    return f"{type(enum).__name__}.{enum.name}"


def cli_name(model_type: str, enum: tvm.WeightsEnum) -> str:
    """How `python -m wsa_lab.weights` names `enum`: ``resnet18``, or ``vit_b_16:IMAGENET1K_SWAG_E2E_V1``."""
    return model_type if enum == torchvision_weights(model_type, "imagenet") else f"{model_type}:{enum.name}"
