"""Batched facility-coverage environment with a hybrid (node, radius) action.

Every environment of the batch is an independent instance: N demand nodes in the unit
square. At each step the agent opens a site at a node with a radius; nodes within that
radius become covered. Reward = newly covered demand - cost * r^2. An episode terminates
after ``num_sites`` (K) steps or as soon as all demand is covered.

All dynamics are tensor ops over the batch dim B; there is no Python loop over envs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

from wsa_lab.conf_files import yaml_defaults
from wsa_lab.contract import GraphBatch

from .geometry import MAX_CHUNK_ELEMENTS, squared_distances, uncovered_within, within_radius
from .instances import KNN_MAX_BLOCK_ELEMENTS, generate_instances, knn_neighbors
from .observation import NODE_FEATURE_DIM, knn_edge_index
from .coverage_optimum import optimum_returns
from .policies import greedy_returns, random_returns
from .render import render_image

#: Coverage's reference policies, the first one is the headline (``eval/greedy_ratio``).
REFERENCE_NAMES = ("greedy", "random")

#: The instance settings of conf/env/coverage.yaml, where they are documented: the one place of their defaults,
#: for code that builds the env without Hydra (``CoverageEnv(num_envs=4)``, ``gymnasium.make("wsa_lab/Coverage-v0")``).
DEFAULTS: dict[str, Any] = yaml_defaults("env/coverage.yaml")


def coverage_spaces(
    num_nodes: int, image_size: int, coverage_radii: int = DEFAULTS["coverage_radii"]
) -> tuple[spaces.Dict, spaces.Dict]:
    """The (observation, action) spaces of one coverage instance, in the graph env contract's form.

    Observation: ``graph`` (node features ``(N, 6 + coverage_radii)``, one edge per kNN neighbour with its length
    as edge feature), ``action_mask`` ``MultiBinary(N)``, ``positions`` ``(N, 2)``, ``image`` ``(3, H, W)``.
    Action: ``node`` ``Discrete(N)`` + ``radius`` ``Box(0, 1, (1,))``.
    """
    N = num_nodes
    # demand * N and the uncovered demand * N within a radius are at most N (one node holding all demand); the
    # other features are in [0, 1].
    high = np.ones(NODE_FEATURE_DIM + coverage_radii, dtype=np.float32)
    high[0] = float(N)
    high[NODE_FEATURE_DIM:] = float(N)
    graph = spaces.Graph(
        node_space=spaces.Box(0.0, high, dtype=np.float32),
        edge_space=spaces.Box(0.0, math.sqrt(2.0), (1,), dtype=np.float32),
    )
    observation = spaces.Dict(
        {
            "graph": graph,
            "action_mask": spaces.MultiBinary(N),
            "positions": spaces.Box(0.0, 1.0, (N, 2), dtype=np.float32),
            "image": spaces.Box(0.0, 1.0, (3, image_size, image_size), dtype=np.float32),
        }
    )
    action = spaces.Dict({"node": spaces.Discrete(N), "radius": spaces.Box(0.0, 1.0, (1,), dtype=np.float32)})
    return observation, action


class CoverageEnv:
    """Batched torch facility-coverage environment.

    State (all ``[B, ...]`` on ``device``): ``pos`` ``[B, N, 2]``, ``demand`` ``[B, N]``,
    ``neighbors`` ``[B, N, k]``, ``covered`` ``[B, N]`` bool, ``is_site`` ``[B, N]`` bool,
    ``site_radius`` ``[B, N]`` (0 where not a site), ``t`` ``[B]`` long,
    ``episode_return`` ``[B]``, ``ended`` ``[B]`` bool (only ever True with
    ``autoreset=False``: the env finished its episode and waits for a reset).

    The instance settings default to conf/env/coverage.yaml's values (:data:`DEFAULTS`).

    Args:
        num_envs: batch size B of freshly generated instances.
        num_nodes: nodes per generated instance N.
        num_sites: sites per episode K (episode length without early termination).
        num_clusters, cluster_std, background_frac: instance generator parameters
            (see :func:`generate_instances`).
        knn_k: neighbours per node in the observation graph.
        r_min, r_max: an action radius ``a`` maps to ``r_min + clamp(a, 0, 1) * (r_max - r_min)``.
        cost: price per squared radius.
        coverage_radii: ``R`` node features after the six base ones: the uncovered demand (``* N``) within each of
            ``R`` radii (action radii ``linspace(0, 1, R)``) of the node, i.e. what opening a site there would
            cover: the kNN graph alone cannot show it (a radius of ``r_max`` reaches far beyond 8 neighbours).
            0 = none. Costs ``O(B * N^2)`` per step, like the greedy reference.
        image_size: side of the rendered observation image.
        max_episode_steps: optional time limit; when ``< K`` an episode reaching it is
            truncated (not terminated).
        greedy_radius_grid: radii ``linspace(0, 1, R)`` the greedy reference tries per site (the
            denominator of ``eval/greedy_ratio``).
        autoreset: replace ended envs by fresh instances within the same ``step``.
        device: device of all state tensors.
        seed: seed of the env's own ``torch.Generator`` (instances for ``reset``/autoreset).
        optimum_reference: also offer the ``optimum`` reference (the exact best return of each instance, by a
            MILP: :mod:`wsa_lab.envs.coverage_optimum`); only computed where :meth:`reference_returns` is called,
            i.e. for the evaluation env.
    """

    reference_names: tuple[str, ...] = REFERENCE_NAMES

    def __init__(
        self,
        num_envs: int = 16,
        num_nodes: int = DEFAULTS["num_nodes"],
        num_sites: int = DEFAULTS["num_sites"],
        num_clusters: int = DEFAULTS["num_clusters"],
        cluster_std: float = DEFAULTS["cluster_std"],
        background_frac: float = DEFAULTS["background_frac"],
        knn_k: int = DEFAULTS["knn_k"],
        r_min: float = DEFAULTS["r_min"],
        r_max: float = DEFAULTS["r_max"],
        cost: float = DEFAULTS["cost"],
        coverage_radii: int = DEFAULTS["coverage_radii"],
        image_size: int = DEFAULTS["image_size"],
        max_episode_steps: int | None = DEFAULTS["max_episode_steps"],
        greedy_radius_grid: int = DEFAULTS["greedy_radius_grid"],
        autoreset: bool = True,
        device: str | torch.device = "cpu",
        seed: int = 0,
        optimum_reference: bool = DEFAULTS["optimum_reference"],
    ) -> None:
        for name, value in (("cluster_std", cluster_std), ("background_frac", background_frac), ("r_min", r_min),
                            ("r_max", r_max), ("cost", cost)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if num_sites < 1:
            raise ValueError(f"num_sites must be >= 1, got {num_sites}")
        if knn_k < 1:
            raise ValueError(f"knn_k must be >= 1, got {knn_k}")
        self._check_num_nodes(num_nodes, num_sites, knn_k)
        if num_clusters < 1:
            raise ValueError(f"num_clusters must be >= 1, got {num_clusters}")
        if cluster_std < 0:
            raise ValueError(f"cluster_std must be >= 0, got {cluster_std}")
        if not 0.0 <= background_frac <= 1.0:
            raise ValueError(f"background_frac must be in [0, 1], got {background_frac}")
        if r_min < 0:
            raise ValueError(f"r_min must be >= 0, got {r_min}")
        if r_min > r_max:
            raise ValueError(f"r_min must be <= r_max, got r_min={r_min} > r_max={r_max}")
        if cost < 0:
            raise ValueError(f"cost must be >= 0, got {cost}")
        if isinstance(coverage_radii, bool) or not isinstance(coverage_radii, int) or coverage_radii < 0:
            raise ValueError(f"coverage_radii must be an integer >= 0, got {coverage_radii!r}")
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {image_size}")
        if max_episode_steps is not None and max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be None or >= 1, got {max_episode_steps}")
        if greedy_radius_grid < 1:
            raise ValueError(f"greedy_radius_grid must be >= 1, got {greedy_radius_grid}")

        self.num_envs = num_envs
        self.num_nodes = num_nodes
        self.num_sites = num_sites
        self.num_clusters = num_clusters
        self.cluster_std = cluster_std
        self.background_frac = background_frac
        self.knn_k = knn_k
        self.r_min = float(r_min)
        self.r_max = float(r_max)
        self.cost = float(cost)
        self.coverage_radii = coverage_radii
        self.node_feature_dim = NODE_FEATURE_DIM + coverage_radii
        self.image_size = image_size
        self.max_episode_steps = max_episode_steps
        self.greedy_radius_grid = greedy_radius_grid
        self.autoreset = autoreset
        self.device = torch.device(device)
        self.seed = seed
        self.optimum_reference = optimum_reference
        self.reference_names = (*REFERENCE_NAMES, "optimum") if optimum_reference else REFERENCE_NAMES
        # reset(instances=...) may change B and N; a plain reset() returns to these.
        self._default_num_envs = num_envs
        self._default_num_nodes = num_nodes
        # Instances are sampled on the CPU (then moved): same seed -> same instances on any device.
        self._generator = torch.Generator(device="cpu").manual_seed(seed)
        self.reset()

    @classmethod
    def memory_estimate(
        cls, num_envs: int, num_nodes: int = DEFAULTS["num_nodes"], num_sites: int = DEFAULTS["num_sites"],
        knn_k: int = DEFAULTS["knn_k"], image_size: int = DEFAULTS["image_size"],
        coverage_radii: int = DEFAULTS["coverage_radii"], **_: Any,
    ) -> dict[str, float]:
        """Bytes of one observation and of one env's state, and the peak of building `num_envs` at once (the kNN
        distances of a chunk of instances, N^2 floats each), for the start-up memory check (wsa_lab.resources)."""
        N, k, H, K = max(1, num_nodes), max(0, knn_k), max(1, image_size), max(1, num_sites)  # the env names bad sizes
        observation = N * (NODE_FEATURE_DIM + coverage_radii) * 4 + N * k * (2 * 8 + 4) + N + N * 2 * 4 + 3 * H * H * 4 + 32
        state = N * (2 * 4 + 4 + k * 8 + 1 + 1 + 4) + 40
        chunk = max(1, min(64, KNN_MAX_BLOCK_ELEMENTS // (N * N)))  # as knn_neighbors blocks its work
        block = chunk * max(1, min(N, KNN_MAX_BLOCK_ELEMENTS // N)) * N
        knn = block * (4 + 8)  # knn_neighbors' distance block (float32) and topk's workspace
        sampling = num_envs * N * 2 * 4 * 6  # generate_instances' temporaries
        discs = num_envs * min(K, N) * H * H * 4 * 3  # render_image: dx, dy, inside per site
        sites = max(1, min(N, MAX_CHUNK_ELEMENTS // (num_envs * N)))
        gains = num_envs * sites * N * (4 + 8 + 4) if coverage_radii else 0  # uncovered_within: sq, bucket, expand
        return {"observation": observation, "state": state, "nodes": N, "transient": knn + sampling + max(discs, gains),
                "image_pixels": H * H}

    # ------------------------------------------------------------------ helpers
    def _check_num_nodes(self, num_nodes: int, num_sites: int, knn_k: int) -> None:
        if knn_k >= num_nodes:
            raise ValueError(f"knn_k must be < num_nodes, got knn_k={knn_k} >= num_nodes={num_nodes}")
        if num_sites >= num_nodes:
            raise ValueError(
                f"num_sites must be < num_nodes, got num_sites={num_sites} >= num_nodes={num_nodes}"
            )

    def physical_radius(self, radius: Tensor) -> Tensor:
        """Map action radii in ``[0, 1]`` (clamped) to physical radii in ``[r_min, r_max]``.

        Shapes:
            - input/output: any shape, float32
        """
        a = radius.to(device=self.device, dtype=torch.float32).clamp(0.0, 1.0)
        return self.r_min + a * (self.r_max - self.r_min)

    def _sample(self, count: int) -> tuple[Tensor, Tensor, Tensor]:
        """Fresh (pos [count,N,2], demand [count,N], neighbors [count,N,k]) from the env's generator."""
        pos, demand = generate_instances(
            count,
            self.num_nodes,
            num_clusters=self.num_clusters,
            cluster_std=self.cluster_std,
            background_frac=self.background_frac,
            generator=self._generator,
            device=self.device,
        )
        return pos, demand, knn_neighbors(pos, self.knn_k)

    @property
    def single_observation_space(self) -> spaces.Dict:
        """The observation space of one env of the batch (graph env contract), at the default size."""
        return coverage_spaces(self._default_num_nodes, self.image_size, self.coverage_radii)[0]

    @property
    def single_action_space(self) -> spaces.Dict:
        return coverage_spaces(self._default_num_nodes, self.image_size, self.coverage_radii)[1]

    @property
    def generator(self) -> torch.Generator:
        """The env's own instance generator (its state goes into checkpoints)."""
        return self._generator

    @property
    def action_mask(self) -> Tensor:
        """True where a node may be chosen (not yet a site). Shapes: ``[B, N]`` bool."""
        return ~self.is_site

    # ------------------------------------------------------------------ API
    def reset(
        self, seed: int | None = None, instances: tuple[Tensor, Tensor] | None = None
    ) -> GraphBatch:
        """Start new episodes in every env.

        Args:
            seed: if given, reseed the env's generator first.
            instances: fixed ``(pos [B, N, 2], demand [B, N])``; the batch size (and node
                count) then follow these tensors until the next reset without instances.
                Otherwise ``num_envs`` instances of ``num_nodes`` nodes are sampled.
        """
        if seed is not None:
            self.seed = seed
            self._generator.manual_seed(seed)
        if instances is None:
            self.num_envs, self.num_nodes = self._default_num_envs, self._default_num_nodes
            self.pos, self.demand, self.neighbors = self._sample(self.num_envs)
        else:
            pos, demand = instances
            if pos.dim() != 3 or pos.shape[-1] != 2 or demand.shape != pos.shape[:2]:
                raise ValueError(
                    "instances must be (pos [B, N, 2], demand [B, N]), got shapes "
                    f"{tuple(pos.shape)} and {tuple(demand.shape)}"
                )
            if pos.shape[0] < 1:
                raise ValueError("instances must hold at least one instance")
            if (demand < 0).any():
                raise ValueError("instance demand must be >= 0")
            self._check_num_nodes(pos.shape[1], self.num_sites, self.knn_k)
            self.num_envs, self.num_nodes = pos.shape[0], pos.shape[1]
            self.pos = pos.to(device=self.device, dtype=torch.float32).clone()
            self.demand = demand.to(device=self.device, dtype=torch.float32).clone()
            self.neighbors = knn_neighbors(self.pos, self.knn_k)

        B, N = self.num_envs, self.num_nodes
        self.covered = torch.zeros(B, N, dtype=torch.bool, device=self.device)
        self.is_site = torch.zeros(B, N, dtype=torch.bool, device=self.device)
        self.site_radius = torch.zeros(B, N, device=self.device)
        self.t = torch.zeros(B, dtype=torch.long, device=self.device)
        self.episode_return = torch.zeros(B, device=self.device)
        self.ended = torch.zeros(B, dtype=torch.bool, device=self.device)
        self._terminated = torch.zeros(B, dtype=torch.bool, device=self.device)
        self._truncated = torch.zeros(B, dtype=torch.bool, device=self.device)
        return self.observe()

    def observe(self) -> GraphBatch:
        """Observation of the current state as a :class:`~wsa_lab.contract.GraphBatch` of B graphs.

        Node features per node: ``(demand * N, covered, is_site, x, y, (K - t) / K)`` (``demand * N`` has
        mean 1 over an instance's nodes), then ``coverage_radii`` columns: the uncovered demand ``* N`` within each
        radius of the node (what a site there would cover); edges: node ``i`` receives one edge from each of its k nearest
        neighbours (grouped by target, so ``in_degree = k``), edge feature = the neighbour's distance; mask:
        nodes that are not yet a site; image: demand density, covered demand density, union of coverage discs.
        """
        B, N = self.num_envs, self.num_nodes
        steps_left = ((self.num_sites - self.t).float() / self.num_sites).view(B, 1).expand(B, N)
        node_features = torch.stack(
            [
                self.demand * N,
                self.covered.float(),
                self.is_site.float(),
                self.pos[..., 0],
                self.pos[..., 1],
                steps_left,
            ],
            dim=-1,
        )
        if self.coverage_radii:
            r = self.physical_radius(torch.linspace(0.0, 1.0, self.coverage_radii, device=self.device))
            uncovered = self.demand * (~self.covered).float()
            node_features = torch.cat([node_features, uncovered_within(self.pos, uncovered, r * r) * N], dim=-1)
        image = render_image(
            self.pos, self.demand, self.covered, self.site_radius, self.image_size, self.num_sites
        )
        k = self.neighbors.shape[-1]
        neighbor_pos = self.pos.gather(1, self.neighbors.reshape(B, N * k, 1).expand(B, N * k, 2)).view(B, N, k, 2)
        edge_length = (neighbor_pos - self.pos.unsqueeze(2)).norm(dim=-1)  # [B, N, k]
        device = self.device
        return GraphBatch(
            x=node_features.reshape(B * N, self.node_feature_dim),
            edge_index=knn_edge_index(self.neighbors),
            ptr=torch.arange(0, B * N + 1, N, device=device),
            edge_ptr=torch.arange(0, B * N * k + 1, N * k, device=device),
            action_mask=(~self.is_site).reshape(B * N),
            edge_attr=edge_length.reshape(B * N * k, 1),
            positions=self.pos.reshape(B * N, 2),
            image=image,
            in_degree=k,
        )

    def step(
        self, node: Tensor, radius: Tensor
    ) -> tuple[GraphBatch, Tensor, Tensor, Tensor, dict[str, Any]]:
        """Open one site per env.

        Args:
            node: chosen site node per env (masked nodes are allowed: they re-add a disc).
            radius: action radius per env, clamped to ``[0, 1]``.

        Returns:
            ``(obs, reward, terminated, truncated, info)``. ``info`` holds
            ``episode_return`` and ``episode_length`` (meaningful where
            ``terminated | truncated``) and ``final_obs``: the full-batch observation
            before any autoreset (the returned ``obs`` itself when nothing was reset).
            With ``autoreset=False``, ended envs get reward 0 and keep their flags.

        Shapes:
            - input: ``node`` ``[B]`` long, ``radius`` ``[B]`` or ``[B, 1]``
            - output: reward ``[B]`` float32, terminated/truncated ``[B]`` bool,
              info tensors ``[B]``
        """
        B, N = self.num_envs, self.num_nodes
        node = node.to(self.device).reshape(-1).long()
        radius = radius.to(self.device).reshape(-1)
        if node.shape[0] != B or radius.shape[0] != B:
            raise ValueError(
                f"node and radius must have {B} entries, got {node.shape[0]} and {radius.shape[0]}"
            )
        if bool(((node < 0) | (node >= N)).any()):
            raise ValueError(f"node indices must be in [0, {N - 1}]")

        active = ~self.ended
        arange = torch.arange(B, device=self.device)
        r = self.physical_radius(radius)  # [B]

        # O(B * N): distances from each env's chosen site to the nodes of its instance.
        site_pos = self.pos[arange, node].unsqueeze(1)  # [B, 1, 2]
        in_disc = within_radius(squared_distances(site_pos, self.pos).squeeze(1), r.unsqueeze(1))
        newly = in_disc & ~self.covered & active.unsqueeze(1)
        gain = (self.demand * newly).sum(dim=1)
        reward = torch.where(active, gain - self.cost * r * r, torch.zeros_like(gain))

        self.covered |= newly
        self.is_site[arange, node] |= active
        # Re-opening a site only adds its disc: the union of two concentric discs is the larger.
        old_r = self.site_radius[arange, node]
        self.site_radius[arange, node] = torch.where(active, torch.maximum(old_r, r), old_r)
        self.t += active.long()
        self.episode_return += reward

        all_covered = (self.covered | (self.demand <= 0)).all(dim=1)
        terminated = active & (all_covered | (self.t >= self.num_sites))
        truncated = torch.zeros_like(terminated)
        if self.max_episode_steps is not None:
            truncated = active & ~terminated & (self.t >= self.max_episode_steps)
        self._terminated = torch.where(active, terminated, self._terminated)
        self._truncated = torch.where(active, truncated, self._truncated)
        terminated_out, truncated_out = self._terminated.clone(), self._truncated.clone()
        done = terminated_out | truncated_out

        info: dict[str, Any] = {
            "episode_return": self.episode_return.clone(),
            "episode_length": self.t.clone(),
        }
        obs = self.observe()
        info["final_obs"] = obs
        if self.autoreset and bool(done.any()):
            self._reset_envs(done)
            obs = self.observe()
        elif not self.autoreset:
            self.ended |= done
        return obs, reward.float(), terminated_out, truncated_out, info

    def _reset_envs(self, mask: Tensor) -> None:
        """Replace the envs where ``mask`` [B] is True by fresh instances (no loop over B)."""
        count = int(mask.sum())
        pos, demand, neighbors = self._sample(count)
        self.pos[mask] = pos
        self.demand[mask] = demand
        # Out of place: earlier observations (e.g. info["final_obs"]) share this tensor.
        self.neighbors = self.neighbors.clone()
        self.neighbors[mask] = neighbors
        self.covered[mask] = False
        self.is_site[mask] = False
        self.site_radius[mask] = 0.0
        self.t[mask] = 0
        self.episode_return[mask] = 0.0
        self.ended[mask] = False
        # This step's outputs hold copies of the flags; the new episodes start clean.
        self._terminated &= ~mask
        self._truncated &= ~mask

    # ------------------------------------------------------------------ references
    def reference_returns(self) -> dict[str, Tensor]:
        """Episode returns of the reference policies on the current instances, from their start.

        Played on a copy (this env's episodes are untouched): ``greedy`` (one-step greedy over the unmasked
        sites x ``greedy_radius_grid`` radii) and ``random`` (uniform node and radius, seeded with the env's
        seed); with ``optimum_reference``, ``optimum`` (cached on disk). Shapes: ``{name: [B]}``.
        """
        instances = (self.pos.clone(), self.demand.clone())
        copy = CoverageEnv(
            num_envs=self.num_envs, num_nodes=self.num_nodes, num_sites=self.num_sites, knn_k=self.knn_k,
            r_min=self.r_min, r_max=self.r_max, cost=self.cost, image_size=self.image_size, coverage_radii=0,
            max_episode_steps=self.max_episode_steps, autoreset=False, device=self.device, seed=self.seed,
        )
        references = {
            "greedy": greedy_returns(copy, instances, self.greedy_radius_grid),
            "random": random_returns(copy, instances, self.seed),
        }
        # --- the optional exact optimum (optimum_reference=True); dropped from reference_names (one log line)
        # where the solver is missing or does not prove optimality.
        if "optimum" in self.reference_names:
            optimum = optimum_returns(copy, instances)
            if optimum is None:
                self.reference_names = REFERENCE_NAMES
            else:
                references["optimum"] = optimum
        return references

    # ------------------------------------------------------------------ checkpointing
    _STATE_TENSORS = (
        "pos", "demand", "neighbors", "covered", "is_site", "site_radius", "t", "episode_return", "ended",
        "_terminated", "_truncated",
    )

    def state_dict(self) -> dict[str, Any]:
        """The running state (every episode in flight + the instance generator), for checkpoints.

        Restoring it with :meth:`load_state_dict` on an env built with the same arguments continues
        the exact same stream of episodes. Tensors only (loads with ``torch.load(weights_only=True)``).
        """
        state: dict[str, Any] = {name: getattr(self, name).clone() for name in self._STATE_TENSORS}
        state.update(num_envs=self.num_envs, num_nodes=self.num_nodes, seed=self.seed, generator=self._generator.get_state())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s output (tensors may come from another device)."""
        self.num_envs, self.num_nodes, self.seed = int(state["num_envs"]), int(state["num_nodes"]), int(state["seed"])
        for name in self._STATE_TENSORS:
            setattr(self, name, state[name].to(self.device).clone())
        self._generator.set_state(state["generator"].cpu())
