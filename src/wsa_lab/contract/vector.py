"""Vector envs the trainer steps: the batched protocol, and Gymnasium envs through gymnasium's vector envs.

The trainer talks to one object of the :class:`VectorGraphEnv` protocol: B envs stepped together, observations
as one :class:`~wsa_lab.contract.GraphBatch`, actions as tensors. Two kinds implement it:

- a batched torch env written for it (the built-in ``CoverageEnv``: every step is a few tensor ops over the
  batch, no Python loop over envs);
- any Gymnasium env of the contract (``spaces.Graph`` observations, node + continuous action), through
  :class:`GymVectorGraphEnv` (``env=gym``): gymnasium's ``SyncVectorEnv`` (default) or ``AsyncVectorEnv``
  (one process per env, for slow Python envs), with same-step autoreset, its observations checked and joined
  into a GraphBatch.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
import os
import warnings
from typing import Any, Optional, Protocol, Sequence, runtime_checkable

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.envs.registration import load_env_creator
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv
from torch import Tensor

from wsa_lab.contract.batch import GraphBatch, offsets
from wsa_lab.contract.spaces import GRAPH_KEY, ActionSpec, ObservationSpec, action_spec, observation_spec
from wsa_lab.errors import ConfigError, EnvContractError, EnvError
from wsa_lab.config.strict import unknown_key_error

log = logging.getLogger(__name__)

VECTORIZATION = ("sync", "async")


@runtime_checkable
class VectorGraphEnv(Protocol):
    """What the trainer needs from an env: B envs stepped together with same-step autoreset.

    - ``reset(seed)`` -> the first observations; with a seed, the same seed gives the same episodes.
    - ``step(node (B,) long, continuous (B, d) in env units)`` -> ``(obs, reward (B,), terminated (B,),
      truncated (B,), info)``. An env whose episode ended starts its next one in the same call (``obs`` is
      the new episode's first observation); ``info["final_obs"]`` is the batch of observations before any
      reset, ``info["episode_return"]`` / ``info["episode_length"]`` (B,) are meaningful where an episode ended.
    - ``single_observation_space`` / ``single_action_space``: one env's Gymnasium spaces (the contract).

    Optional: ``reference_names`` + ``reference_returns()`` (``{name: (B,)}`` episode returns of the env's
    reference policies on the episodes just reset), ``state_dict()`` / ``load_state_dict()`` (resume episodes
    in flight), ``close()``.
    """

    num_envs: int
    device: torch.device

    @property
    def single_observation_space(self) -> spaces.Space: ...

    @property
    def single_action_space(self) -> spaces.Space: ...

    def reset(self, seed: Optional[int] = None) -> GraphBatch: ...

    def step(self, node: Tensor, continuous: Tensor) -> tuple[GraphBatch, Tensor, Tensor, Tensor, dict[str, Any]]: ...


def env_label(env: Any) -> str:
    """How errors name an env: the Gymnasium id, else the class."""
    return getattr(env, "env_id", None) or type(env).__name__


def specs(env: Any) -> tuple[ObservationSpec, ActionSpec]:
    """The env's observation and action specs (start-up check of its spaces: one-line EnvContractError)."""
    where = f"env {env_label(env)}"
    obs = observation_spec(env.single_observation_space, where)
    act = action_spec(env.single_action_space, where)
    return obs, act


# ---------------------------------------------------------------------------------------------- Gymnasium
def _one_hot(values: np.ndarray, size: int) -> np.ndarray:
    return np.eye(size, dtype=np.float32)[np.asarray(values, dtype=np.int64).reshape(-1)]


class GymVectorGraphEnv:
    """A Gymnasium env of the graph env contract, vectorised: ``env=gym env.id=<id> +env.kwargs.<key>=...``.

    Args:
        id: the env's Gymnasium id. ``"my_pkg.envs:MyEnv-v0"`` imports ``my_pkg.envs`` first (where it calls
            ``gymnasium.register``), the usual way a user's package registers its envs.
        kwargs: keyword arguments for the env's constructor (``gymnasium.make(id, **kwargs)``).
        entry_point: ``"my_pkg.envs:MyEnv"``, to name the env's class instead of registering it: wsa_lab then
            registers ``id`` with it.
        vectorization: ``sync`` (one process, envs stepped in turn) or ``async`` (one process per env, for slow
            Python envs; observations are pickled between processes).
        max_episode_steps: truncate episodes after this many steps (``gymnasium.make``'s TimeLimit); null = the
            registration's.
        num_envs, seed, device: set by wsa_lab (from ``algo.num_envs``, ``seed``, ``device``).

    Resume: if the env defines ``state_dict()`` / ``load_state_dict(state)`` (sync only), episodes in flight are
    restored; otherwise they restart from seeds derived from the run's seed and step (see README).
    """

    def __init__(
        self,
        id: str,
        kwargs: Optional[dict[str, Any]] = None,
        entry_point: Optional[str] = None,
        vectorization: str = "sync",
        max_episode_steps: Optional[int] = None,
        num_envs: int = 1,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        if vectorization not in VECTORIZATION:
            raise ConfigError(f"env.vectorization must be one of {list(VECTORIZATION)}, got {vectorization!r}")
        if max_episode_steps is not None and max_episode_steps < 1:
            raise ConfigError(f"env.max_episode_steps must be null or >= 1, got {max_episode_steps}")
        self.env_id = id
        self.kwargs = dict(kwargs or {})
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.seed = seed
        self.vectorization = vectorization
        register_entry_point(id, entry_point)
        check_env_kwargs(id, self.kwargs)
        make_kwargs = dict(self.kwargs)
        if max_episode_steps is not None:
            make_kwargs["max_episode_steps"] = max_episode_steps

        def make() -> gymnasium.Env:
            return StepTypeCheck(gymnasium.make(id, **make_kwargs), id)

        trainer = os.getpid()

        def make_worker() -> gymnasium.Env:
            # An async worker leaves stopping to the trainer: in a process group of its own, a Ctrl-C or SIGTERM sent
            # to the run's group does not end it mid-step; the trainer checkpoints, then closes it. (AsyncVectorEnv
            # also calls this once in the trainer's process, for the spaces: that one stays where it is.)
            if os.getpid() != trainer:
                os.setpgid(0, 0)
            return make()

        fns = [make if vectorization == "sync" else make_worker] * num_envs
        try:
            if vectorization == "sync":
                self.vec = SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
            else:
                self.vec = AsyncVectorEnv(fns, shared_memory=False, autoreset_mode=AutoresetMode.SAME_STEP)
        except gymnasium.error.Error as exc:
            raise ConfigError(f"env.id={id!r}: {exc}") from exc
        self._single_obs = self.vec.single_observation_space
        self._single_act = self.vec.single_action_space
        self.obs_spec, self.act_spec = specs(self)
        probe = self.vec.envs[0].unwrapped if vectorization == "sync" else gymnasium.make(id, **make_kwargs).unwrapped
        self.reference_names: tuple[str, ...] = tuple(getattr(probe, "reference_names", ()) or ())
        self._has_references = callable(getattr(probe, "reference_returns", None))
        self._has_state = vectorization == "sync" and callable(getattr(probe, "state_dict", None))
        if vectorization != "sync":
            probe.close()
        self.steps = 0  # vector steps since construction (for error messages)
        self._returns = np.zeros(num_envs, dtype=np.float64)
        self._lengths = np.zeros(num_envs, dtype=np.int64)

    # ------------------------------------------------------------------ protocol
    @property
    def single_observation_space(self) -> spaces.Space:
        return self._single_obs

    @property
    def single_action_space(self) -> spaces.Space:
        return self._single_act

    def reset(self, seed: Optional[int] = None) -> GraphBatch:
        """New episodes in every env; ``seed`` s seeds env i with s + i (Gymnasium's vector convention)."""
        if seed is not None:
            self.seed = seed
        obs, _ = self._guard("reset", lambda: self.vec.reset(seed=seed))
        self._returns[:] = 0.0
        self._lengths[:] = 0
        return self.to_batch(self._split(obs), "reset")

    def step(self, node: Tensor, continuous: Tensor) -> tuple[GraphBatch, Tensor, Tensor, Tensor, dict[str, Any]]:
        action = self.act_spec.layout(node.detach().cpu().numpy(), continuous.detach().float().cpu().numpy())
        obs, reward, terminated, truncated, infos = self._guard("step", lambda: self.vec.step(action))
        self.steps += 1
        reward = np.asarray(reward, dtype=np.float64)
        bad = ~np.isfinite(reward)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise EnvError(f"env {self.env_id} (env {i} of {self.num_envs}) returned reward {reward[i]} at its step {self.steps}")
        done = np.asarray(terminated, dtype=bool) | np.asarray(truncated, dtype=bool)
        self._returns += reward
        self._lengths += 1
        info: dict[str, Any] = {
            "episode_return": torch.as_tensor(self._returns.copy(), dtype=torch.float32, device=self.device),
            "episode_length": torch.as_tensor(self._lengths.copy(), device=self.device),
        }
        current = self._split(obs)
        final = list(current)
        if done.any():
            finals, has_final = infos.get("final_obs"), infos.get("_final_obs")
            for i in np.flatnonzero(done):
                if has_final is None or not has_final[i]:
                    raise EnvError(f"env {self.env_id}: episode end without final_obs (vector env not in same-step autoreset)")
                final[i] = finals[i]
            self._returns[done] = 0.0
            self._lengths[done] = 0
        batch = self.to_batch(current, "step")
        info["final_obs"] = self.to_batch(final, "step", final=True) if done.any() else batch
        return (
            batch,
            torch.as_tensor(reward, dtype=torch.float32, device=self.device),
            torch.as_tensor(np.asarray(terminated, dtype=bool), device=self.device),
            torch.as_tensor(np.asarray(truncated, dtype=bool), device=self.device),
            info,
        )

    def reference_returns(self) -> dict[str, Tensor]:
        """``{name: (B,)}`` from each env's ``reference_returns()`` (its current episode), if it has them."""
        if not self._has_references:
            return {}
        per_env = self._guard("reference_returns", lambda: self.vec.call("reference_returns"))
        names = self.reference_names or tuple(per_env[0])
        try:
            return {n: torch.tensor([float(r[n]) for r in per_env], device=self.device) for n in names}
        except (KeyError, TypeError, ValueError) as exc:
            raise EnvError(f"env {self.env_id}: reference_returns() must return {{name: float}} for {list(names)}: {exc}") from exc

    def state_dict(self) -> dict[str, Any]:
        """Each env's own ``state_dict()`` (sync vectorization) and the episode counters; ``{}`` if none."""
        if not self._has_state:
            return {}
        envs = [env.get_wrapper_attr("state_dict")() for env in self.vec.envs]
        return {"envs": envs, "returns": torch.from_numpy(self._returns.copy()), "lengths": torch.from_numpy(self._lengths.copy())}

    def load_state_dict(self, state: dict[str, Any]) -> bool:
        """Restore :meth:`state_dict`'s output; False when there is nothing to restore (episodes restart)."""
        if not state or not self._has_state:
            return False
        self.vec.reset()  # gymnasium's OrderEnforcing refuses steps before a reset, even after the state is set
        for env, env_state in zip(self.vec.envs, state["envs"]):
            env.get_wrapper_attr("load_state_dict")(env_state)
        self._returns[:] = state["returns"].numpy()
        self._lengths[:] = state["lengths"].numpy()
        return True

    def close(self) -> None:
        """Close the envs (async: end the workers). A worker that already died is not a second error: the
        first one (the env's own, or the signal that stopped the run) is what the user sees."""
        workers = getattr(self.vec, "processes", ())
        try:
            self.vec.close(terminate=any(not process.is_alive() for process in workers))
        except Exception as exc:  # noqa: BLE001 - closing after a failure; the failure itself was reported
            log.warning("env %s: closing its envs: %s: %s", self.env_id, type(exc).__name__, exc)
            for process in workers:
                if process.is_alive():
                    process.kill()

    # ------------------------------------------------------------------ helpers
    def _guard(self, what: str, fn: Any) -> Any:
        """Run an env call; whatever the user's env raises becomes one EnvError naming the env and step."""
        try:
            if self.vectorization == "sync":
                return fn()
            with warnings.catch_warnings(record=True) as worker_reports:
                # An async worker's error arrives as gymnasium UserWarnings holding its traceback, then is raised
                # here: the one-line EnvError below says it; the traceback goes to the debug log
                warnings.simplefilter("always")
                try:
                    return fn()
                finally:
                    for report in worker_reports:
                        if report.filename.endswith("async_vector_env.py"):
                            log.debug("env %s: %s", self.env_id, report.message)
                        else:
                            warnings.warn_explicit(report.message, report.category, report.filename, report.lineno)
        except (EnvError, EnvContractError):
            raise
        except (SystemExit, KeyboardInterrupt) as exc:
            if type(exc) not in (SystemExit, KeyboardInterrupt):
                raise  # wsa_lab's own stop (a signal while training): not the env's doing
            raise EnvError(f"env {self.env_id} raised {type(exc).__name__}({exc}) in its {self._where(what)}") from exc
        except Exception as exc:  # noqa: BLE001 - a user's env can raise anything
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise EnvError(f"env {self.env_id} raised {type(exc).__name__} in its {self._where(what)}: {first[:300]}") from exc

    def _where(self, what: str) -> str:
        return f"step {self.steps + 1}" if what == "step" else what

    def _split(self, obs: Any) -> list[Any]:
        """The vector env's batched observation as one observation per env."""
        if not self.obs_spec.is_dict:
            return list(obs)
        out = []
        for i in range(self.num_envs):
            out.append({key: value[i] for key, value in obs.items()})
        return out

    def to_batch(self, observations: Sequence[Any], where: str, final: bool = False) -> GraphBatch:
        """One GraphBatch from per-env observations, checked against the contract (EnvError naming the env).

        ``final``: the last observations of finished episodes, which are valued (truncation) but never acted on,
        so they may have no node left, or no node left to pick.
        """
        spec, max_nodes = self.obs_spec, self.act_spec.max_nodes
        xs, links, edge_feats, masks, positions, images = [], [], [], [], [], []
        node_counts, edge_counts = [], []
        for i, obs in enumerate(observations):
            label = f"env {self.env_id} (env {i} of {self.num_envs}) at its {where if where == 'reset' else f'step {self.steps}'}"
            graph = obs[GRAPH_KEY] if spec.is_dict else obs
            if not isinstance(graph, spaces.GraphInstance):
                raise EnvError(f"{label}: the observation's graph is a {type(graph).__name__}, not a gymnasium GraphInstance")
            nodes = np.asarray(graph.nodes)
            nodes = _one_hot(nodes, spec.node_one_hot) if spec.node_one_hot else nodes.astype(np.float32, copy=False)
            n = nodes.shape[0]
            if nodes.ndim != 2 or nodes.shape[1] != spec.node_feature_dim:
                raise EnvError(f"{label}: node features of shape {nodes.shape}, expected (n, {spec.node_feature_dim})")
            if n < (0 if final else 1) or n > max_nodes:
                raise EnvError(f"{label}: a graph of {n} nodes; it must have 1..{max_nodes} (the action space's Discrete)")
            if not np.isfinite(nodes).all():
                raise EnvError(f"{label}: node features hold NaN or Inf")
            _check_bounds(nodes, spec.node_low, spec.node_high, "node", label)
            link = _edge_links(graph.edge_links, n, label)
            if spec.edge_feature_dim:
                feats = graph.edges
                if feats is None:
                    feats = np.zeros((link.shape[0], spec.edge_feature_dim), dtype=np.float32)
                elif spec.edge_one_hot:
                    feats = _one_hot(feats, spec.edge_one_hot)
                feats = np.asarray(feats, dtype=np.float32)
                if feats.size != link.shape[0] * spec.edge_feature_dim:
                    raise EnvError(
                        f"{label}: edge features of shape {feats.shape} for {link.shape[0]} edge_links; give one row of "
                        f"{spec.edge_feature_dim} features per edge"
                    )
                feats = feats.reshape(link.shape[0], spec.edge_feature_dim)
                if not np.isfinite(feats).all():
                    raise EnvError(f"{label}: edge features hold NaN or Inf")
                _check_bounds(feats, spec.edge_low, spec.edge_high, "edge", label)
                edge_feats.append(feats)
            mask = np.ones(n, dtype=bool)
            if spec.mask is not None:
                raw = np.asarray(obs["action_mask"]).reshape(-1)
                raw = raw if spec.mask.sequence else raw[:n]
                if raw.shape[0] != n:
                    raise EnvError(f"{label}: action_mask has {raw.shape[0]} entries for {n} nodes")
                mask = raw.astype(bool)
                # a finished episode's last observation is never acted on: it may leave nothing to pick
                if not mask.any() and not final:
                    raise EnvError(f"{label}: action_mask allows no node; every observation needs at least one choice")
            if spec.positions is not None:
                pos = np.asarray(obs["positions"], dtype=np.float32).reshape(-1, 2)
                pos = pos if spec.positions.sequence else pos[:n]
                if pos.shape[0] != n or not np.isfinite(pos).all() or (pos < 0).any() or (pos > 1).any():
                    raise EnvError(f"{label}: positions must be (n, 2) = ({n}, 2) values in [0, 1]")
                positions.append(pos)
            if spec.image_shape is not None:
                image = np.asarray(obs["image"], dtype=np.float32)
                if image.shape != spec.image_shape or not np.isfinite(image).all():
                    raise EnvError(f"{label}: image must be finite with shape {spec.image_shape}, got {image.shape}")
                images.append(image)
            xs.append(nodes)
            links.append(link)
            masks.append(mask)
            node_counts.append(n)
            edge_counts.append(link.shape[0])
        node_start = np.concatenate([[0], np.cumsum(node_counts)[:-1]]).astype(np.int64)
        edge_index = np.concatenate([link + s for link, s in zip(links, node_start)]).T
        dev = self.device
        as_t = lambda a, **kw: torch.as_tensor(np.ascontiguousarray(a), device=dev, **kw)  # noqa: E731
        return GraphBatch(
            x=as_t(np.concatenate(xs), dtype=torch.float32),
            edge_index=as_t(edge_index.reshape(2, -1), dtype=torch.long),
            ptr=offsets(torch.tensor(node_counts, dtype=torch.long)).to(dev),
            edge_ptr=offsets(torch.tensor(edge_counts, dtype=torch.long)).to(dev),
            action_mask=as_t(np.concatenate(masks)),
            edge_attr=as_t(np.concatenate(edge_feats), dtype=torch.float32) if spec.edge_feature_dim else None,
            positions=as_t(np.concatenate(positions), dtype=torch.float32) if positions else None,
            image=as_t(np.stack(images), dtype=torch.float32) if images else None,
        )


def _check_bounds(values: np.ndarray, low: Optional[np.ndarray], high: Optional[np.ndarray], what: str, label: str) -> None:
    """Node or edge features inside their Box (one EnvError naming the first value outside)."""
    if low is None or high is None:
        return
    outside = (values < low) | (values > high)
    if outside.any():
        row, col = np.argwhere(outside)[0]
        raise EnvError(
            f"{label}: {what} {row} feature {col} = {values[row, col]:.4g} is outside the {what} space "
            f"[{low[col]:.4g}, {high[col]:.4g}]"
        )


def _edge_links(edge_links: Any, n: int, label: str) -> np.ndarray:
    """A graph's edge links as (m, 2) int64 node ids in [0, n); whole numbers only (1.5 is no node)."""
    if edge_links is None:
        return np.zeros((0, 2), dtype=np.int64)
    raw = np.asarray(edge_links)
    if raw.size and (raw.dtype.kind not in "iuf" or (raw.dtype.kind == "f" and not np.array_equal(raw, np.round(raw)))):
        raise EnvError(f"{label}: edge_links must be whole-number node ids, got {raw.dtype} values such as {raw.reshape(-1)[0]!r}")
    link = raw.astype(np.int64)
    if link.size and (link.ndim != 2 or link.shape[1] != 2 or link.min() < 0 or link.max() >= n):
        raise EnvError(f"{label}: edge_links must be (m, 2) node ids in [0, {n - 1}]")
    return link.reshape(-1, 2)


class StepTypeCheck(gymnasium.Wrapper):
    """Every step's reward is a real number and its flags are booleans.

    Gymnasium's vector envs store them into float and bool arrays, which turns ``"1.0"`` into 1.0 and ``"yes"``
    into True without a word, and its passive env checker looks at the first step only.
    """

    def __init__(self, env: gymnasium.Env, env_id: str) -> None:
        super().__init__(env)
        self.env_id = env_id

    def step(self, action: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if isinstance(reward, (bool, np.bool_)) or not isinstance(reward, (int, float, np.integer, np.floating)):
            raise EnvError(f"env {self.env_id}: step() returned reward {reward!r} of type {type(reward).__name__}; it must be a float")
        for name, flag in (("terminated", terminated), ("truncated", truncated)):
            if not isinstance(flag, (bool, np.bool_)):
                raise EnvError(f"env {self.env_id}: step() returned {name}={flag!r} of type {type(flag).__name__}; it must be a bool")
        return obs, reward, terminated, truncated, info


def register_entry_point(env_id: str, entry_point: Optional[str]) -> None:
    """Register ``env_id`` with ``entry_point`` (a class named in the config) unless it is registered already."""
    if entry_point is None:
        return
    if env_id in gymnasium.registry:
        if gymnasium.registry[env_id].entry_point != entry_point:
            raise ConfigError(
                f"env.id={env_id!r} is already registered with entry point {gymnasium.registry[env_id].entry_point!r}, "
                f"not env.entry_point={entry_point!r}; choose another id"
            )
        return
    gymnasium.register(id=env_id, entry_point=entry_point)


def check_env_kwargs(env_id: str, kwargs: dict[str, Any]) -> None:
    """`env.id` must be registered (importing its module first for "module:Id") and `env.kwargs` must be
    arguments of its constructor (one-line ConfigErrors, with a did-you-mean)."""
    module, _, name = env_id.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - the user's package failing to import, whatever the reason
            raise ConfigError(f"env.id={env_id!r}: cannot import {module!r} ({type(exc).__name__}: {exc})") from exc
    try:
        spec = gymnasium.spec(name)
    except gymnasium.error.Error as exc:
        raise ConfigError(
            f"env.id={env_id!r} is not a registered Gymnasium env ({exc}); register it in your package and name the "
            "package first (env.id=my_pkg:MyEnv-v0), or set env.entry_point=my_pkg.module:MyEnvClass"
        ) from exc
    try:
        creator = spec.entry_point if callable(spec.entry_point) else load_env_creator(spec.entry_point)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"env.id={env_id!r}: cannot load its entry point {spec.entry_point!r} ({exc})") from exc
    params = inspect.signature(creator).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    for key in kwargs:
        if key not in params:
            raise unknown_key_error(key, [p for p in params if p != "self"], "env.kwargs")


def ratio_to_reference(agent: float, reference: float) -> float:
    """The agent's return as a fraction of a reference's: 1 = as good, higher = better, whatever the sign.

    ``agent / reference`` for a positive reference (e.g. covered demand); ``2 - agent / reference`` for a
    negative one (costs, e.g. ``-makespan``: ``1 - (makespan / reference makespan - 1)``, so the makespan
    gap is ``1 - ratio``); both equal ``1 + (agent - reference) / |reference|``. NaN for a zero reference.
    """
    if reference == 0 or not math.isfinite(reference):
        return float("nan")
    return agent / reference if reference > 0 else 2.0 - agent / reference
