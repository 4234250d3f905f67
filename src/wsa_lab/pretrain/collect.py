"""States of an env played by the random policy: what `python -m wsa_lab.pretrain` trains on.

The random policy of the graph env contract: each graph's node uniformly among its allowed nodes, the continuous
part uniform in [0, 1] on bounded dimensions (mapped onto the env's box) and standard normal on unbounded ones.
It is seeded by its own generator, so the same seed collects the same states (a killed pre-training job collects
them again on resume instead of storing them).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor
from tqdm import tqdm

from wsa_lab.contract import ActionSpec, GraphBatch, VectorGraphEnv
from wsa_lab.models.heads import segment_argmax
from wsa_lab.models.inputs import rasterise_nodes


def random_action(obs: GraphBatch, spec: ActionSpec, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Node uniform among each graph's allowed nodes; continuous uniform (bounded) / normal (unbounded), env units.

    Shapes:
        - output: node :math:`(G,)` local indices, continuous :math:`(G, d)`
    """
    scores = torch.rand(obs.num_nodes, generator=generator).to(obs.device)
    node = segment_argmax(scores.masked_fill(~obs.action_mask, -1.0), obs.batch, obs.ptr)
    d = spec.continuous_dim
    unit = torch.rand(obs.num_graphs, d, generator=generator)
    normal = torch.randn(obs.num_graphs, d, generator=generator)
    continuous = torch.where(torch.as_tensor(spec.bounded), unit, normal).to(obs.device)
    return node, spec.policy_to_env(continuous)


def collect_states(
    env: VectorGraphEnv,
    spec: ActionSpec,
    steps: int,
    seed: int,
    keep: Callable[[GraphBatch], object],
    progress: bool = True,
) -> list[object]:
    """Play the random policy for `steps` env steps (all envs together) from ``env.reset(seed)``; return
    ``keep(obs)`` of every observation seen (one batch of ``env.num_envs`` states per step)."""
    generator = torch.Generator().manual_seed(seed)
    obs = env.reset(seed=seed)
    kept = []
    with tqdm(total=steps, unit="state", desc="collecting", disable=not progress, dynamic_ncols=True) as bar:
        while len(kept) * env.num_envs < steps:
            kept.append(keep(obs))
            obs, *_ = env.step(*random_action(obs, spec, generator))
            bar.update(env.num_envs)
    return kept


def images_of(obs: GraphBatch, raster_size: Optional[int]) -> Tensor:
    """What image PTMs read for these states (the env's image, else node features rasterised), kept as float16
    on the CPU to halve the memory of a large collection. Shapes: :math:`(G, C, H, W)`."""
    image = obs.image if raster_size is None else rasterise_nodes(obs.x, obs.positions, obs.batch, obs.num_graphs, raster_size)
    return image.detach().to("cpu", torch.float16)
