"""`StateInputs`: one observation batch in the layout every model reads (PyG-style flat graph + images)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from wsa_lab.envs import CoverageObs


class StateInputs(NamedTuple):
    r"""A batch of B states with N nodes each.

    Shapes:
        - x: :math:`(B \cdot N, F)` node features; edge_index: :math:`(2, |E|)`; batch: :math:`(B \cdot N,)`
        - image: :math:`(B, 3, H, W)` in [0, 1]; action_mask: :math:`(B, N)`; positions: :math:`(B, N, 2)`
    """

    x: Tensor
    edge_index: Tensor
    batch: Tensor
    image: Tensor
    action_mask: Tensor
    positions: Tensor
    num_graphs: int
    num_nodes: int

    @classmethod
    def from_obs(cls, obs: CoverageObs) -> "StateInputs":
        return cls(
            x=obs.flat_node_features(),
            edge_index=obs.edge_index(),
            batch=obs.batch_vector(),
            image=obs.image,
            action_mask=obs.action_mask,
            positions=obs.node_features[..., 3:5],  # (x, y) columns, see CoverageObs
            num_graphs=obs.batch_size,
            num_nodes=obs.num_nodes,
        )


def run_cnn(body: torch.nn.Module, image: Tensor, use_checkpoint: bool) -> Tensor:
    """Run a CNN body, trading compute for memory with gradient checkpointing when asked and useful."""
    if use_checkpoint and torch.is_grad_enabled() and any(p.requires_grad for p in body.parameters()):
        return checkpoint(body, image, use_reentrant=False)
    return body(image)
