"""Weight Sharing Attention (WSA): one shared MLP scores every PTM's feature in the current state."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class WeightSharingAttention(nn.Module):
    r"""Additive (Bahdanau-style) attention over P PTM features, with ONE scoring MLP shared by all PTMs.

    For state context :math:`c` and PTM features :math:`f_1..f_P` (all of size F):

    .. math::
        e_i = v^\top \tanh\big(W [c; f_i] + b\big), \qquad
        \alpha = \mathrm{softmax}(e_1, \dots, e_P), \qquad
        z = \sum_i \alpha_i f_i

    The same :math:`W, b, v` score every PTM ("weight sharing"), so the module's size does not grow with
    P and the weights :math:`\alpha` are comparable across PTMs: they say how much each PTM contributes
    in this state. Dropout acts on the hidden layer of the scoring MLP.

    Args:
        context_dim: size of the state context :math:`c`.
        feature_dim: size F of every PTM feature.
        hidden_dim: width of the scoring MLP's hidden layer.
        dropout: dropout probability on that hidden layer.

    Shapes:
        - input: context :math:`(B, C)`, features :math:`(B, P, F)`
        - output: fused :math:`(B, F)`, weights :math:`(B, P)` (each row sums to 1)
    """

    def __init__(self, context_dim: int, feature_dim: int, hidden_dim: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        self.score = nn.Sequential(
            nn.Linear(context_dim + feature_dim, hidden_dim),
            nn.Tanh(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, 1, bias=False),  # v; a bias would cancel in the softmax
        )

    def forward(self, context: Tensor, features: Tensor) -> tuple[Tensor, Tensor]:
        num_ptms = features.shape[1]
        pairs = torch.cat([context.unsqueeze(1).expand(-1, num_ptms, -1), features], dim=-1)  # (B, P, C+F)
        weights = torch.softmax(self.score(pairs).squeeze(-1), dim=-1)  # (B, P)
        fused = torch.einsum("bp,bpf->bf", weights, features)
        return fused, weights
