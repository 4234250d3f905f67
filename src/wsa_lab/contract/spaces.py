"""Reading an env's Gymnasium spaces: what the models are sized from, checked once at start-up.

An env fits the contract when

- its observation space is a ``spaces.Graph`` (node features, edge links, optional edge features), alone or
  as the ``"graph"`` entry of a ``spaces.Dict`` that may also hold ``"action_mask"`` (per node, 1 = may be
  chosen), ``"positions"`` (per node ``(x, y)`` in [0, 1]) and ``"image"`` (``(C, H, W)``, for CNN PTMs).
  Per-node entries are either ``spaces.Sequence(..., stack=True)`` (one entry per node of this step's graph)
  or a fixed-size space over ``max_nodes`` whose first ``n`` entries apply (``MultiBinary(max_nodes)``,
  ``Box((max_nodes, 2))``);
- its action space is a node choice, ``spaces.Discrete(max_nodes)``, alone or with one continuous
  ``spaces.Box`` of any dimension, in a ``spaces.Dict`` or a ``spaces.Tuple``. The node is a local index into
  the nodes of the graph just observed.

:func:`observation_spec` and :func:`action_spec` turn the spaces into the small frozen records the models
and the trainer read; a space that does not fit raises :class:`~wsa_lab.errors.EnvContractError` with one
line that says what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

from wsa_lab.errors import EnvContractError

#: Optional per-step entries of a Dict observation, besides "graph".
OPTIONAL_KEYS = ("action_mask", "positions", "image")
GRAPH_KEY = "graph"

CONTRACT_HINT = "see README 'Your own environment'"


def _feature_width(space: spaces.Space | None, what: str, where: str) -> tuple[int, Optional[int]]:
    """(width, one-hot size or None) of a node or edge space: Box (F,) -> F; Discrete(k) -> k one-hot."""
    if space is None:
        return 0, None
    if isinstance(space, spaces.Box):
        if len(space.shape) != 1:
            raise EnvContractError(f"{where}: {what} must be a 1-d Box (F,), got shape {space.shape}; {CONTRACT_HINT}")
        return int(space.shape[0]), None
    if isinstance(space, spaces.Discrete):
        return int(space.n), int(space.n)
    raise EnvContractError(f"{where}: {what} must be a Box (F,) or a Discrete, got {space}; {CONTRACT_HINT}")


@dataclass(frozen=True)
class PerNode:
    """How a per-node entry is laid out: one item per node (Sequence, stacked) or padded to ``max_nodes``."""

    sequence: bool  # True: Sequence(stack=True), shape (n, ...); False: fixed (max_nodes, ...), first n apply
    item_shape: tuple[int, ...]  # shape of one node's entry: () for a mask, (2,) for a position


@dataclass(frozen=True)
class ObservationSpec:
    """What an observation holds, read from the env's observation space.

    Attributes:
        node_feature_dim: F, width of a node's feature vector (a ``Discrete(k)`` node space: one-hot, F = k).
        edge_feature_dim: D, width of an edge's feature vector (0: no edge features).
        node_one_hot / edge_one_hot: k when the node / edge space is ``Discrete(k)`` (one-hot encoded), else None.
        node_low / node_high, edge_low / edge_high: the node / edge space's bounds (Box only), for the runtime
            observation check.
        mask / positions: layout of those entries, or None when the env does not give them (all nodes may be
            chosen / no positions).
        image_shape: ``(C, H, W)`` of the env's image, or None.
        is_dict: the observation is a Dict (else a bare Graph).
    """

    node_feature_dim: int
    edge_feature_dim: int = 0
    node_one_hot: Optional[int] = None
    edge_one_hot: Optional[int] = None
    node_low: Optional[np.ndarray] = None
    node_high: Optional[np.ndarray] = None
    edge_low: Optional[np.ndarray] = None
    edge_high: Optional[np.ndarray] = None
    mask: Optional[PerNode] = None
    positions: Optional[PerNode] = None
    image_shape: Optional[tuple[int, int, int]] = None
    is_dict: bool = True

    @property
    def has_positions(self) -> bool:
        return self.positions is not None

    @property
    def has_image(self) -> bool:
        return self.image_shape is not None


@dataclass(frozen=True)
class ActionSpec:
    """The hybrid action, read from the env's action space.

    Attributes:
        max_nodes: n of the ``Discrete(n)`` node choice (a graph may have fewer nodes; never more).
        continuous_dim: d of the continuous ``Box`` (0: node choice only).
        low / high: the Box's bounds, ``(d,)``; a dimension with both bounds finite is *bounded*: the policy
            acts in [0, 1] there and :meth:`to_env` maps [0, 1] onto [low, high].
        layout_kind: ``"discrete"`` (a bare Discrete), ``"dict"`` or ``"tuple"``.
        node_key / continuous_key: the Dict keys (or Tuple positions) of the two parts.
    """

    max_nodes: int
    continuous_dim: int = 0
    low: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    high: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    layout_kind: str = "discrete"
    node_key: Any = None
    continuous_key: Any = None
    continuous_shape: tuple[int, ...] = (0,)

    @property
    def bounded(self) -> np.ndarray:
        """``(d,)`` bool: both bounds finite (the policy's mean is squashed into [0, 1] there)."""
        return np.isfinite(self.low) & np.isfinite(self.high)

    def layout(self, node: np.ndarray, continuous: np.ndarray) -> Any:
        """A batch of actions in the vector env's format: node ``(B,)``, continuous ``(B, d)`` in env units."""
        node = np.asarray(node, dtype=np.int64)
        if self.layout_kind == "discrete":
            return node
        parts = {self.node_key: node}
        if self.continuous_key is not None:
            cont = np.asarray(continuous, dtype=np.float32)
            parts[self.continuous_key] = cont.reshape((cont.shape[0], *self.continuous_shape))
        if self.layout_kind == "dict":
            return parts
        return tuple(parts[i] for i in range(len(parts)))

    def policy_to_env(self, continuous: Tensor) -> Tensor:
        """``(B, d)`` policy units -> env units.

        Bounded dimensions are clamped to [0, 1] and mapped onto [low, high]; unbounded ones pass unchanged
        (the env's own clipping applies, CleanRL's convention).
        """
        if self.continuous_dim == 0:
            return continuous
        low = torch.as_tensor(self.low, device=continuous.device)
        high = torch.as_tensor(self.high, device=continuous.device)
        bounded = torch.as_tensor(self.bounded, device=continuous.device)
        scaled = low + continuous.clamp(0.0, 1.0) * (high - low)
        return torch.where(bounded, scaled, continuous)


def observation_spec(space: spaces.Space, where: str = "env") -> ObservationSpec:
    """Check an observation space against the contract and describe it (one-line EnvContractError otherwise)."""
    if isinstance(space, spaces.Graph):
        graph, entries, is_dict = space, {}, False
    elif isinstance(space, spaces.Dict):
        if GRAPH_KEY not in space.spaces or not isinstance(space.spaces[GRAPH_KEY], spaces.Graph):
            raise EnvContractError(
                f"{where}: the observation Dict needs a 'graph' entry that is a gymnasium.spaces.Graph "
                f"(has: {', '.join(map(str, space.spaces)) or 'nothing'}); {CONTRACT_HINT}"
            )
        graph, is_dict = space.spaces[GRAPH_KEY], True
        entries = {k: v for k, v in space.spaces.items() if k != GRAPH_KEY}
        unknown = [k for k in entries if k not in OPTIONAL_KEYS]
        if unknown:
            raise EnvContractError(
                f"{where}: unknown observation entries {unknown}; the Dict may hold 'graph' and "
                f"{', '.join(OPTIONAL_KEYS)} ({CONTRACT_HINT})"
            )
    else:
        raise EnvContractError(
            f"{where}: the observation space must be a gymnasium.spaces.Graph or a Dict with a 'graph' entry, got "
            f"{type(space).__name__}; {CONTRACT_HINT}"
        )
    node_dim, node_one_hot = _feature_width(graph.node_space, "the graph's node_space", where)
    edge_dim, edge_one_hot = _feature_width(graph.edge_space, "the graph's edge_space", where)
    node_low, node_high = _bounds(graph.node_space)
    edge_low, edge_high = _bounds(graph.edge_space)
    mask = _per_node(entries.get("action_mask"), "action_mask", (), where)
    positions = _per_node(entries.get("positions"), "positions", (2,), where)
    image_shape = None
    if "image" in entries:
        image = entries["image"]
        if not isinstance(image, spaces.Box) or len(image.shape) != 3:
            raise EnvContractError(f"{where}: 'image' must be a Box of shape (C, H, W), got {image}; {CONTRACT_HINT}")
        image_shape = tuple(int(s) for s in image.shape)
    return ObservationSpec(
        node_feature_dim=node_dim, edge_feature_dim=edge_dim, node_one_hot=node_one_hot, edge_one_hot=edge_one_hot,
        node_low=node_low, node_high=node_high, edge_low=edge_low, edge_high=edge_high, mask=mask, positions=positions,
        image_shape=image_shape,
        is_dict=is_dict,
    )


def _bounds(space: spaces.Space | None) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """A Box's (low, high) per feature, else (None, None) (a Discrete is one-hot encoded: always in range)."""
    return (space.low, space.high) if isinstance(space, spaces.Box) else (None, None)


def _per_node(space: spaces.Space | None, key: str, item_shape: tuple[int, ...], where: str) -> Optional[PerNode]:
    if space is None:
        return None
    if isinstance(space, spaces.Sequence):
        if not space.stack:
            raise EnvContractError(f"{where}: '{key}' as a Sequence must use stack=True (one array per step); {CONTRACT_HINT}")
        inner = space.feature_space
        shape = () if isinstance(inner, spaces.Discrete) else tuple(inner.shape or ())
        if shape != item_shape:
            raise EnvContractError(f"{where}: each entry of '{key}' must have shape {item_shape}, got {shape}; {CONTRACT_HINT}")
        return PerNode(sequence=True, item_shape=item_shape)
    shape = tuple(space.shape or ())
    if isinstance(space, (spaces.Box, spaces.MultiBinary)) and len(shape) == 1 + len(item_shape) and shape[1:] == item_shape:
        return PerNode(sequence=False, item_shape=item_shape)
    expected = "MultiBinary(max_nodes)" if key == "action_mask" else "Box of shape (max_nodes, 2)"
    raise EnvContractError(
        f"{where}: '{key}' must be a Sequence(..., stack=True) with one entry per node or a {expected}, got {space}; "
        f"{CONTRACT_HINT}"
    )


def action_spec(space: spaces.Space, where: str = "env") -> ActionSpec:
    """Check an action space against the contract: a Discrete node choice + at most one continuous Box."""
    if isinstance(space, spaces.Discrete):
        return ActionSpec(max_nodes=int(space.n))
    if isinstance(space, (spaces.Dict, spaces.Tuple)):
        items = list(space.spaces.items()) if isinstance(space, spaces.Dict) else list(enumerate(space.spaces))
        discrete = [k for k, s in items if isinstance(s, spaces.Discrete)]
        boxes = [k for k, s in items if isinstance(s, spaces.Box)]
        other = [k for k, s in items if not isinstance(s, (spaces.Discrete, spaces.Box))]
        if len(discrete) != 1 or len(boxes) > 1 or other:
            raise EnvContractError(
                f"{where}: the action space must hold one Discrete (the node) and at most one Box (the continuous "
                f"part), got {space}; {CONTRACT_HINT}"
            )
        node_space = space[discrete[0]]
        if int(node_space.start) != 0:
            raise EnvContractError(f"{where}: the node choice must be Discrete(n) starting at 0, got start={node_space.start}")
        spec: dict[str, Any] = {"max_nodes": int(node_space.n), "node_key": discrete[0],
                                "layout_kind": "dict" if isinstance(space, spaces.Dict) else "tuple"}
        if boxes:
            box = space[boxes[0]]
            spec.update(
                continuous_dim=int(np.prod(box.shape)), low=box.low.reshape(-1).astype(np.float32),
                high=box.high.reshape(-1).astype(np.float32), continuous_key=boxes[0], continuous_shape=tuple(box.shape),
            )
        return ActionSpec(**spec)
    raise EnvContractError(
        f"{where}: the action space must be a Discrete node choice, or a Dict/Tuple of one Discrete and at most one "
        f"Box, got {type(space).__name__}; {CONTRACT_HINT}"
    )
