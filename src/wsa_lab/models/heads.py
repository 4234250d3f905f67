"""Hybrid action heads: a masked categorical over nodes, then a bounded Gaussian radius for that node."""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Normal


class HybridAction(NamedTuple):
    node: Tensor  # (B,) long: the site
    radius: Tensor  # (B,) float: raw Gaussian sample; the env clamps it to [0, 1]


class HeadOutput(NamedTuple):
    action: HybridAction
    log_prob: Tensor  # (B,) joint: log p(node) + log p(radius | node)
    entropy: Tensor  # (B,) H(node) + H(radius)


def mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim))


class HybridActionHead(nn.Module):
    r"""Per-node logits from [node embedding; global features], masked; a radius Gaussian for the chosen node.

    The radius mean is :math:`\sigma(g([h_{node}; z]))` in (0, 1), its std a learned state-independent
    parameter (CleanRL's continuous-action convention). The sample is not squashed: the env clamps it,
    so log-probabilities stay exact Gaussian ones. Masked nodes get a logit of -1e8 (probability 0,
    finite entropy terms).

    Shapes:
        - input: node embeddings :math:`(B, N, D)`, global features :math:`(B, G)`, mask :math:`(B, N)`
        - output: :class:`HeadOutput` with :math:`(B,)` tensors
    """

    def __init__(self, node_dim: int, global_dim: int, hidden_dim: int = 64, init_log_std: float = math.log(0.2)) -> None:
        super().__init__()
        self.node_logits = mlp(node_dim + global_dim, hidden_dim, 1)
        self.radius_mean = mlp(node_dim + global_dim, hidden_dim, 1)
        self.log_std = nn.Parameter(torch.tensor(float(init_log_std)))

    def forward(
        self,
        node_emb: Tensor,
        global_feat: Tensor,
        mask: Tensor,
        action: Optional[HybridAction] = None,
        deterministic: bool = False,
    ) -> HeadOutput:
        pairs = torch.cat([node_emb, global_feat.unsqueeze(1).expand(-1, node_emb.shape[1], -1)], dim=-1)
        logits = self.node_logits(pairs).squeeze(-1).masked_fill(~mask, -1e8)
        node_dist = Categorical(logits=logits)
        if action is None:
            node = logits.argmax(-1) if deterministic else node_dist.sample()
        else:
            node = action.node
        chosen = pairs[torch.arange(pairs.shape[0], device=pairs.device), node]  # (B, D+G)
        mean = torch.sigmoid(self.radius_mean(chosen).squeeze(-1))
        radius_dist = Normal(mean, self.log_std.exp().expand_as(mean))
        if action is None:
            radius = mean if deterministic else radius_dist.sample()
        else:
            radius = action.radius
        log_prob = node_dist.log_prob(node) + radius_dist.log_prob(radius)
        entropy = node_dist.entropy() + radius_dist.entropy()
        return HeadOutput(HybridAction(node, radius), log_prob, entropy)
