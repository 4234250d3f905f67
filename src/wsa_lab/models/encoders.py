"""Graph encoders: the `StateEncoder` (state context for attention and heads) and the Graph-CNN PTM body."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.nn import GCNConv, global_max_pool, global_mean_pool


class GCNStack(nn.Module):
    r"""`num_layers` GCNConv layers with ReLU and a residual connection after the first.

    Shapes:
        - input: node features :math:`(|V|, F_{in})`, edge_index :math:`(2, |E|)`
        - output: node embeddings :math:`(|V|, F_{hid})`
    """

    def __init__(self, in_channels: int, hidden_channels: int, num_layers: int = 2) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.input = nn.Linear(in_channels, hidden_channels)
        self.convs = nn.ModuleList(GCNConv(hidden_channels, hidden_channels) for _ in range(num_layers))

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        h = torch.relu(self.input(x))
        for conv in self.convs:
            h = h + torch.relu(conv(h, edge_index))  # residual: keeps each node's own features visible
        return h


class StateEncoder(nn.Module):
    r"""GNN over the state graph -> per-node embeddings and a pooled state context.

    The context (mean and max pooled node embeddings, projected) is what the Weight Sharing Attention
    conditions on, so the PTM weighting can differ from state to state.

    Shapes:
        - input: node features :math:`(B \cdot N, F)`, edge_index :math:`(2, |E|)`, batch :math:`(B \cdot N,)`
        - output: node embeddings :math:`(B \cdot N, D)`, context :math:`(B, D_{ctx})`
    """

    def __init__(self, in_channels: int, hidden_dim: int = 64, num_layers: int = 2, context_dim: int = 64) -> None:
        super().__init__()
        self.gnn = GCNStack(in_channels, hidden_dim, num_layers)
        self.context = nn.Sequential(nn.Linear(2 * hidden_dim, context_dim), nn.ReLU())
        self.out_dim = hidden_dim
        self.context_dim = context_dim

    def forward(self, x: Tensor, edge_index: Tensor, batch: Tensor, num_graphs: int) -> tuple[Tensor, Tensor]:
        h = self.gnn(x, edge_index)
        pooled = torch.cat([global_mean_pool(h, batch, num_graphs), global_max_pool(h, batch, num_graphs)], dim=-1)
        return h, self.context(pooled)


class GraphCNN(nn.Module):
    r"""The Graph-CNN PTM body: a GCN stack pooled to one vector per graph (trained from scratch).

    Shapes:
        - input: node features :math:`(B \cdot N, F)`, edge_index :math:`(2, |E|)`, batch :math:`(B \cdot N,)`
        - output: :math:`(B, 2 \cdot F_{hid})`
    """

    def __init__(self, in_channels: int, hidden_dim: int = 64, num_layers: int = 3) -> None:
        super().__init__()
        self.gnn = GCNStack(in_channels, hidden_dim, num_layers)
        self.out_dim = 2 * hidden_dim

    def forward(self, x: Tensor, edge_index: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        h = self.gnn(x, edge_index)
        return torch.cat([global_mean_pool(h, batch, num_graphs), global_max_pool(h, batch, num_graphs)], dim=-1)
