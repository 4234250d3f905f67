"""Random facility-coverage instances and their k-nearest-neighbour graphs."""

from __future__ import annotations

import torch
from torch import Tensor

# Upper bound on the elements of one chunk's [chunk, N, N] distance matrix (64 MiB of float32):
# keeps knn_neighbors' memory bounded for large N whatever chunk_size the caller passes.
KNN_MAX_BLOCK_ELEMENTS = 2**24


def generate_instances(
    num_instances: int,
    num_nodes: int,
    *,
    num_clusters: int = 3,
    cluster_std: float = 0.08,
    background_frac: float = 0.3,
    generator: torch.Generator,
    device: str | torch.device = "cpu",
) -> tuple[Tensor, Tensor]:
    """Sample clustered node positions and normalised demand weights.

    Each instance has ``round(background_frac * num_nodes)`` nodes uniform in the unit
    square and the rest drawn from a mixture of ``num_clusters`` isotropic Gaussians
    (centres uniform in ``[0.1, 0.9]^2``, std ``cluster_std``) clipped to ``[0, 1]``.
    Node order is randomly permuted so the index carries no information about the type.
    Demand weights are log-normal (heavy-tailed, always > 0) and sum to 1 per instance.

    Sampling happens on the generator's device, then the results move to ``device``.

    Shapes:
        - output: positions ``[B, N, 2]`` float32, demand ``[B, N]`` float32
          with ``B = num_instances``, ``N = num_nodes``.
    """
    if num_instances < 0:
        raise ValueError(f"num_instances must be >= 0, got {num_instances}")
    if num_nodes < 1:
        raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
    if num_clusters < 1:
        raise ValueError(f"num_clusters must be >= 1, got {num_clusters}")
    if cluster_std < 0:
        raise ValueError(f"cluster_std must be >= 0, got {cluster_std}")
    if not 0.0 <= background_frac <= 1.0:
        raise ValueError(f"background_frac must be in [0, 1], got {background_frac}")

    B, N, C = num_instances, num_nodes, num_clusters
    g = generator
    gdev = g.device

    centres = 0.1 + 0.8 * torch.rand(B, C, 2, generator=g, device=gdev)
    assign = torch.randint(0, C, (B, N), generator=g, device=gdev)
    noise = cluster_std * torch.randn(B, N, 2, generator=g, device=gdev)
    clustered = (centres.gather(1, assign.unsqueeze(-1).expand(B, N, 2)) + noise).clamp(0.0, 1.0)
    uniform = torch.rand(B, N, 2, generator=g, device=gdev)

    num_background = int(round(background_frac * N))
    is_background = torch.arange(N, device=gdev) < num_background
    pos = torch.where(is_background[None, :, None], uniform, clustered)
    # Shuffle per instance so background nodes are not always the low indices.
    perm = torch.rand(B, N, generator=g, device=gdev).argsort(dim=1)
    pos = pos.gather(1, perm.unsqueeze(-1).expand(B, N, 2))

    weights = torch.exp(torch.randn(B, N, generator=g, device=gdev))
    demand = weights / weights.sum(dim=1, keepdim=True)

    return pos.to(device=device, dtype=torch.float32), demand.to(device=device, dtype=torch.float32)


def knn_neighbors(pos: Tensor, k: int, chunk_size: int = 64) -> Tensor:
    """Indices of the ``k`` nearest other nodes of every node (no self loops).

    Pure torch (``cdist`` + ``topk``) because PyG's ``knn_graph`` needs pyg-lib.
    Works over chunks of instances (and, for large ``N``, blocks of rows) so one block's distance matrix stays
    below ~64 MiB whatever ``N``.
    Neighbours are ordered by increasing distance.

    Shapes:
        - input: ``pos`` ``[B, N, 2]``
        - output: ``[B, N, k]`` long
    """
    if pos.dim() != 3:
        raise ValueError(f"pos must be [B, N, D], got shape {tuple(pos.shape)}")
    B, N, _ = pos.shape
    if not 1 <= k < N:
        raise ValueError(f"k must be in [1, N-1] = [1, {N - 1}], got {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    chunk = max(1, min(chunk_size, KNN_MAX_BLOCK_ELEMENTS // (N * N)))
    # Rows per block: all N unless one instance's N x N matrix alone passes the cap (20,000 nodes: 1.6 GB), then
    # blocks of rows; each pair's distance is computed on its own (non-matmul mode), so blocks give the same bits.
    rows = max(1, min(N, KNN_MAX_BLOCK_ELEMENTS // N))
    out = torch.empty(B, N, k, dtype=torch.long, device=pos.device)
    for start in range(0, B, chunk):
        p = pos[start : start + chunk]
        for first in range(0, N, rows):
            # The non-matmul mode is exact, so near-ties resolve the same way as a brute force.
            dist = torch.cdist(p[:, first : first + rows], p, compute_mode="donot_use_mm_for_euclid_dist")
            own = torch.arange(first, min(first + rows, N), device=pos.device)
            dist[:, torch.arange(len(own), device=pos.device), own] = float("inf")  # no self loops
            out[start : start + chunk, first : first + rows] = dist.topk(k, dim=-1, largest=False).indices
    return out
