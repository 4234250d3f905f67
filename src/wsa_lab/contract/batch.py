"""`GraphBatch`: a batch of graph observations in PyG's flat layout, the one type models and PPO read.

G graphs of any sizes are stored as one disjoint union graph, without padding to a maximum: the nodes of
graph ``g`` are rows ``ptr[g] .. ptr[g + 1] - 1`` of ``x``, its edges are columns
``edge_ptr[g] .. edge_ptr[g + 1] - 1`` of ``edge_index`` (global node ids, PyG convention: row 0 = source,
row 1 = target). Per-node entries (``action_mask``, ``positions``) follow the node rows; per-graph entries
(``image``) have one row per graph. The rollout buffer stores one batch per step, :meth:`GraphBatch.cat`
joins them and :meth:`GraphBatch.select` draws PPO's minibatches.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor


def offsets(counts: Tensor) -> Tensor:
    """``[0, c0, c0 + c1, ...]``: start offsets of consecutive segments of the given sizes. Shapes: (G,) -> (G + 1,)."""
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


def segment_ids(counts: Tensor, total: Optional[int] = None) -> Tensor:
    """``[0]*c0 + [1]*c1 + ...``: the segment of every element. Shapes: (G,) -> (sum c,)."""
    return torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts, output_size=total)


def _ranges(starts: Tensor, counts: Tensor) -> Tensor:
    """Concatenated ``arange(s, s + c)`` for each (start, count): the rows of the selected segments."""
    total = int(counts.sum())
    seg_start = torch.repeat_interleave(starts - offsets(counts)[:-1], counts, output_size=total)
    return seg_start + torch.arange(total, device=counts.device)


@dataclass
class GraphBatch:
    r"""G graph observations as one flat disjoint graph (PyG style).

    Fields:
        x: node features.
        edge_index: edges with global node ids (row 0 = source j, row 1 = target i: messages flow j -> i).
        ptr: node offsets, graph g's nodes are ``ptr[g]:ptr[g+1]``.
        edge_ptr: edge offsets, graph g's edges are ``edge_ptr[g]:edge_ptr[g+1]``.
        action_mask: True where the node may be chosen.
        edge_attr: edge features, or None.
        positions: node positions in [0, 1]^2 (for rasterising nodes into an image), or None.
        image: the env's image per graph, or None.
        in_degree: set when every node has exactly this many in-edges and the edges are grouped by target in
            node order (kNN graphs): the GCN adjacency is then built without counting degrees.

    Shapes:
        - x: :math:`(|V|, F)`, action_mask: :math:`(|V|,)` bool, positions: :math:`(|V|, 2)`
        - edge_index: :math:`(2, |E|)` long, edge_attr: :math:`(|E|, D)`
        - ptr, edge_ptr: :math:`(G + 1,)` long
        - image: :math:`(G, C, H, W)`
    """

    x: Tensor
    edge_index: Tensor
    ptr: Tensor
    edge_ptr: Tensor
    action_mask: Tensor
    edge_attr: Optional[Tensor] = None
    positions: Optional[Tensor] = None
    image: Optional[Tensor] = None
    in_degree: Optional[int] = None

    # ------------------------------------------------------------------ sizes
    @property
    def num_graphs(self) -> int:
        return self.ptr.numel() - 1

    @property
    def num_nodes(self) -> int:
        """Total nodes of the batch, :math:`|V|`."""
        return self.x.shape[0]

    @property
    def device(self) -> torch.device:
        return self.x.device

    @cached_property
    def nodes_per_graph(self) -> Tensor:
        """(G,) node count of every graph."""
        return self.ptr[1:] - self.ptr[:-1]

    @cached_property
    def edges_per_graph(self) -> Tensor:
        """(G,) edge count of every graph."""
        return self.edge_ptr[1:] - self.edge_ptr[:-1]

    @cached_property
    def batch(self) -> Tensor:
        """(|V|,) graph index of every node (PyG's ``batch`` vector)."""
        return segment_ids(self.nodes_per_graph, self.num_nodes)

    @cached_property
    def uniform_size(self) -> Optional[int]:
        """The common node count when every graph has the same number of nodes, else None."""
        counts = self.nodes_per_graph
        if counts.numel() == 0:
            return 0
        first = int(counts[0])
        return first if bool((counts == first).all()) else None

    # ------------------------------------------------------------------ building
    @classmethod
    def cat(cls, batches: Sequence[GraphBatch]) -> GraphBatch:
        """Join batches (graphs in order: all of the first, then the second, ...)."""
        if not batches:
            raise ValueError("GraphBatch.cat needs at least one batch")
        if len(batches) == 1:
            return batches[0]
        node_shift = offsets(torch.tensor([b.num_nodes for b in batches], device=batches[0].device))
        edge_shift = offsets(torch.tensor([b.edge_index.shape[1] for b in batches], device=batches[0].device))

        def joined(name: str) -> Optional[Tensor]:
            values = [getattr(b, name) for b in batches]
            if any(v is None for v in values):
                if not all(v is None for v in values):
                    raise ValueError(f"GraphBatch.cat: '{name}' is set in some batches only")
                return None
            return torch.cat(values)

        degrees = {b.in_degree for b in batches}
        return cls(
            x=torch.cat([b.x for b in batches]),
            edge_index=torch.cat([b.edge_index + node_shift[i] for i, b in enumerate(batches)], dim=1),
            ptr=torch.cat([batches[0].ptr[:1]] + [b.ptr[1:] + node_shift[i] for i, b in enumerate(batches)]),
            edge_ptr=torch.cat([batches[0].edge_ptr[:1]] + [b.edge_ptr[1:] + edge_shift[i] for i, b in enumerate(batches)]),
            action_mask=torch.cat([b.action_mask for b in batches]),
            edge_attr=joined("edge_attr"),
            positions=joined("positions"),
            image=joined("image"),
            in_degree=degrees.pop() if len(degrees) == 1 else None,
        )

    def select(self, index: Tensor) -> GraphBatch:
        """The graphs at ``index`` (in that order), renumbered as a batch of their own.

        Shapes:
            - index: :math:`(G',)` long
            - output: a batch of G' graphs
        """
        index = index.to(self.ptr.device)
        n = self.nodes_per_graph[index]
        e = self.edges_per_graph[index]
        node_rows = _ranges(self.ptr[index], n)
        edge_cols = _ranges(self.edge_ptr[index], e)
        new_ptr, new_edge_ptr = offsets(n), offsets(e)
        # global id -> local id in its old graph -> global id in the new batch
        shift = torch.repeat_interleave(new_ptr[:-1] - self.ptr[index], e, output_size=edge_cols.numel())
        pick = lambda t: None if t is None else t[node_rows]  # noqa: E731
        return GraphBatch(
            x=self.x[node_rows],
            edge_index=self.edge_index[:, edge_cols] + shift,
            ptr=new_ptr,
            edge_ptr=new_edge_ptr,
            action_mask=self.action_mask[node_rows],
            edge_attr=None if self.edge_attr is None else self.edge_attr[edge_cols],
            positions=pick(self.positions),
            image=None if self.image is None else self.image[index],
            in_degree=self.in_degree,
        )

    def map(self, fn: Callable[[Tensor], Tensor]) -> GraphBatch:
        """Apply ``fn`` to every tensor field (e.g. ``.to(device)``); ``None`` fields stay None."""
        values: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            values[f.name] = fn(value) if isinstance(value, Tensor) else value
        return GraphBatch(**values)

    def to(self, device: str | torch.device, non_blocking: bool = False) -> GraphBatch:
        return self if self.x.device == torch.device(device) else self.map(lambda t: t.to(device, non_blocking=non_blocking))

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Plain tensors (loads with ``torch.load(weights_only=True)``)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: str | torch.device = "cpu") -> GraphBatch:
        return cls(**{k: v.to(device) if isinstance(v, Tensor) else v for k, v in state.items()})
