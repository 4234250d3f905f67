"""Evaluation suites: named conditions that change a run's env config, played on held-out episodes.

A suite (``conf/eval_env/<name>.yaml``) maps condition names to a :class:`ConditionSpec`. A condition starts
from the run's env config (``cfg.env``: any env of the graph env contract, e.g. ``env=coverage``,
``env=gym env.id=...``, ``env=jobshop``) and changes it:

- ``scale``: multiply numeric keys (``num_nodes: 2``); nested or dotted keys reach into mappings, e.g.
  ``kwargs.num_jobs: 2`` for a Gymnasium env whose constructor arguments live under ``env.kwargs``.
  Integers round half up (at least 1); a null value stays null;
- ``env``: replace keys, merged into nested mappings (``env: {kwargs: {num_jobs: 8}}`` changes one argument);
- coverage env only (``env=coverage``), played by :class:`~wsa_lab.envs.ShiftedCoverageEnv`: ``demand_sigma`` (log-std of
  the log-normal demand weights: the generator's is 1, 0 gives uniform demand, 2 a heavier tail; positions
  are those drawn without it) and ``country`` / ``min_population`` (the country's ``num_nodes`` most
  populous cities, :mod:`wsa_lab.envs.cities`, instead of generated instances: one instance).

The condition's env is built like the run's own (:func:`wsa_lab.build.make_env`) with ``num_envs`` = the
evaluation's ``num_instances`` (a city condition: 1) and ``seed`` = the evaluation's seed; its held-out
episodes are the ones ``reset(seed)`` starts, the same for every run of a comparison. What wsa_lab sets
itself (``num_envs``, ``seed``, ``device``) cannot change, and the condition's env must read and act like
the one the agent was trained on (:meth:`PreparedCondition.check_agent`: node and edge feature widths,
image shape, positions, continuous action dim); graph sizes may differ. :func:`prepare_condition` builds
the env and its reference returns once; callers cache it per condition (see :func:`condition_key`).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from wsa_lab.build import close_env, make_env
from wsa_lab.config.validate import ENV_KWARGS_SET_BY_WSA_LAB, check_kwargs, env_target
from wsa_lab.contract import ActionSpec, ObservationSpec, VectorGraphEnv, specs
from wsa_lab.envs import CoverageEnv
from wsa_lab.envs.shifted import DEFAULT_MIN_POPULATION
from wsa_lab.errors import ConfigError
from wsa_lab.rl.evaluation import Evaluator
from wsa_lab.config.strict import structured

#: The coverage-only condition fields (a ConfigError for other envs).
COVERAGE_FIELDS = ("demand_sigma", "country", "min_population")
SHIFTED_COVERAGE_TARGET = "wsa_lab.envs.ShiftedCoverageEnv"


@dataclass
class ConditionSpec:
    """One condition of a suite, as written in ``conf/eval_env/<suite>.yaml``."""

    scale: dict = field(default_factory=dict)  # env key (nested or dotted) -> factor on the run's value
    env: dict = field(default_factory=dict)  # env key (nested or dotted) -> value (applied after scale)
    demand_sigma: Optional[float] = None  # coverage: log-std of log-normal demand; 0 = uniform; null = generator's (1)
    country: Optional[str] = None  # coverage: ISO 3166-1 alpha-2 code, that country's cities instead of generated ones
    min_population: Optional[int] = None  # coverage, with country: smallest city kept (500, 1000, 5000; null = 15000)


@dataclass(frozen=True)
class Condition:
    """A condition resolved against a run's env config: the exact env config it plays.

    Fields:
        name: the condition's name in the suite.
        env: the env config (``_target_`` and constructor arguments, without num_envs/seed/device).
        changed: dotted key -> new value, for every key the condition changes (its short description).
        num_envs: envs to play when the condition fixes it (a city: 1); None = the evaluation's num_instances.
    """

    name: str
    env: dict[str, Any]
    changed: dict[str, Any] = field(default_factory=dict)
    num_envs: Optional[int] = None

    def describe(self) -> dict[str, Any]:
        """JSON-ready description: the env config played (``_target_`` and coverage-only fields apart) and the
        changes; the coverage env also gets ``demand_sigma`` (or ``country`` / ``min_population``) as before."""
        coverage = _is_coverage(self.env)
        hidden = ("_target_", *(COVERAGE_FIELDS if coverage else ()))
        out: dict[str, Any] = {"env": {k: v for k, v in self.env.items() if k not in hidden}, "changed": dict(self.changed)}
        if coverage:
            if self.env.get("country") is not None:
                out.update(country=self.env["country"], min_population=self.env["min_population"])
            else:
                sigma = self.env.get("demand_sigma")
                out["demand_sigma"] = 1.0 if sigma is None else sigma
        return out

    def config(self) -> DictConfig:
        """A config holding this condition's ``env`` (what :func:`wsa_lab.build.make_env` reads)."""
        return OmegaConf.create({"env": copy.deepcopy(self.env)})


# ---------------------------------------------------------------------------------------------- resolving
def _is_coverage(env: Mapping[str, Any]) -> bool:
    """Whether ``env._target_`` names the built-in coverage env (or a subclass)."""
    target = env_target(OmegaConf.create({"_target_": env.get("_target_")}))
    return isinstance(target, type) and issubclass(target, CoverageEnv)


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"kwargs": {"a": 1}, "b.c": 2}`` -> ``{"kwargs.a": 1, "b.c": 2}`` (leaves only; an empty mapping: none)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _parent(env: dict[str, Any], path: str, where: str, create: bool) -> tuple[dict[str, Any], str]:
    """The mapping that holds ``path``'s last part (created on the way when ``create``), and that part."""
    *parents, leaf = path.split(".")
    node = env
    for i, part in enumerate(parents):
        child = node.get(part)
        if child is None and create:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{where}.{path}: the run's env config has no mapping at {'.'.join(parents[: i + 1])}")
        node = child
    return node, leaf


def _scaled(current: Any, factor: Any, where: str) -> Any:
    """``current * factor``: integers round half up (at least 1), null stays null."""
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor <= 0:
        raise ConfigError(f"{where}: expected a positive number, got {factor!r}")
    if current is None:
        return None  # e.g. max_episode_steps: null stays null
    if isinstance(current, bool) or not isinstance(current, (int, float)):
        raise ConfigError(f"{where}: the run's value {current!r} is not a number to scale; set it with env: instead")
    if isinstance(current, int):
        return max(1, math.floor(current * factor + 0.5))
    return float(current * factor)


def _check_top_keys(keys: list[str], env: Mapping[str, Any], where: str) -> None:
    """A condition may not touch what wsa_lab sets, nor a key the env's class does not take (did-you-mean)."""
    for key in keys:
        if key in ENV_KWARGS_SET_BY_WSA_LAB or key == "_target_":
            raise ConfigError(f"{where}.{key}: cannot be changed by an evaluation condition (wsa_lab sets it)")
    target = env_target(OmegaConf.create(dict(env)))
    check_kwargs(target, OmegaConf.create(dict.fromkeys(keys)), where, ENV_KWARGS_SET_BY_WSA_LAB)


def _apply(env: dict[str, Any], changes: Mapping[str, Any], where: str, scale: bool) -> dict[str, Any]:
    """Apply one part of a condition (``scale`` or ``env``) to ``env`` in place; return the changed leaves."""
    flat = _flatten(changes)
    if not flat:
        return {}
    _check_top_keys(list(dict.fromkeys(path.split(".")[0] for path in flat)), env, where)
    applied = {}
    for path, value in flat.items():
        parent, leaf = _parent(env, path, where, create=not scale)
        if scale:
            if leaf not in parent:
                raise ConfigError(f"{where}.{path}: the run's env config has no value to scale; set it with env: instead")
            value = _scaled(parent[leaf], value, f"{where}.{path}")
        parent[leaf] = value
        applied[path] = value
    return applied


def _coverage_shift(name: str, spec: ConditionSpec, env: dict[str, Any]) -> tuple[dict[str, Any], Optional[int]]:
    """The coverage-only fields as ShiftedCoverageEnv arguments (changes made, num_envs fixed or None)."""
    where = f"eval_env.conditions.{name}"
    given = {k: getattr(spec, k) for k in COVERAGE_FIELDS if getattr(spec, k) is not None}
    if not given:
        return {}, None
    if not _is_coverage(env):
        raise ConfigError(
            f"{where}: {', '.join(given)} applies to the built-in coverage env (env=coverage) only; this run's env is "
            f"{env.get('id') or env.get('_target_')} (use scale: / env: to change its config)"
        )
    # (their values are checked by ShiftedCoverageEnv, as any env checks its arguments)
    if spec.min_population is not None and spec.country is None:
        raise ConfigError(f"{where}.min_population: applies to country conditions only")
    env["_target_"] = SHIFTED_COVERAGE_TARGET
    if spec.country is not None:
        given["min_population"] = spec.min_population or DEFAULT_MIN_POPULATION
    env.update(given)
    return given, 1 if spec.country is not None else None


def resolve_condition(
    name: str, spec: ConditionSpec, base_env: Mapping[str, Any], overrides: Optional[Mapping[str, Any]] = None
) -> Condition:
    """Apply ``spec`` to the run's env config ``base_env`` (``cfg.env``), then the evaluation-wide ``overrides``
    (``conf/evaluate.yaml``'s ``env``, replaced like a condition's ``env``)."""
    where = f"eval_env.conditions.{name}"
    env = copy.deepcopy(dict(base_env))
    changed = _apply(env, spec.scale, f"{where}.scale", scale=True)
    changed.update(_apply(env, spec.env, f"{where}.env", scale=False))
    changed.update(_apply(env, overrides or {}, "evaluate env", scale=False))
    shift, num_envs = _coverage_shift(name, spec, env)
    changed.update(shift)
    return Condition(name, env, changed, num_envs)


def build_conditions(
    conditions: Mapping[str, Any] | DictConfig,
    base_env: Mapping[str, Any] | DictConfig,
    overrides: Optional[Mapping[str, Any]] = None,
) -> list[Condition]:
    """Every condition of a suite, resolved against ``base_env``, in the suite's order."""
    if isinstance(conditions, DictConfig):
        conditions = OmegaConf.to_container(conditions, resolve=True)
    if isinstance(base_env, DictConfig):
        base_env = OmegaConf.to_container(base_env, resolve=True)
    if not conditions:
        raise ConfigError("eval_env.conditions: the suite has no conditions")
    return [
        resolve_condition(str(name), structured(ConditionSpec, spec, f"eval_env.conditions.{name}"), base_env, overrides)
        for name, spec in conditions.items()
    ]


def condition_key(condition: Condition, **settings: Any) -> str:
    """A cache key: two runs whose conditions resolve to the same env config share its env and references."""
    return json.dumps({"env": condition.env, "num_envs": condition.num_envs, **settings}, sort_keys=True, default=str)


# ---------------------------------------------------------------------------------------------- preparing
@dataclass
class PreparedCondition:
    """A condition's env on its held-out episodes and their reference returns (computed once, shared by every run).

    ``evaluator`` (:class:`~wsa_lab.rl.Evaluator`) holds the evaluation seed, the env's reference names and
    their mean returns on the episodes ``env.reset(seed)`` starts.
    """

    condition: Condition
    env: VectorGraphEnv
    evaluator: Evaluator
    observation_spec: ObservationSpec
    action_spec: ActionSpec

    @property
    def num_instances(self) -> int:
        return int(self.env.num_envs)

    @property
    def reference_names(self) -> list[str]:
        return list(self.evaluator.reference_names)

    def check_agent(self, trained: tuple[ObservationSpec, ActionSpec]) -> None:
        """One-line ConfigError when the condition's env does not read or act like the agent's training env."""
        differences = spec_differences(trained, (self.observation_spec, self.action_spec))
        if differences:
            raise ConfigError(
                f"eval_env condition {self.condition.name!r}: its env does not fit the trained agent "
                f"({'; '.join(differences)}); a condition may change graph sizes, not what the agent reads or outputs"
            )

    def close(self) -> None:
        close_env(self.env)


def spec_differences(trained: tuple[ObservationSpec, ActionSpec], other: tuple[ObservationSpec, ActionSpec]) -> list[str]:
    """What differs, between two envs' specs, in what a trained agent is sized from (``"image (3, 64, 64), trained
    on (3, 32, 32)"``); graph sizes (nodes, edges, ``max_nodes``) are free."""
    (obs_a, act_a), (obs_b, act_b) = trained, other
    read = {
        "node feature width": (obs_a.node_feature_dim, obs_b.node_feature_dim),
        "edge feature width": (obs_a.edge_feature_dim, obs_b.edge_feature_dim),
        "image": (obs_a.image_shape, obs_b.image_shape),
        "positions": (obs_a.has_positions, obs_b.has_positions),
        "continuous action dim": (act_a.continuous_dim, act_b.continuous_dim),
    }
    return [f"{what} {b}, trained on {a}" for what, (a, b) in read.items() if a != b]


def prepare_condition(
    condition: Condition, num_instances: int, seed: int, device: str | torch.device = "cpu"
) -> PreparedCondition:
    """Build the condition's env (``num_instances`` envs unless the condition fixes it) and compute its references
    on the episodes ``reset(seed)`` starts."""
    if num_instances < 1:
        raise ConfigError(f"num_instances must be >= 1, got {num_instances}")
    try:
        env = make_env(condition.config(), num_envs=condition.num_envs or num_instances, seed=seed, device=device)
    except ConfigError as exc:
        raise ConfigError(f"eval_env condition {condition.name!r}: {exc}") from exc
    try:
        return PreparedCondition(condition, env, Evaluator(env, seed), *specs(env))
    except BaseException:
        close_env(env)
        raise
