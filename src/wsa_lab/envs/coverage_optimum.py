"""The coverage env's exact ``optimum`` reference: the best episode return of each instance, proven by a MILP.

The model is the env's reward read from :meth:`CoverageEnv.step`, not a sketch of it:

* a step opens a site at a node with an action radius ``a``; the env covers node ``j`` iff
  ``within_radius(squared_distances(site, j), physical_radius(a))`` in float32 and charges ``cost * r * r``.
  Coverage grows with ``a``, so the only useful radii of a site are ``a = 0`` (``r_min``) and, for each node the
  site can reach (``a = 1``), the smallest float32 ``a`` that covers it, found by bisection on the float32 bit
  patterns with the env's own functions: the optimum is a concrete action sequence, not a continuous bound.
* an episode plays ``L = min(num_sites, max_episode_steps)`` steps and ends earlier once all demand is covered.
  Each step costs at least ``cost * r_min^2``, so a plan either opens exactly ``L`` sites or covers all demand.
* a node may be chosen again (it adds its disc and pays again), but another node with the same radius covers at
  least as much at the same price, and ``num_sites < num_nodes``: so optimal plans use distinct nodes.

Formulation (per instance): ``z[s, k]`` = site ``s`` is open with at least its k-th useful radius
(``z[s, k] <= z[s, k-1]``, cost increments ``penalty[k] - penalty[k-1]``), ``y[j] <= sum_s z[s, k(s, j)]`` is
node ``j``'s coverage, ``sum_s z[s, 0] = L`` unless ``all_covered`` (then ``y[j] >= 1`` for demand > 0 and
``1 <= sum_s z[s, 0] <= L``). Solved with OR-Tools' ``pywraplp`` SCIP backend: a MILP with real
coefficients, solved with a zero relative gap (CP-SAT would need the float32 demands scaled to integers, and
its optimum would then be that of a rounded problem). The returned value is not the solver's objective but the
env's own return when the optimal plan is replayed, so it is exactly what an agent can reach.

The result (the plan of each instance) is cached in a JSON file named by a hash of the reward's parameters and
the instances themselves (``$WSA_LAB_OPTIMUM_CACHE``, else ``$XDG_CACHE_HOME/wsa_lab/optimum`` or
``~/.cache/wsa_lab/optimum``), so only a run's first start-up pays for the solves.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor


from .geometry import squared_distances, within_radius
from .policies import CoverageState, run_episodes

log = logging.getLogger(__name__)

#: The folder of cached optima; the default is ``~/.cache/wsa_lab/optimum`` (``$XDG_CACHE_HOME`` if set).
CACHE_ENV = "WSA_LAB_OPTIMUM_CACHE"
#: Seconds the solver may spend on one instance; an instance not proven optimal by then drops the reference.
TIME_LIMIT_S = 120.0
#: The largest ``num_nodes`` solved: the MILP has up to ``N^2`` variables; measured here (SCIP, 1 thread), 50 nodes
#: take 0.3-0.7 s per instance, 100 nodes 2-7 s, 200 nodes ~10 s (32 instances: ~5 min, once); larger graphs would
#: need hours and ``N^2`` floats of radii per instance, so they get one log line and no optimum.
MAX_NODES = 200
#: Bumped when the model or the cache format changes: older files are then ignored.
_CACHE_VERSION = 1


@dataclass
class Plan:
    """One instance's optimal plan: ``(node, action radius)`` per step, in play order."""

    nodes: list[int]
    radii: list[float]
    optimal: bool
    seconds: float


def optimum_returns(env: CoverageState, instances: tuple[Tensor, Tensor], time_limit: float = TIME_LIMIT_S) -> Optional[Tensor]:
    """The optimal episode return of each instance (``[B]``), from the cache or the solver; None (and one log
    line) where the solver is missing or an instance is not proven optimal within ``time_limit`` seconds.

    ``env`` is a scratch env with the reward's settings (it is reset to ``instances`` and played); the value is
    its return when the optimal plans are replayed.
    """
    if instances[0].shape[1] > MAX_NODES:
        log.warning("coverage env: no optimum reference: the exact optimum is solved for graphs of up to %d nodes "
                    "(this env has %d); set env.optimum_reference=false to skip it without this line",
                    MAX_NODES, instances[0].shape[1])
        return None
    env.reset(instances=instances)
    path = cache_dir() / f"{_cache_key(env)}.json"
    plans = _read_cache(path, env.num_envs)
    if plans is None:
        if not solver_available():
            return None
        plans = solve(env, time_limit)
        _write_cache(path, plans)
    if not all(plan.optimal for plan in plans):
        log.warning("coverage env: no optimum reference: an evaluation instance was not solved to proven optimality "
                    "within %.0f s (cached in %s; delete that file to try again)", time_limit, path)
        return None
    return replay(env, instances, plans)


def solve(env: CoverageState, time_limit: float = TIME_LIMIT_S) -> list[Plan]:
    """The optimal plan of each of ``env``'s current instances; stops at the first one not proven optimal."""
    steps = env.num_sites if env.max_episode_steps is None else min(env.num_sites, env.max_episode_steps)
    action, reachable, penalty = (t.cpu().numpy() for t in useful_radii(env))
    demand = env.demand.cpu().numpy()
    log.info("coverage env: solving the optimum of %d evaluation instances (SCIP, cached afterwards)", env.num_envs)
    plans: list[Plan] = []
    for b in range(env.num_envs):
        plans.append(_solve_instance(demand[b], action[b], reachable[b], penalty[b], steps, time_limit))
        if not plans[-1].optimal:
            break
    log.info("coverage env: optimum solved in %.1f s", sum(plan.seconds for plan in plans))
    return plans


def replay(env: CoverageState, instances: tuple[Tensor, Tensor], plans: list[Plan]) -> Tensor:
    """``env``'s episode returns when each instance plays its plan (steps past a plan's end never happen: a
    shorter plan covers all demand, which ends the episode). Shapes: ``[B]``."""
    longest = max(len(plan.nodes) for plan in plans)
    nodes = torch.zeros(len(plans), longest, dtype=torch.long)
    radii = torch.zeros(len(plans), longest)
    for b, plan in enumerate(plans):
        nodes[b, : len(plan.nodes)] = torch.tensor(plan.nodes, dtype=torch.long)
        radii[b, : len(plan.radii)] = torch.tensor(plan.radii)
    nodes, radii = nodes.to(env.device), radii.to(env.device)

    def planned(_obs: Any, e: CoverageState) -> tuple[Tensor, Tensor]:
        t = e.t.clamp(max=longest - 1).unsqueeze(1)
        return nodes.gather(1, t).squeeze(1), radii.gather(1, t).squeeze(1)

    return run_episodes(env, planned, instances)


def cache_dir() -> Path:
    """The folder holding cached optima (see :data:`CACHE_ENV`)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wsa_lab" / "optimum"


def _cache_key(env: CoverageState) -> str:
    """A hash of what the optimum depends on: the reward's settings and the instances themselves (so the env's
    generator settings and the evaluation seed count through the instances they produce)."""
    settings = {"version": _CACHE_VERSION, "num_sites": env.num_sites, "max_episode_steps": env.max_episode_steps,
                "r_min": env.r_min, "r_max": env.r_max, "cost": env.cost}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for tensor in (env.pos, env.demand):
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def _read_cache(path: Path, count: int) -> Optional[list[Plan]]:
    """The cached plans of ``path`` (None if absent or unreadable: then they are solved again)."""
    try:
        stored = json.loads(path.read_text())
        plans = [Plan(**plan) for plan in stored["plans"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    complete = len(plans) == count or bool(plans and not plans[-1].optimal)
    return plans if stored.get("version") == _CACHE_VERSION and complete else None


def _write_cache(path: Path, plans: list[Plan]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # a temp file renamed over the entry: a reader never sees half of it (the env layer keeps its own 3 lines
        # rather than importing the run folder's writer)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": _CACHE_VERSION, "plans": [asdict(p) for p in plans]}), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:  # a cache that cannot be written only costs time
        log.warning("coverage env: cannot cache the optimum in %s (%s); set %s to a writable folder", path, exc, CACHE_ENV)


@functools.cache  # once per process: one log line however many evaluation envs ask
def solver_available() -> bool:
    """Whether OR-Tools' SCIP backend can be used; logs one line when it cannot."""
    try:
        from ortools.linear_solver import pywraplp
    except ImportError:
        log.warning("coverage env: no optimum reference (OR-Tools is not installed: pip install 'wsa_lab[jobshop]' "
                    "or ortools); the greedy and random references stay")
        return False
    if pywraplp.Solver.CreateSolver("SCIP") is None:
        log.warning("coverage env: no optimum reference (this OR-Tools build lacks SCIP); the greedy and random "
                    "references stay")
        return False
    return True


def useful_radii(env: CoverageState) -> tuple[Tensor, Tensor, Tensor]:
    """Every node's smallest covering action radius from every site, and the penalty of each.

    Returns ``(action [B, N, N], reachable [B, N, N], penalty [B, N, N])``: ``action[b, s, j]`` is the smallest
    float32 ``a`` in ``[0, 1]`` with which site ``s`` covers node ``j`` (``reachable`` False where even ``a = 1``
    does not), ``penalty`` is the env's ``cost * r * r`` for it. Bisection on float32 bit patterns (ordered like
    the values for non-negative floats), with the env's own ``physical_radius`` and ``within_radius``.
    """
    sq = squared_distances(env.pos, env.pos)

    def covers(bits: Tensor) -> Tensor:
        return within_radius(sq, env.physical_radius(bits.view(torch.float32)))

    one = torch.tensor(1.0, dtype=torch.float32).view(torch.int32).item()
    hi = torch.full(sq.shape, one, dtype=torch.int32, device=sq.device)
    reachable = covers(hi)
    # Invariant: `hi` covers (where reachable), `lo` does not; -1 (a NaN: covers nothing) stands for "below a = 0".
    lo = torch.full_like(hi, -1)
    while bool((hi - lo > 1).any()):
        mid = lo + (hi - lo) // 2
        ok = covers(mid)
        hi, lo = torch.where(ok, mid, hi), torch.where(ok, lo, mid)
    action = hi.view(torch.float32)
    r = env.physical_radius(action)
    return action, reachable, env.cost * r * r  # the env's float32 penalty, computed as in step()


def _solve_instance(
    demand: np.ndarray, action: np.ndarray, reachable: np.ndarray, penalty: np.ndarray, steps: int, time_limit: float
) -> Plan:
    """The MILP of the module docstring for one instance (numpy arrays of one instance)."""
    from ortools.linear_solver import pywraplp

    start = time.perf_counter()
    N = demand.shape[0]
    solver = pywraplp.Solver.CreateSolver("SCIP")
    solver.SetTimeLimit(max(1, int(time_limit * 1000)))  # 0 would mean "no limit"
    levels: list[np.ndarray] = []  # per site: its useful action radii, ascending (0 first)
    z: list[list[Any]] = []
    objective = solver.Objective()
    for s in range(N):
        # The site covers itself with a = 0 (distance 0): unreachable nodes are mapped there, adding no level.
        values, first = np.unique(np.where(reachable[s], action[s], 0.0), return_index=True)
        costs = np.where(reachable[s], penalty[s], penalty[s, s])[first].astype(np.float64)
        site = [solver.BoolVar(f"z{s}_{k}") for k in range(len(values))]
        for k, var in enumerate(site):
            objective.SetCoefficient(var, -float(costs[k] - (costs[k - 1] if k else 0.0)))
            if k:
                solver.Add(var <= site[k - 1])
        levels.append(values)
        z.append(site)
    all_covered = solver.BoolVar("all_covered")
    opened = solver.Sum([site[0] for site in z])
    solver.Add(opened <= steps)
    solver.Add(opened >= 1)
    solver.Add(opened + steps * all_covered >= steps)
    for j in range(N):
        if demand[j] <= 0:
            continue
        y = solver.NumVar(0.0, 1.0, f"y{j}")
        objective.SetCoefficient(y, float(demand[j]))
        reach = [z[s][int(np.searchsorted(levels[s], action[s, j]))] for s in range(N) if reachable[s, j]]
        solver.Add(y <= solver.Sum(reach))
        solver.Add(y >= all_covered)
    objective.SetMaximization()
    params = pywraplp.MPSolverParameters()
    params.SetDoubleParam(params.RELATIVE_MIP_GAP, 0.0)
    status = solver.Solve(params)
    if status not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
        return Plan([], [], False, time.perf_counter() - start)
    nodes, radii = [], []
    for s in range(N):
        chosen = [k for k, var in enumerate(z[s]) if var.solution_value() > 0.5]
        if chosen:
            nodes.append(s)
            radii.append(float(levels[s][max(chosen)]))
    return Plan(nodes, radii, status == pywraplp.Solver.OPTIMAL, time.perf_counter() - start)
