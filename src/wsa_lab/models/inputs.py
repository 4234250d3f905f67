"""`StateInputs`: one observation batch in the layout every model reads (PyG-style flat graph + images)."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint
from torchvision.models import ResNet

from wsa_lab.envs import CoverageObs
from wsa_lab.envs.observation import knn_edge_index
from wsa_lab.models.encoders import knn_gcn_adjacency


class StateInputs(NamedTuple):
    r"""A batch of B states with N nodes each.

    `adj_t` is the GCN-normalised adjacency of the kNN graph (:func:`~wsa_lab.models.encoders.knn_gcn_adjacency`),
    built once here and shared by every GCN layer of every model that reads these states (`graph`). The edge
    list (`edge_index`) is derived from `neighbors` only when asked for: the models read `adj_t`.

    `cached_features` maps a PTM's index (its position in the extractor) to that PTM's frozen backbone
    output for these states, computed earlier (the rollout's frozen-feature cache, see
    :meth:`~wsa_lab.models.ActorCritic.frozen_features`); PTMs found there skip their backbone.

    Shapes:
        - x: :math:`(B \cdot N, F)` node features; neighbors: :math:`(B, N, k)`; batch: :math:`(B \cdot N,)`
        - image: :math:`(B, 3, H, W)` in [0, 1]; action_mask: :math:`(B, N)`; positions: :math:`(B, N, 2)`
        - adj_t: :math:`(B \cdot N, B \cdot N)` sparse CSR, or None (then `graph` is `edge_index`)
        - cached_features: ``{ptm index: (B, D_backbone)}`` or None
    """

    x: Tensor
    neighbors: Tensor
    batch: Tensor
    image: Tensor
    action_mask: Tensor
    positions: Tensor
    num_graphs: int
    num_nodes: int
    adj_t: Optional[Tensor] = None
    cached_features: Optional[dict[int, Tensor]] = None

    @property
    def edge_index(self) -> Tensor:
        """The batch's kNN edges, :math:`(2, |E|)` (as `CoverageObs.edge_index`)."""
        return knn_edge_index(self.neighbors)

    @property
    def graph(self) -> Tensor:
        """What the GCN encoders take: the prebuilt normalised adjacency, else the edge list."""
        return self.edge_index if self.adj_t is None else self.adj_t

    @classmethod
    def from_obs(
        cls, obs: CoverageObs, cached_features: Optional[dict[int, Tensor]] = None, channels_last: bool = False
    ) -> "StateInputs":
        image = obs.image.contiguous(memory_format=torch.channels_last) if channels_last else obs.image
        return cls(
            x=obs.flat_node_features(),
            neighbors=obs.neighbors,
            batch=obs.batch_vector(),
            image=image,
            action_mask=obs.action_mask,
            positions=obs.node_features[..., 3:5],  # (x, y) columns, see CoverageObs
            num_graphs=obs.batch_size,
            num_nodes=obs.num_nodes,
            adj_t=knn_gcn_adjacency(obs.neighbors),
            cached_features=cached_features,
        )


def _resnet_stem(body: ResNet, image: Tensor) -> Tensor:
    return body.maxpool(body.relu(body.bn1(body.conv1(image))))


def run_cnn(body: torch.nn.Module, image: Tensor, use_checkpoint: bool) -> Tensor:
    """Run a CNN body, trading compute for memory with gradient checkpointing when asked and useful.

    Useful = something needs gradients (the body's weights, or its input: the Standard Actor's GNN).
    A torchvision ResNet is checkpointed stage by stage (stem, layer1..layer4), so the backward pass
    holds one stage's activations at a time; one segment around the whole body would recompute all
    of them at once and save little. Other bodies are checkpointed as one segment.
    """
    needs_grad = image.requires_grad or any(p.requires_grad for p in body.parameters())
    if not (use_checkpoint and torch.is_grad_enabled() and needs_grad):
        return body(image)
    if isinstance(body, ResNet):
        x = checkpoint(_resnet_stem, body, image, use_reentrant=False)
        for stage in (body.layer1, body.layer2, body.layer3, body.layer4):
            x = checkpoint(stage, x, use_reentrant=False)
        return body.fc(torch.flatten(body.avgpool(x), 1))  # torchvision's ResNet._forward_impl tail
    return checkpoint(body, image, use_reentrant=False)
