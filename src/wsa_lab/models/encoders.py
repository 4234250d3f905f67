"""Graph encoders: the `StateEncoder` (state context for attention and heads) and the Graph-CNN PTM body."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torch_geometric.nn import GCNConv, global_max_pool, global_mean_pool
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.utils import to_torch_csr_tensor

from wsa_lab.contract import GraphBatch


def gcn_adjacency(edge_index: Tensor, num_nodes: int) -> Tensor:
    r"""GCN's normalised adjacency :math:`\hat A = D^{-1/2}(A + I)D^{-1/2}`, transposed, as a sparse CSR matrix.

    Exactly what `GCNConv(normalize=True)` computes from `edge_index` inside every layer; built once per
    batch instead, and multiplied as a sparse matrix (3x faster than gathering one message per edge on CPU).

    Shapes:
        - input: edge_index :math:`(2, |E|)` (row 0 = source j, row 1 = target i)
        - output: :math:`(|V|, |V|)` sparse CSR, entry (i, j) = weight of the message j -> i
    """
    index, weight = gcn_norm(edge_index, None, num_nodes, add_self_loops=True)
    with warnings.catch_warnings():  # torch's one-time "sparse CSR support is in beta" notice
        warnings.simplefilter("ignore", UserWarning)
        return to_torch_csr_tensor(index.flip(0), weight, size=(num_nodes, num_nodes))


def regular_gcn_adjacency(edge_index: Tensor, num_nodes: int, in_degree: int) -> Tensor:
    r""":func:`gcn_adjacency` of a graph where every node has exactly `in_degree` in-edges from distinct other
    nodes, listed grouped by target in node order (kNN graphs): built without counting degrees.

    Every node then has degree k + 1 with its self loop, so every entry of :math:`\hat A` is :math:`1/(k+1)`:
    no degree count, no edge sort, only a sort within each row.

    Shapes:
        - input: edge_index :math:`(2, |V| \cdot k)`
        - output: :math:`(|V|, |V|)` sparse CSR, equal to ``gcn_adjacency(edge_index, num_nodes)``
    """
    k, device = in_degree, edge_index.device
    own = torch.arange(num_nodes, device=device).view(num_nodes, 1)
    cols = torch.cat([edge_index[0].view(num_nodes, k), own], dim=1).sort(dim=1).values
    crow = torch.arange(0, num_nodes * (k + 1) + 1, k + 1, device=device)
    inv_sqrt_deg = torch.tensor(float(k + 1), device=device).pow(-0.5)  # as gcn_norm computes it
    values = (inv_sqrt_deg * inv_sqrt_deg).expand(cols.numel()).contiguous()
    with warnings.catch_warnings():  # torch's one-time "sparse CSR support is in beta" notice
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols.reshape(-1), values, size=(num_nodes, num_nodes))


def batch_gcn_adjacency(obs: GraphBatch) -> Tensor:
    """The GCN adjacency of a batch's disjoint graph (the fast regular path when `obs.in_degree` is set)."""
    if obs.in_degree is not None:
        return regular_gcn_adjacency(obs.edge_index, obs.num_nodes, obs.in_degree)
    return gcn_adjacency(obs.edge_index, obs.num_nodes)


class GCNStack(nn.Module):
    r"""`num_layers` GCN layers with ReLU and a residual connection after the first.

    Each layer is :math:`h \leftarrow h + \mathrm{ReLU}(\hat A h W + b)` (PyG's `GCNConv`), with the
    normalised adjacency :math:`\hat A` of :func:`gcn_adjacency` shared by all layers. The stack runs in
    float32 even under autocast (it is cheap, and sparse products need one dtype).

    Shapes:
        - input: node features :math:`(|V|, F_{in})`; graph: edge_index :math:`(2, |E|)` or
          :func:`gcn_adjacency`'s :math:`(|V|, |V|)` sparse matrix
        - output: node embeddings :math:`(|V|, F_{hid})`
    """

    def __init__(self, in_channels: int, hidden_channels: int, num_layers: int = 2) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.input = nn.Linear(in_channels, hidden_channels)
        # normalize=False: the layers receive the already normalised adjacency (see gcn_adjacency)
        self.convs = nn.ModuleList(GCNConv(hidden_channels, hidden_channels, normalize=False) for _ in range(num_layers))

    def forward(self, x: Tensor, graph: Tensor) -> Tensor:
        adj = graph if graph.layout != torch.strided else gcn_adjacency(graph, x.shape[0])
        with torch.autocast(device_type=x.device.type, enabled=False):
            h = torch.relu(self.input(x.float()))
            for conv in self.convs:
                h = h + torch.relu(conv(h, adj))  # residual: keeps each node's own features visible
        return h


class StateEncoder(nn.Module):
    r"""GNN over the state graph -> per-node embeddings and a pooled state context.

    The context (mean and max pooled node embeddings, projected) is what the Weight Sharing Attention
    conditions on, so the PTM weighting can differ from state to state.

    Shapes:
        - input: node features :math:`(B \cdot N, F)`, graph (edge_index :math:`(2, |E|)` or
          :func:`gcn_adjacency`), batch :math:`(B \cdot N,)`
        - output: node embeddings :math:`(B \cdot N, D)`, context :math:`(B, D_{ctx})`
    """

    def __init__(self, in_channels: int, hidden_dim: int, num_layers: int, context_dim: int) -> None:
        super().__init__()
        self.gnn = GCNStack(in_channels, hidden_dim, num_layers)
        self.context = nn.Sequential(nn.Linear(2 * hidden_dim, context_dim), nn.ReLU())
        self.out_dim = hidden_dim
        self.context_dim = context_dim

    def forward(self, x: Tensor, graph: Tensor, batch: Tensor, num_graphs: int) -> tuple[Tensor, Tensor]:
        h = self.gnn(x, graph)
        pooled = torch.cat([global_mean_pool(h, batch, num_graphs), global_max_pool(h, batch, num_graphs)], dim=-1)
        return h, self.context(pooled)


class GraphCNN(nn.Module):
    r"""The Graph-CNN PTM body: a GCN stack pooled to one vector per graph (trained from scratch).

    Shapes:
        - input: node features :math:`(B \cdot N, F)`, graph (edge_index :math:`(2, |E|)` or
          :func:`gcn_adjacency`), batch :math:`(B \cdot N,)`
        - output: :math:`(B, 2 \cdot F_{hid})`
    """

    def __init__(self, in_channels: int, hidden_dim: int, num_layers: int = 3) -> None:
        super().__init__()
        self.gnn = GCNStack(in_channels, hidden_dim, num_layers)
        self.out_dim = 2 * hidden_dim

    def forward(self, x: Tensor, graph: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        h = self.gnn(x, graph)
        return torch.cat([global_mean_pool(h, batch, num_graphs), global_max_pool(h, batch, num_graphs)], dim=-1)
