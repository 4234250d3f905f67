"""Distance and disc-membership helpers shared by the dynamics and the greedy policy.

Both must decide "is node n within radius r of site s" identically, otherwise the greedy
policy's predicted reward could differ from the reward the environment pays.
"""

from __future__ import annotations

from torch import Tensor


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
