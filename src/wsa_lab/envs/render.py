"""Rasterise coverage states into small images (for CNN / pre-trained-model inputs)."""

from __future__ import annotations

import torch
from torch import Tensor


def pixel_index(pos: Tensor, image_size: int) -> tuple[Tensor, Tensor]:
    """Pixel (row, col) holding each position; row follows ``y``, col follows ``x``.

    Shapes:
        - input: ``pos`` ``[..., 2]`` in ``[0, 1]``
        - output: two long tensors ``[...]`` in ``[0, image_size - 1]``
    """
    # Clamp so that a coordinate of exactly 1.0 lands in the last pixel.
    cell = (pos * image_size).long().clamp(0, image_size - 1)
    return cell[..., 1], cell[..., 0]


def render_image(
    pos: Tensor,
    demand: Tensor,
    covered: Tensor,
    site_radius: Tensor,
    image_size: int,
    max_sites: int | None = None,
) -> Tensor:
    """Render demand, covered demand and coverage discs as a 3-channel image.

    - channel 0: demand summed per pixel, divided by the image's largest pixel value;
    - channel 1: covered demand summed per pixel, divided by the same value as channel 0
      (so channel 1 <= channel 0 pixel-wise);
    - channel 2: 1 where the pixel centre lies within the radius of an open site, else 0.

    Sites are the nodes with ``site_radius > 0``. Only the ``max_sites`` largest radii per
    instance are drawn (an instance has at most K sites): the disc cost is then
    ``O(B * K * H * W)`` instead of ``O(B * N * H * W)``. ``None`` draws all ``N``.

    Shapes:
        - input: ``pos`` ``[B, N, 2]``, ``demand`` ``[B, N]``, ``covered`` ``[B, N]`` bool,
          ``site_radius`` ``[B, N]``
        - output: ``[B, 3, H, W]`` float32 in ``[0, 1]``, ``H = W = image_size``
    """
    B, N, _ = pos.shape
    H = W = image_size
    device = pos.device

    # Channels 0 and 1: scatter-add the (covered) demand of every node into its pixel.
    row, col = pixel_index(pos, image_size)
    flat = (torch.arange(B, device=device).view(B, 1) * (H * W) + row * W + col).reshape(-1)
    dem = demand.reshape(-1).float()
    density = torch.zeros(B * H * W, device=device).index_add_(0, flat, dem).view(B, H, W)
    cov_density = (
        torch.zeros(B * H * W, device=device)
        .index_add_(0, flat, dem * covered.reshape(-1).float())
        .view(B, H, W)
    )
    peak = density.amax(dim=(1, 2), keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    density = density / peak
    cov_density = cov_density / peak

    # Channel 2: gather the few sites first, then test every pixel centre against them.
    num_sites = N if max_sites is None else max(1, min(max_sites, N))
    radius, idx = site_radius.float().topk(num_sites, dim=1)  # [B, S]
    site_pos = pos.gather(1, idx.unsqueeze(-1).expand(B, num_sites, 2))  # [B, S, 2]
    centres = (torch.arange(W, device=device, dtype=torch.float32) + 0.5) / W
    dx = centres.view(1, 1, 1, W) - site_pos[..., 0].view(B, num_sites, 1, 1)
    dy = centres.view(1, 1, H, 1) - site_pos[..., 1].view(B, num_sites, 1, 1)
    r = radius.view(B, num_sites, 1, 1)
    inside = (dx * dx + dy * dy <= r * r) & (r > 0)
    discs = inside.any(dim=1).float()

    return torch.stack([density, cov_density, discs], dim=1)
