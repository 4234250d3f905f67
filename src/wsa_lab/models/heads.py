"""Hybrid action heads: a masked categorical over each graph's nodes, then a Gaussian vector for the chosen node.

Graphs of a batch may have different node counts: the node distribution is a softmax over each graph's own
nodes in PyG's flat layout (no padding), computed with segment reductions over the ``batch`` vector.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor, nn
from torch.distributions import Normal
from torch_geometric.utils import scatter

#: Logit of a masked node: probability exactly 0 after the softmax, entropy terms stay finite.
MASKED_LOGIT = -1e8


class HybridAction(NamedTuple):
    node: Tensor  # (G,) long: the chosen node, a local index into its graph's nodes
    continuous: Tensor  # (G, d) float: raw Gaussian sample in policy units (d = 0: no continuous part)


class HeadOutput(NamedTuple):
    action: HybridAction
    log_prob: Tensor  # (G,) joint: log p(node) + log p(continuous | node)
    entropy: Tensor  # (G,) H(node) + H(continuous)


def mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim))


class _GatherRows(torch.autograd.Function):
    """``src.index_select(0, index)`` whose backward makes the incoming gradient contiguous before `index_add_`.

    The values of ``src[index]``. Its gradient is summed in index order, the same on every run; indexing's CPU
    backward instead adds with atomics across threads (nondeterministic when one output row is split between
    threads: graphs of mixed sizes) and costs ~5 ms per minibatch at the default batch; `index_add_` on a strided
    gradient (a slice of `torch.cat`'s) ~2 ms; contiguous, well under 1 ms. For graphs of one size the gradient is
    bit for bit what indexing gives. On CUDA, `index_add_` is deterministic under `deterministic: true`.
    """

    @staticmethod
    def forward(ctx: Any, src: Tensor, index: Tensor) -> Tensor:
        ctx.save_for_backward(index)
        ctx.rows = src.shape[0]
        return src.index_select(0, index)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (index,) = ctx.saved_tensors
        return grad.new_zeros((ctx.rows, *grad.shape[1:])).index_add_(0, index, grad.contiguous()), None


def gather_rows(src: Tensor, index: Tensor) -> Tensor:
    """Rows ``src[index]`` (e.g. each node's graph-level row: ``gather_rows(per_graph, batch)``).

    Shapes:
        - input: src :math:`(R, *)`, index :math:`(M,)` long
        - output: :math:`(M, *)`
    """
    return _GatherRows.apply(src, index)


def segment_log_softmax(logits: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    r"""Log-softmax of node logits within each graph: :math:`\ell_v - \log \sum_{u \in g(v)} e^{\ell_u}`.

    Shapes:
        - input: logits :math:`(|V|,)`, batch :math:`(|V|,)`
        - output: :math:`(|V|,)`
    """
    peak = scatter(logits.detach(), batch, dim=0, dim_size=num_graphs, reduce="max")[batch]  # for stability only
    shifted = logits - peak
    total = scatter(shifted.exp(), batch, dim=0, dim_size=num_graphs, reduce="sum")
    return shifted - gather_rows(total.log(), batch)


def segment_argmax(values: Tensor, batch: Tensor, ptr: Tensor) -> Tensor:
    """Local index of each graph's largest value (ties: the lowest index, like ``torch.argmax``).

    Shapes:
        - input: values :math:`(|V|,)`, batch :math:`(|V|,)`, ptr :math:`(G + 1,)`
        - output: :math:`(G,)` long
    """
    num_graphs = ptr.numel() - 1
    peak = scatter(values, batch, dim=0, dim_size=num_graphs, reduce="max")[batch]
    local = torch.arange(values.numel(), device=values.device) - ptr[batch]
    candidates = torch.where(values == peak, local, torch.full_like(local, values.numel()))
    return scatter(candidates, batch, dim=0, dim_size=num_graphs, reduce="min")


class HybridActionHead(nn.Module):
    r"""Per-node logits from [node embedding; global features], masked; a Gaussian vector for the chosen node.

    Node choice: :math:`\ell_v = g([h_v; z_{g(v)}])`, masked nodes get :data:`MASKED_LOGIT`, and
    :math:`p(v) = \mathrm{softmax}_{u \in g(v)}(\ell_u)` over the nodes of v's own graph. Sampling uses the
    Gumbel-max trick per graph.

    Continuous part (``continuous_dim`` = d > 0): mean :math:`\mu = m([h_{node}; z])`, squashed by a sigmoid into
    (0, 1) on *bounded* dimensions (the env's Box maps [0, 1] onto its [low, high]) and left as is on unbounded
    ones; a learned state-independent std per dimension (CleanRL's convention). The sample is not squashed:
    the env side clamps it, so log-probabilities stay exact Gaussian ones.

    Shapes:
        - input: node embeddings :math:`(|V|, D)`, global features :math:`(G, Z)`, mask :math:`(|V|,)`,
          batch :math:`(|V|,)`, ptr :math:`(G + 1,)`
        - output: :class:`HeadOutput` with :math:`(G,)` tensors (the continuous action :math:`(G, d)`)
    """

    def __init__(
        self,
        node_dim: int,
        global_dim: int,
        hidden_dim: int,
        init_log_std: float,
        continuous_dim: int = 1,
        bounded: Optional[Tensor] = None,
    ) -> None:
        super().__init__()
        self.continuous_dim = continuous_dim
        self.node_logits = mlp(node_dim + global_dim, hidden_dim, 1)
        if continuous_dim > 0:
            self.continuous_mean = mlp(node_dim + global_dim, hidden_dim, continuous_dim)
            self.log_std = nn.Parameter(torch.full((continuous_dim,), float(init_log_std)))
        bounded = torch.ones(continuous_dim, dtype=torch.bool) if bounded is None else bounded.to(torch.bool)
        self.register_buffer("bounded", bounded.reshape(continuous_dim), persistent=False)

    def forward(
        self,
        node_emb: Tensor,
        global_feat: Tensor,
        mask: Tensor,
        batch: Tensor,
        ptr: Tensor,
        action: Optional[HybridAction] = None,
        deterministic: bool = False,
    ) -> HeadOutput:
        num_graphs = ptr.numel() - 1
        pairs = torch.cat([node_emb, gather_rows(global_feat, batch)], dim=-1)  # (|V|, D + Z)
        logits = self.node_logits(pairs).squeeze(-1).masked_fill(~mask, MASKED_LOGIT)
        log_p = segment_log_softmax(logits, batch, num_graphs)
        if action is not None:
            node = action.node
        elif deterministic:
            node = segment_argmax(logits.detach(), batch, ptr)
        else:
            uniform = torch.rand_like(logits).clamp_(min=torch.finfo(logits.dtype).tiny)
            node = segment_argmax(logits.detach() - torch.log(-torch.log(uniform)), batch, ptr)
        chosen_row = ptr[:-1] + node
        log_prob = gather_rows(log_p, chosen_row)
        entropy = -scatter(log_p.exp() * log_p, batch, dim=0, dim_size=num_graphs, reduce="sum")
        if self.continuous_dim == 0:
            continuous = node_emb.new_zeros(num_graphs, 0)
            return HeadOutput(HybridAction(node, continuous), log_prob, entropy)
        raw_mean = self.continuous_mean(gather_rows(pairs, chosen_row))  # (G, d)
        mean = torch.where(self.bounded, torch.sigmoid(raw_mean), raw_mean)
        # no argument check: a diverged network's NaN mean reaches PPO's non-finite checks (one clear line there)
        dist = Normal(mean, self.log_std.exp().expand_as(mean), validate_args=False)
        if action is not None:
            continuous = action.continuous
        else:
            continuous = mean if deterministic else dist.sample()
        log_prob = log_prob + dist.log_prob(continuous).sum(-1)
        entropy = entropy + dist.entropy().sum(-1)
        return HeadOutput(HybridAction(node, continuous), log_prob, entropy)

