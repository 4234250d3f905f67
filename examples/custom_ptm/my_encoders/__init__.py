"""A researcher's own encoders, written as plain PyTorch modules (this package does not import wsa_lab).

wsa_lab uses them as PTMs through `model_type: custom` (see conf/ptm/ here):
    PYTHONPATH=examples/custom_ptm python -m wsa_lab --config-dir examples/custom_ptm/conf experiment=custom_ptms

- `TinyCNN(image)` reads the env's image (G, C, H, W) and returns one vector per graph (G, features).
- `MeanMessageGNN(x, edge_index, batch, edge_attr=None)` returns one embedding per node (|V|, hidden); wsa_lab
  pools it per graph (mean and max).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["MeanMessageGNN", "TinyCNN"]


class TinyCNN(nn.Module):
    """Three stride-2 convolutions, global average pooling and a linear layer: (G, C, H, W) -> (G, features)."""

    def __init__(self, in_channels: int = 3, width: int = 16, features: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for out in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.GroupNorm(4, out), nn.ReLU()]
            channels = out
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out = nn.Linear(channels, features)

    def forward(self, image: Tensor) -> Tensor:
        return self.out(self.body(image))


class MeanMessageGNN(nn.Module):
    """Mean-aggregated neighbour messages with residual updates: node features -> per-node embeddings.

    Edge features, when the env has them (`edge_dim`), are appended to every message.
    """

    def __init__(self, in_channels: int, hidden: int = 32, layers: int = 2, edge_dim: int | None = None) -> None:
        super().__init__()
        self.edge_dim = edge_dim or 0
        self.embed = nn.Linear(in_channels, hidden)
        self.messages = nn.ModuleList(nn.Linear(hidden + self.edge_dim, hidden) for _ in range(layers))

    def forward(self, x: Tensor, edge_index: Tensor, batch: Tensor, edge_attr: Tensor | None = None) -> Tensor:
        h = torch.relu(self.embed(x))
        source, target = edge_index
        degree = torch.zeros(x.shape[0], device=x.device).index_add_(0, target, torch.ones_like(target, dtype=x.dtype))
        for layer in self.messages:
            message = h[source]
            if self.edge_dim:
                message = torch.cat([message, edge_attr], dim=-1)
            summed = torch.zeros_like(h).index_add_(0, target, torch.relu(layer(message)))
            h = h + summed / degree.clamp(min=1).unsqueeze(-1)
        return h
