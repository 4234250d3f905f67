"""Distance and disc-membership helpers shared by the dynamics and the greedy policy.

Both must decide "is node n within radius r of site s" identically, otherwise the greedy
policy's predicted reward could differ from the reward the environment pays.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Upper bound on the elements of uncovered_within's per-chunk [B, chunk, N] tensors (~4M): bounded memory at any N.
MAX_CHUNK_ELEMENTS = 2**22


def squared_distances(centres: Tensor, points: Tensor) -> Tensor:
    """Squared euclidean distances from every centre to every point of the same instance.

    Computed from explicit per-axis differences (not the matmul trick) so the result is
    exact and identical wherever it is used; ``dx*dx + dy*dy`` avoids a slow reduction
    over a size-2 trailing dim.

    Shapes:
        - input: ``centres`` ``[B, C, 2]``, ``points`` ``[B, P, 2]``
        - output: ``[B, C, P]``
    """
    dx = centres[..., 0].unsqueeze(2) - points[..., 0].unsqueeze(1)
    dy = centres[..., 1].unsqueeze(2) - points[..., 1].unsqueeze(1)
    return dx * dx + dy * dy


def within_radius(sq_dist: Tensor, radius: Tensor) -> Tensor:
    """``distance <= radius`` from squared distances (compares squares: no sqrt).

    Shapes:
        - input: ``sq_dist`` ``[...]``, ``radius`` broadcastable to ``sq_dist``
        - output: bool, broadcast shape
    """
    return sq_dist <= radius * radius


def uncovered_within(pos: Tensor, uncovered: Tensor, r_sq: Tensor) -> Tensor:
    """Uncovered demand within each radius of every node: what opening a site there would add (before its cost).

    ``r_sq`` are the squared radii, non-decreasing; node ``j`` counts for radius ``l`` iff ``sq_dist <= r_sq[l]``,
    the same float test as :func:`within_radius`. Histogram + cumsum over the smallest covering radius gives all
    radii in ``O(B*N*N)``; candidate sites go in chunks so memory stays bounded for large ``N``.

    Shapes:
        - input: ``pos`` ``[B, N, 2]``, ``uncovered`` ``[B, N]`` (demand, 0 where covered), ``r_sq`` ``[R]``
        - output: ``[B, N, R]``
    """
    B, N, _ = pos.shape
    R = r_sq.shape[0]
    out = torch.empty(B, N, R, dtype=uncovered.dtype, device=pos.device)
    chunk = max(1, min(N, MAX_CHUNK_ELEMENTS // (B * N)))
    for start in range(0, N, chunk):
        stop = min(N, start + chunk)
        sq = squared_distances(pos[:, start:stop], pos)  # [B, c, N]
        bucket = torch.bucketize(sq, r_sq)  # smallest radius index covering the node (R = none)
        hist = torch.zeros(B, stop - start, R + 1, dtype=uncovered.dtype, device=pos.device)
        hist.scatter_add_(2, bucket, uncovered.unsqueeze(1).expand_as(sq))
        out[:, start:stop] = hist[..., :R].cumsum(dim=2)
    return out
