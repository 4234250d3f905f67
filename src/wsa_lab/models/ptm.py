"""`PreTrainedModelWrapper`: one interface for every PTM, (state batch) -> feature of a common size."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsa_lab.errors import ConfigError
from wsa_lab.models.backbones import (
    CUSTOM_INPUTS,
    PYG_PREFIX,
    build_backbone,
    image_features,
    min_image_side,
    model_kind,
    pooled,
)
from wsa_lab.models.inputs import StateInputs, run_cnn
from wsa_lab.weights.load import freeze_batchnorm_stats
from wsa_lab.weights.names import torchvision_weights

# torchvision's ImageNet normalisation, applied to every torchvision model's RGB input so ImageNet and random
# arms see the same pixels.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Keys that only some kinds of PTM take (all others take every kind).
_ONLY_FOR = {
    "hidden_channels": ("pyg",),
    "num_layers": ("pyg",),
    "target": ("custom",),
    "input": ("custom",),
    "out_dim": ("custom",),
    "kwargs": ("torchvision", "pyg", "custom"),
    "weights_path": ("torchvision", "pyg", "graph_cnn", "custom"),
}
_KIND_LABEL = {"torchvision": "torchvision models", "pyg": f"{PYG_PREFIX}* models", "graph_cnn": "graph_cnn",
               "custom": "model_type: custom"}


@dataclass
class PTMSpec:
    """One entry of `actor_critic.wsa.pretrained_models` (a `conf/ptm/*.yaml` file).

    `model_type` picks the kind (see :mod:`wsa_lab.models.backbones`): a torchvision classification model by
    name, ``pyg:<Name>`` (PyG's model zoo), ``graph_cnn`` or ``custom``.
    """

    name: str  # label used in logs (wsa/attention/<name>)
    model_type: str  # torchvision name (resnet18, convnext_tiny, ...) | pyg:<GCN|GAT|...> | graph_cnn | custom
    # torchvision: imagenet | DEFAULT | an enum member (IMAGENET1K_V1) | random; graph PTMs, custom: null | random
    weights: Optional[str] = None
    freeze_backbone: bool = False  # true: no gradients, eval mode (the frozen-feature cache applies)
    # pre-trained torchvision weights: the enum's file elsewhere; `weights: random` torchvision, graph_cnn, pyg, custom: a
    # state dict of your own for the architecture (e.g. from python -m wsa_lab.pretrain), loaded strictly
    weights_path: Optional[str] = None
    kwargs: Optional[dict] = None  # extra constructor arguments (torchvision builder, PyG model, custom callable)
    hidden_channels: Optional[int] = None  # pyg: width; null = actor_critic.graph_cnn_hidden_dim
    num_layers: Optional[int] = None  # pyg: message-passing layers; null = 3 (as graph_cnn)
    # custom: dotted path of a callable returning an nn.Module (not `_target_`: Hydra would call it while it
    # instantiates actor_critic)
    target: Optional[str] = None
    input: Optional[str] = None  # custom: image | graph (what the module reads)
    out_dim: Optional[int] = None  # custom: feature width it returns (checked); null = found by a test forward
    image_size: Optional[int] = None  # image PTMs: resize images to this side (default: the model's own need)
    made_by: Optional[str] = None  # the command that makes weights_path (e.g. python -m wsa_lab.pretrain ...): named if it is missing

    def __post_init__(self) -> None:
        where = f"PTM {self.name!r}: "
        kind = model_kind(self.model_type, where)
        for key, kinds in _ONLY_FOR.items():
            if getattr(self, key) is not None and kind not in kinds:
                raise ConfigError(f"{where}{key} is only for {' and '.join(_KIND_LABEL[k] for k in kinds)}, not {self.model_type}")
        for key in ("hidden_channels", "num_layers", "out_dim", "image_size"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{where}{key} must be a positive integer, got {value!r}")
        if kind == "torchvision":
            try:
                torchvision_weights(self.model_type, self.weights)
            except ConfigError as exc:
                raise ConfigError(f"{where}{exc}") from None
            return
        if self.weights not in (None, "random"):
            own = "" if kind == "graph_cnn" else " (a state dict of your own: weights_path)"
            raise ConfigError(
                f"{where}{self.model_type} has no pre-trained weights (got weights: {self.weights}); use weights: null{own}"
            )
        if kind == "custom":
            if not self.target:
                raise ConfigError(f"{where}model_type: custom needs target: <package.module.callable> returning an nn.Module")
            if self.input not in CUSTOM_INPUTS:
                raise ConfigError(f"{where}model_type: custom needs input: image or input: graph (what it reads), got {self.input!r}")
            if self.input == "graph" and self.image_size is not None:
                raise ConfigError(f"{where}image_size is only for PTMs that read images")
        elif self.image_size is not None:
            raise ConfigError(f"{where}image_size is only for PTMs that read images, not {self.model_type}")

    @property
    def kind(self) -> str:
        """torchvision | pyg | graph_cnn | custom."""
        return model_kind(self.model_type)

    @property
    def reads_image(self) -> bool:
        """True for PTMs that read `StateInputs.image` (torchvision models, custom with input: image)."""
        kind = self.kind
        return kind == "torchvision" or (kind == "custom" and self.input == "image")

    @property
    def min_image_side(self) -> int:
        """Smallest image side it takes as is (32 for CNNs; 1 for PTMs that resize or read what they get)."""
        return 1 if self.image_size else min_image_side(self.kind, self.model_type, self.weights)


class PreTrainedModelWrapper(nn.Module):
    r"""A backbone (torchvision model, PyG model, Graph-CNN or a researcher's module) + a trainable adapter.

    The adapter maps every backbone to the same `feature_dim`, so the attention can mix them.
    A frozen backbone runs under `no_grad` and stays in eval mode whatever `train()` says; a trainable
    backbone keeps its BatchNorm statistics fixed (see :func:`~wsa_lab.weights.load.build_torchvision`).
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
        graph_hidden_dim: int,
        weights_dir: str | None,
        checkpoint_min_nodes: int,
        image_channels: int,
        image_size: int | None,
        edge_dim: int,
        adapter: str,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.checkpoint_min_nodes = checkpoint_min_nodes
        built = build_backbone(
            spec, node_feature_dim=node_feature_dim, edge_dim=edge_dim, image_channels=image_channels,
            image_size=image_size, graph_hidden_dim=graph_hidden_dim, weights_dir=weights_dir,
        )
        self.backbone = built.module
        self.kind = built.kind
        self.is_image = built.reads_image
        self.out_dim = built.out_dim  # the backbone's feature width (the adapter's input)
        self.resize_to = built.resize_to
        self.normalize = built.normalize
        self.per_node = built.per_node
        self.graph_kwargs = built.graph_kwargs
        if self.normalize:
            # ImageNet normalisation for RGB images; other channel counts (rasterised node features) pass as they are
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, -1, 1, 1), persistent=False)
        if spec.freeze_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()
        self.adapter = make_adapter(self.out_dim, feature_dim, adapter)

    @property
    def frozen(self) -> bool:
        return self.spec.freeze_backbone

    def train(self, mode: bool = True) -> "PreTrainedModelWrapper":
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        else:
            freeze_batchnorm_stats(self.backbone)  # no batch statistics in PPO (see build_torchvision)
        return self

    def backbone_features(self, inputs: StateInputs) -> Tensor:
        """The backbone's output before the adapter, :math:`(B, D_{backbone})`."""
        with torch.no_grad() if self.frozen else nullcontext():
            if self.is_image:
                return self._image_features(inputs)
            if self.kind == "graph_cnn":
                return self.backbone(inputs.x, inputs.graph, inputs.batch, inputs.num_graphs)
            return self._graph_features(inputs)

    def _image_features(self, inputs: StateInputs) -> Tensor:
        image = inputs.image
        if self.normalize:
            image = (image - self.mean) / self.std
        if self.resize_to is not None and tuple(image.shape[-2:]) != self.resize_to:
            image = F.interpolate(image, size=self.resize_to, mode="bilinear", align_corners=False)
        use_ckpt = inputs.max_graph_nodes > self.checkpoint_min_nodes
        return image_features(run_cnn(self.backbone, image, use_ckpt))

    def _graph_features(self, inputs: StateInputs) -> Tensor:
        """PyG and custom graph modules, in float32 (like the GCN stacks: sparse ops want one dtype)."""
        h = self._graph_module(inputs, inputs.x)
        return pooled(h, inputs.batch, inputs.num_graphs) if self.per_node else h

    def node_embeddings(self, inputs: StateInputs, x: Optional[Tensor] = None) -> Tensor:
        """Per-node embeddings before the per-graph pooling, :math:`(|V|, H)`, for node features `x` (default:
        the observation's); for graph_cnn, PyG models and per-node custom modules (graph pre-training reads them)."""
        x = inputs.x if x is None else x
        if self.kind == "graph_cnn":
            return self.backbone.gnn(x, inputs.graph)
        if self.is_image or not self.per_node:
            raise ConfigError(f"PTM {self.spec.name!r} ({self.spec.model_type}) has no per-node embeddings")
        return self._graph_module(inputs, x)

    def _graph_module(self, inputs: StateInputs, x: Tensor) -> Tensor:
        available: dict[str, Any] = {
            "batch": inputs.batch, "num_graphs": inputs.num_graphs,
            "edge_attr": None if inputs.edge_attr is None else inputs.edge_attr.float(),
        }
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            extra = {k: available[k] for k in self.graph_kwargs}
            if self.kind == "pyg":  # BasicGNN.forward(x, edge_index, ..., edge_attr=, batch=, batch_size=)
                return self.backbone(x, inputs.edge_index, batch_size=inputs.num_graphs, **extra)
            return self.backbone(x, inputs.edge_index, inputs.batch, **extra)  # module(x, edge_index, batch[, ...])

    def backbone_output(self, inputs: StateInputs, cached: Optional[Tensor] = None) -> Tensor:
        """The backbone's output for `inputs`: `cached` (this frozen PTM's output computed earlier), else computed."""
        if cached is None:
            return self.backbone_features(inputs)
        if not self.frozen:  # a trainable backbone's output changes with every update: never cache it
            raise ValueError(f"PTM {self.spec.name!r} is trainable; only frozen backbone features can be cached")
        return cached

    def forward(self, inputs: StateInputs, cached: Optional[Tensor] = None) -> Tensor:
        """Adapted feature :math:`(B, F)`; `cached` = this (frozen) PTM's backbone output for `inputs`."""
        return self.adapter(self.backbone_output(inputs, cached))


#: `actor_critic.wsa.adapter`: the trainable map from a backbone's output to the common feature size.
ADAPTERS = ("relu", "layernorm")


def make_adapter(in_dim: int, out_dim: int, kind: str = "relu") -> nn.Sequential:
    """``relu``: Linear + ReLU (wsa_lab's default); ``layernorm``: Linear + LayerNorm + ReLU (the WSA paper's code,
    EliaPiccoli/PufferLib ``WSA``: it puts every PTM's feature on the same scale before the attention mixes them)."""
    if kind == "relu":
        return nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU())
    if kind == "layernorm":
        return nn.Sequential(nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim), nn.ReLU())
    raise ConfigError(f"actor_critic.wsa.adapter must be one of {list(ADAPTERS)}, got {kind!r}")
