"""`PreTrainedModelWrapper`: one interface for every PTM, (state batch) -> feature of a common size."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from wsa_lab.errors import ConfigError
from wsa_lab.models.encoders import GraphCNN
from wsa_lab.models.inputs import StateInputs, run_cnn
from wsa_lab.models.weights import GRAPH_TYPES, MODEL_TYPES, RESNETS, WEIGHT_CHOICES, freeze_batchnorm_stats, load_resnet

# torchvision's ImageNet normalisation, applied to every ResNet input so ImageNet and random arms see
# the same pixels.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class PTMSpec:
    """One entry of `actor_critic.wsa.pretrained_models` (the seed's YAML block)."""

    name: str  # label used in logs (wsa/attention/<name>)
    model_type: str  # resnet18 | resnet34 | resnet50 | graph_cnn
    weights: Optional[str] = None  # imagenet | random (ResNets); null or random (graph_cnn)
    freeze_backbone: bool = False  # true: no gradients, BatchNorm in eval mode
    weights_path: Optional[str] = None  # explicit ImageNet state-dict file; default: torch hub cache

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ConfigError(f"PTM {self.name!r}: unknown model_type {self.model_type!r}; choose one of {list(MODEL_TYPES)}")
        if self.model_type in GRAPH_TYPES:
            if self.weights not in (None, "random"):
                raise ConfigError(
                    f"PTM {self.name!r}: {self.model_type} has no pre-trained weights (got weights: {self.weights}); "
                    "use weights: null"
                )
            if self.weights_path:
                raise ConfigError(f"PTM {self.name!r}: weights_path is only for ResNets with weights: imagenet")
        elif self.weights not in WEIGHT_CHOICES:
            raise ConfigError(f"PTM {self.name!r}: weights must be one of {list(WEIGHT_CHOICES)} for {self.model_type}, got {self.weights!r}")
        elif self.weights_path and self.weights != "imagenet":
            raise ConfigError(f"PTM {self.name!r}: weights_path is set but weights is {self.weights!r}; use weights: imagenet")


class PreTrainedModelWrapper(nn.Module):
    r"""A backbone (ResNet on the rendered image, or Graph-CNN on the graph) + a trainable adapter.

    The adapter maps every backbone to the same `feature_dim`, so the attention can mix them.
    A frozen backbone runs under `no_grad` and stays in eval mode whatever `train()` says; a trainable
    ImageNet backbone keeps its BatchNorm statistics fixed (see :func:`~wsa_lab.models.weights.load_resnet`).
    A frozen backbone's output is therefore a fixed function of the state: PPO computes it once per env
    step and passes it back as `cached` in the update epochs (the frozen-feature cache).

    Shapes:
        - input: :class:`StateInputs` of B states
        - output: :math:`(B, F)` with :math:`F` = `feature_dim`
    """

    def __init__(
        self,
        spec: PTMSpec,
        feature_dim: int,
        node_feature_dim: int,
        graph_hidden_dim: int = 64,
        weights_dir: str | None = None,
        checkpoint_min_nodes: int = 500,
        image_channels: int = 3,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.is_image = spec.model_type in RESNETS
        self.checkpoint_min_nodes = checkpoint_min_nodes
        if self.is_image:
            self.backbone = load_resnet(spec.model_type, spec.weights, spec.weights_path, weights_dir, image_channels)
            out_dim = RESNETS[spec.model_type].out_dim
            # ImageNet normalisation for RGB images; other channel counts (rasterised node features) pass as they are
            mean, std = (IMAGENET_MEAN, IMAGENET_STD) if image_channels == 3 else ((0.0,) * image_channels, (1.0,) * image_channels)
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        else:
            self.backbone = GraphCNN(node_feature_dim, graph_hidden_dim)
            out_dim = self.backbone.out_dim
        if spec.freeze_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()
        self.adapter = nn.Sequential(nn.Linear(out_dim, feature_dim), nn.ReLU())

    @property
    def frozen(self) -> bool:
        return self.spec.freeze_backbone

    def train(self, mode: bool = True) -> "PreTrainedModelWrapper":
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        else:
            freeze_batchnorm_stats(self.backbone)  # see load_resnet: no batch statistics in PPO
        return self

    def backbone_features(self, inputs: StateInputs) -> Tensor:
        """The backbone's output before the adapter, :math:`(B, D_{backbone})`."""
        with torch.no_grad() if self.frozen else nullcontext():
            if self.is_image:
                image = (inputs.image - self.mean) / self.std
                use_ckpt = inputs.max_graph_nodes > self.checkpoint_min_nodes
                return run_cnn(self.backbone, image, use_ckpt)
            return self.backbone(inputs.x, inputs.graph, inputs.batch, inputs.num_graphs)

    def forward(self, inputs: StateInputs, cached: Optional[Tensor] = None) -> Tensor:
        """Adapted feature :math:`(B, F)`; `cached` = this (frozen) PTM's backbone output for `inputs`."""
        if cached is None:
            return self.adapter(self.backbone_features(inputs))
        if not self.frozen:  # a trainable backbone's output changes with every update: never cache it
            raise ValueError(f"PTM {self.spec.name!r} is trainable; only frozen backbone features can be cached")
        return self.adapter(cached)
