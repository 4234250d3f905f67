"""Batched observation container of the coverage environment."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Sequence

import torch
from torch import Tensor

#: Column order of ``CoverageObs.node_features``.
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
    """:meth:`CoverageObs.edge_index` of a ``[B, N, k]`` neighbour tensor: ``[2, B * N * k]``, sources in row 0."""
    B, N, k = neighbors.shape
    dst = torch.arange(B * N, device=neighbors.device).view(B, N, 1).expand(B, N, k)
    return torch.stack([global_neighbors(neighbors).reshape(-1), dst.reshape(-1)])


@dataclass
class CoverageObs:
    """A batch of observations: one graph (and one image) per environment.

    Fields:
        node_features: per node ``(demand * N, covered, is_site, x, y, (K - t) / K)``;
            ``demand * N`` has mean 1 over the nodes of an instance.
        neighbors: indices of each node's ``k`` nearest other nodes (same instance).
        action_mask: True where the node may be chosen (not yet a site).
        image: channels (demand density, covered demand density, union of coverage discs),
            all in ``[0, 1]``; row index follows ``y``, column index follows ``x``.

    Shapes:
        - node_features: ``[B, N, 6]`` float32
        - neighbors: ``[B, N, k]`` long
        - action_mask: ``[B, N]`` bool
        - image: ``[B, 3, H, W]`` float32

    Trainers may store extra leading dims (e.g. ``[T, B, ...]``) via :meth:`map`; the
    graph helpers (:meth:`edge_index`, ...) expect the plain ``[B, ...]`` layout.
    """

    node_features: Tensor
    neighbors: Tensor
    action_mask: Tensor
    image: Tensor

    def map(self, fn: Callable[[Tensor], Tensor]) -> CoverageObs:
        """Apply ``fn`` to every tensor field, e.g. ``obs.map(lambda t: t[idx])``."""
        return CoverageObs(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def to(self, device: str | torch.device) -> CoverageObs:
        """Move every field to ``device``."""
        return self.map(lambda t: t.to(device))

    @property
    def batch_size(self) -> int:
        return self.node_features.shape[0]

    @property
    def num_nodes(self) -> int:
        return self.node_features.shape[1]

    @classmethod
    def cat(cls, obs: Sequence[CoverageObs]) -> CoverageObs:
        """Concatenate observations along the batch dim (all must share N, k, H, W).

        Shapes:
            - input: each ``[B_i, ...]``
            - output: ``[sum_i B_i, ...]``
        """
        if len(obs) == 0:
            raise ValueError("CoverageObs.cat needs at least one observation")
        return cls(**{f.name: torch.cat([getattr(o, f.name) for o in obs]) for f in fields(cls)})

    def edge_index(self) -> Tensor:
        """kNN edges of the whole batch as one disjoint graph (PyG convention).

        Instance ``b``'s node ``i`` has global id ``b * N + i``. Row 0 is the source
        (neighbour ``j``), row 1 the target (node ``i``): messages flow ``j -> i``.

        Shapes:
            - output: ``[2, B * N * k]`` long
        """
        return knn_edge_index(self.neighbors)

    def batch_vector(self) -> Tensor:
        """Instance index of every node of the flattened batch (PyG ``batch``).

        Shapes:
            - output: ``[B * N]`` long
        """
        return torch.arange(self.batch_size, device=self.node_features.device).repeat_interleave(
            self.num_nodes
        )

    def flat_node_features(self) -> Tensor:
        """Node features of the flattened batch, row ``b * N + i``.

        Shapes:
            - output: ``[B * N, 6]``
        """
        return self.node_features.reshape(-1, self.node_features.shape[-1])
