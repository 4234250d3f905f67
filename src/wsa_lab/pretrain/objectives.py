"""Self-supervised objectives that pre-train a PTM backbone on an env's states.

- :class:`ImageAutoencoder` (image PTMs): the backbone's pooled feature must hold enough of the image to
  reconstruct it: a small transposed-convolution decoder maps the feature back to the image, loss = MSE. The
  WSA paper's state encoder was an autoencoder; the pooled feature is what WSA reads, so that is what is trained.
- :class:`GraphInfomax` (graph PTMs): PyG's :class:`~torch_geometric.nn.models.DeepGraphInfomax` (Velickovic et
  al. 2019) on the backbone's node embeddings: each node's embedding must tell its own graph's summary apart
  from the embedding of a corrupted graph (node features shuffled across the batch). A batch holds many graphs,
  so each node is scored against the summary of its own graph (:class:`BatchedDeepGraphInfomax`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import global_mean_pool
from torch_geometric.nn.models import DeepGraphInfomax

from wsa_lab.errors import ConfigError
from wsa_lab.models.heads import gather_rows
from wsa_lab.models.inputs import StateInputs
from wsa_lab.models.ptm import PreTrainedModelWrapper

OBJECTIVES = ("autoencoder", "dgi")


class ImageAutoencoder(nn.Module):
    r"""Reconstruct the image from the PTM's pooled feature: :math:`\hat x = D(E(x))`, loss :math:`\|\hat x - x\|^2`.

    The decoder is a Linear to a 4x4 map of 128 channels, then stride-2 transposed convolutions up to the
    image's side (bilinear resize to the exact size when it is not a power of two).

    Shapes:
        - input: :class:`StateInputs` with image :math:`(G, C, H, W)`
        - output: scalar loss
    """

    def __init__(self, ptm: PreTrainedModelWrapper, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        if not ptm.is_image:
            raise ConfigError(f"objective=autoencoder needs an image PTM; {ptm.spec.name!r} reads the graph (use objective=dgi)")
        self.ptm = ptm
        channels, height, width = image_shape
        self.shape = image_shape
        ups = max(1, math.ceil(math.log2(max(height, width) / 4)))
        self.start = nn.Linear(ptm.out_dim, 128 * 16)
        layers: list[nn.Module] = []
        width_in = 128
        for i in range(ups):
            width_out = max(16, width_in // 2)
            layers += [nn.ConvTranspose2d(width_in, width_out, 4, stride=2, padding=1), nn.ReLU()]
            width_in = width_out
        layers.append(nn.Conv2d(width_in, channels, 3, padding=1))
        self.decoder = nn.Sequential(*layers)

    def forward(self, inputs: StateInputs) -> Tensor:
        feature = self.ptm.backbone_features(inputs)  # (G, D): what WSA reads
        x = self.start(feature).view(-1, 128, 4, 4)
        out = self.decoder(x)
        if tuple(out.shape[-2:]) != self.shape[1:]:
            out = F.interpolate(out, size=self.shape[1:], mode="bilinear", align_corners=False)
        return F.mse_loss(out, inputs.image.float())


class BatchedDeepGraphInfomax(DeepGraphInfomax):
    """DeepGraphInfomax for a batch of graphs: node i is scored against its own graph's summary ``summary[i]``.

    The loss is PyG's (binary cross-entropy of positive vs corrupted nodes) written on the logits: PyG takes the
    log of a sigmoid plus 1e-15, which saturates at 34.54 with no gradient once the scores are large (a GIN's sum
    aggregation over node features in the tens gets there in one step); ``softplus`` is the same loss, stable.
    """

    def discriminate(self, z: Tensor, summary: Tensor, sigmoid: bool = True) -> Tensor:
        value = (z * (summary @ self.weight.t())).sum(dim=-1)  # z_i . (W s_{g(i)}), per node
        return torch.sigmoid(value) if sigmoid else value

    def loss(self, pos_z: Tensor, neg_z: Tensor, summary: Tensor) -> Tensor:
        positive = self.discriminate(pos_z, summary, sigmoid=False)
        negative = self.discriminate(neg_z, summary, sigmoid=False)
        return F.softplus(-positive).mean() + F.softplus(negative).mean()  # -log s(p) - log(1 - s(n))


class GraphInfomax(nn.Module):
    """DGI on a graph PTM's node embeddings (see the module docstring).

    Shapes:
        - input: :class:`StateInputs` of G graphs
        - output: scalar loss
    """

    def __init__(self, ptm: PreTrainedModelWrapper, generator: torch.Generator) -> None:
        super().__init__()
        if ptm.is_image:
            raise ConfigError(f"objective=dgi needs a graph PTM; {ptm.spec.name!r} reads the image (use objective=autoencoder)")
        self.ptm = ptm
        self.generator = generator
        if not (ptm.per_node or ptm.kind == "graph_cnn"):
            raise ConfigError(
                f"objective=dgi needs per-node embeddings; PTM {ptm.spec.name!r} returns one vector per graph"
            )
        hidden = ptm.out_dim // 2  # the PTM pools node embeddings (mean + max): 2 x their width
        self.dgi = BatchedDeepGraphInfomax(hidden, _Encoder(ptm), _summary, self._corrupt)
        torch.nn.init.uniform_(self.dgi.weight, -1 / math.sqrt(hidden), 1 / math.sqrt(hidden))

    def _corrupt(self, x: Tensor, inputs: StateInputs) -> tuple[Tensor, StateInputs]:
        perm = torch.randperm(x.shape[0], generator=self.generator).to(x.device)
        return x[perm], inputs

    def forward(self, inputs: StateInputs) -> Tensor:
        pos, neg, summary = self.dgi(inputs.x, inputs)
        return self.dgi.loss(pos, neg, summary)


class _Encoder(nn.Module):
    def __init__(self, ptm: PreTrainedModelWrapper) -> None:
        super().__init__()
        self.ptm = ptm

    def forward(self, x: Tensor, inputs: StateInputs) -> Tensor:
        return self.ptm.node_embeddings(inputs, x)

    def reset_parameters(self) -> None:  # DeepGraphInfomax resets its encoder: keep the PTM's own init
        pass


def _summary(z: Tensor, x: Tensor, inputs: StateInputs) -> Tensor:
    """Each node's graph summary: the sigmoid of its graph's mean node embedding (DGI's readout)."""
    return gather_rows(torch.sigmoid(global_mean_pool(z, inputs.batch, inputs.num_graphs)), inputs.batch)
