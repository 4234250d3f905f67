"""The two actors the ablations compare: `StandardActor` (GNN -> grid -> ResNet18) and `WSAEnhancedActor`."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

from wsa_lab.models.encoders import StateEncoder
from wsa_lab.models.fusion import FusedFeatures, MultiPTMFeatureExtractor
from wsa_lab.models.inputs import StateInputs, rasterise_nodes, run_cnn
from wsa_lab.models.ptm import IMAGENET_MEAN, IMAGENET_STD
from wsa_lab.weights.load import freeze_batchnorm_stats, load_resnet
from wsa_lab.weights.names import RESNETS


class ActorFeatures(NamedTuple):
    node_emb: Tensor  # (|V|, D) per-node embeddings for the node head
    global_feat: Tensor  # (G, Z) state-level features for the continuous head and the critic
    fusion: Optional[FusedFeatures]  # WSA internals (attention weights, PTM features); None for Standard


class StandardActor(nn.Module):
    r"""The Standard Actor (the no-WSA baseline of phase 1): GNN node embeddings rasterised to a grid, read by one ResNet.

    Node embeddings are projected to 3 channels (so ImageNet weights apply unchanged), averaged into a
    `grid_size` grid by node position, normalised like ImageNet images and passed through the ResNet.
    Gradients reach the GNN through the ResNet even when its weights are frozen. The arguments are keys of
    `actor_critic` (and `actor_critic.standard`) in conf/actor_critic/default.yaml, where their defaults live.

    Shapes:
        - input: :class:`StateInputs`
        - output: :class:`ActorFeatures` with D = `hidden_dim`, G = `context_dim + feature_dim`
    """

    def __init__(
        self,
        encoder: StateEncoder,
        grid_size: int,
        feature_dim: int,
        model_type: str,
        weights: str,
        freeze_backbone: bool,
        weights_path: Optional[str],
        weights_dir: Optional[str],
        checkpoint_min_nodes: int,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.grid_size = grid_size
        self.checkpoint_min_nodes = checkpoint_min_nodes
        self.to_rgb = nn.Linear(encoder.out_dim, 3)
        self.cnn = load_resnet(model_type, weights, weights_path, weights_dir)
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            self.cnn.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.adapter = nn.Sequential(nn.Linear(RESNETS[model_type].out_dim, feature_dim), nn.ReLU())
        self.global_dim = encoder.context_dim + feature_dim
        self.channels_last = False  # NHWC grid for the CNN; set by ActorCritic on a GPU (actor_critic.gpu)

    def train(self, mode: bool = True) -> "StandardActor":
        super().train(mode)
        freeze_batchnorm_stats(self.cnn)  # see load_resnet: no batch statistics in PPO
        return self

    def forward(self, inputs: StateInputs) -> ActorFeatures:
        node_emb, context = self.encoder(inputs.x, inputs.graph, inputs.batch, inputs.num_graphs)
        # float32: under bf16 autocast, per-cell counts of large graphs would lose precision
        rgb = torch.sigmoid(self.to_rgb(node_emb)).float()
        grid = rasterise_nodes(rgb, inputs.positions, inputs.batch, inputs.num_graphs, self.grid_size)
        grid = (grid - self.mean) / self.std
        if self.channels_last:
            grid = grid.contiguous(memory_format=torch.channels_last)
        feat = self.adapter(run_cnn(self.cnn, grid, inputs.max_graph_nodes > self.checkpoint_min_nodes))
        return ActorFeatures(node_emb, torch.cat([context, feat], dim=-1), None)


class WSAEnhancedActor(nn.Module):
    r"""The WSA-Enhanced Actor: the state context weights several PTMs through shared attention.

    ``StateEncoder`` -> node embeddings + context; ``MultiPTMFeatureExtractor`` -> PTM features fused
    by :class:`~wsa_lab.models.attention.WeightSharingAttention` (or `mean` / `concat`).

    Shapes:
        - input: :class:`StateInputs`
        - output: :class:`ActorFeatures` with G = `context_dim + extractor.out_dim`
    """

    def __init__(self, encoder: StateEncoder, extractor: MultiPTMFeatureExtractor) -> None:
        super().__init__()
        self.encoder = encoder
        self.extractor = extractor
        self.global_dim = encoder.context_dim + extractor.out_dim

    def forward(self, inputs: StateInputs) -> ActorFeatures:
        node_emb, context = self.encoder(inputs.x, inputs.graph, inputs.batch, inputs.num_graphs)
        fused = self.extractor(inputs, context)
        return ActorFeatures(node_emb, torch.cat([context, fused.fused], dim=-1), fused)
