"""`StateInputs`: one observation batch as every model reads it (PyG-style flat graph + one image per graph)."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint
from torchvision.models import ResNet

from wsa_lab.contract import GraphBatch
from wsa_lab.models.encoders import batch_gcn_adjacency


def rasterise_nodes(values: Tensor, positions: Tensor, batch: Tensor, num_graphs: int, grid_size: int) -> Tensor:
    r"""Average node values into one square grid per graph by node position (empty cells are 0).

    Row index follows y, column index follows x.

    Shapes:
        - input: values :math:`(|V|, C)`, positions :math:`(|V|, 2)` in [0, 1], batch :math:`(|V|,)`
        - output: :math:`(G, C, H, W)` with H = W = `grid_size`
    """
    channels = values.shape[-1]
    cell = (positions * grid_size).long().clamp_(0, grid_size - 1)
    flat = batch * (grid_size * grid_size) + cell[:, 1] * grid_size + cell[:, 0]
    cells = num_graphs * grid_size * grid_size
    sums = values.new_zeros(cells, channels).index_add_(0, flat, values)
    counts = values.new_zeros(cells).index_add_(0, flat, values.new_ones(values.shape[0]))
    grid = sums / counts.clamp(min=1).unsqueeze(-1)
    return grid.view(num_graphs, grid_size, grid_size, channels).permute(0, 3, 1, 2)


class StateInputs(NamedTuple):
    r"""A batch of G states (graphs of any sizes) in the layout the models read.

    `adj_t` is the GCN-normalised adjacency (:func:`~wsa_lab.models.encoders.batch_gcn_adjacency`), built once
    here and shared by every GCN layer of every model that reads these states (`graph`).

    `image` is what image PTMs read: the env's image, or, for an env without one, the node features
    rasterised at the node positions (:func:`rasterise_nodes`); None when no model reads an image.

    `cached_features` maps a PTM's index (its position in the extractor) to that PTM's frozen backbone
    output for these states, computed earlier (the rollout's frozen-feature cache, see
    :meth:`~wsa_lab.models.ActorCritic.frozen_features`); PTMs found there skip their backbone.

    Shapes:
        - x: :math:`(|V|, F)`; edge_index: :math:`(2, |E|)`; edge_attr: :math:`(|E|, D)` or None
        - batch: :math:`(|V|,)`; ptr: :math:`(G + 1,)`; action_mask: :math:`(|V|,)`; positions: :math:`(|V|, 2)` or None
        - image: :math:`(G, C, H, W)` or None
        - adj_t: :math:`(|V|, |V|)` sparse CSR, or None (then `graph` is `edge_index`)
        - cached_features: ``{ptm index: (G, D_backbone)}`` or None
    """

    x: Tensor
    edge_index: Tensor
    edge_attr: Optional[Tensor]
    batch: Tensor
    ptr: Tensor
    action_mask: Tensor
    positions: Optional[Tensor]
    image: Optional[Tensor]
    num_graphs: int
    max_graph_nodes: int  # nodes of the largest graph (gradient checkpointing switches on above a size)
    adj_t: Optional[Tensor] = None
    cached_features: Optional[dict[int, Tensor]] = None

    @property
    def graph(self) -> Tensor:
        """What the GCN encoders take: the prebuilt normalised adjacency, else the edge list."""
        return self.edge_index if self.adj_t is None else self.adj_t

    @classmethod
    def from_batch(
        cls,
        obs: GraphBatch,
        cached_features: Optional[dict[int, Tensor]] = None,
        channels_last: bool = False,
        raster_size: Optional[int] = None,
    ) -> "StateInputs":
        """`raster_size`: rasterise the node features into images of this side (an env without an image whose
        image PTMs need one); None: use the env's image (or none)."""
        image = obs.image
        if raster_size is not None:
            image = rasterise_nodes(obs.x, obs.positions, obs.batch, obs.num_graphs, raster_size)
        if image is not None and channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        largest = obs.uniform_size if obs.uniform_size is not None else int(obs.nodes_per_graph.max())
        return cls(
            x=obs.x,
            edge_index=obs.edge_index,
            edge_attr=obs.edge_attr,
            batch=obs.batch,
            ptr=obs.ptr,
            action_mask=obs.action_mask,
            positions=obs.positions,
            image=image,
            num_graphs=obs.num_graphs,
            max_graph_nodes=largest,
            adj_t=batch_gcn_adjacency(obs),
            cached_features=cached_features,
        )


    @classmethod
    def of_images(cls, image: Tensor) -> "StateInputs":
        """Inputs that hold images only (image PTMs read nothing else), e.g. for pre-training on stored images."""
        graphs = image.shape[0]
        empty = image.new_zeros(0, 1)
        none = torch.zeros(0, dtype=torch.long, device=image.device)
        return cls(
            x=empty, edge_index=none.view(2, 0), edge_attr=None, batch=none, ptr=torch.zeros(graphs + 1, dtype=torch.long),
            action_mask=none.bool(), positions=None, image=image, num_graphs=graphs, max_graph_nodes=0,
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
