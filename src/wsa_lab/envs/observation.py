"""The coverage env's node features and kNN edge layout (its observations are `wsa_lab.contract.GraphBatch`es)."""

from __future__ import annotations

import torch
from torch import Tensor

#: Column order of the coverage env's node features.
NODE_FEATURE_NAMES: tuple[str, ...] = ("demand", "covered", "is_site", "x", "y", "steps_left")
NODE_FEATURE_DIM: int = len(NODE_FEATURE_NAMES)


def global_neighbors(neighbors: Tensor) -> Tensor:
    """`neighbors` as node ids of the batch's disjoint union graph (instance ``b``'s node ``i`` is ``b * N + i``).

    Shapes:
        - input / output: ``[B, N, k]`` long
    """
    B, N, _ = neighbors.shape
    return neighbors + (torch.arange(B, device=neighbors.device) * N).view(B, 1, 1)


def knn_edge_index(neighbors: Tensor) -> Tensor:
    """kNN edges of a ``[B, N, k]`` neighbour tensor as one disjoint graph (PyG convention).

    Row 0 is the source (neighbour ``j``), row 1 the target (node ``i``): messages flow ``j -> i``. Edges are
    grouped by target in node order, k per node.

    Shapes:
        - output: ``[2, B * N * k]`` long
    """
    B, N, k = neighbors.shape
    dst = torch.arange(B * N, device=neighbors.device).view(B, N, 1).expand(B, N, k)
    return torch.stack([global_neighbors(neighbors).reshape(-1), dst.reshape(-1)])
