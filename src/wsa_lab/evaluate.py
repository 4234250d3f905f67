"""`python -m wsa_lab.evaluate <run or sweep folders> [key=value ...]`: evaluate trained agents on a suite.

Each run's agent is rebuilt from its `resolved_config.yaml` and `checkpoints/last.pt`, then plays every
condition of the suite (`eval_env=<name>`, `conf/eval_env/`; a condition changes the run's env config, any env
of the graph env contract) on the held-out episodes the condition's env starts from `reset(seed)`:
deterministic (most likely node, continuous mean) once, and stochastic (sampled actions) `episodes` times.
Next to the returns come the env's reference policies, when it has them (`<ref>_return`, and the agent's
return as a fraction of each: `<ref>_ratio`, as `eval/<ref>_ratio` in training). A condition's env and
references are computed once per evaluation and shared by every run. Outputs: `eval_<suite>.json` in each
run folder, and a Markdown table across runs of each run's headline metric (grouped by arm, statistics over
seeds) printed and written to `eval_<suite>.md` next to the inputs.

With `ablate=true` (WSA agents only) each condition plays the agent and its PTM ablations instead
(:mod:`wsa_lab.ablation`): `ablation_<suite>.json` in each run folder, the table in `ablation_<suite>.md`.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from wsa_lab import stats
from wsa_lab.ablation import ablate_condition, format_ablation_table
from wsa_lab.build import close_env, make_agent, make_env
from wsa_lab.conf_files import config_dir
from wsa_lab.config.validate import resolve_device
from wsa_lab.contract import ActionSpec, ObservationSpec, ratio_to_reference, specs
from wsa_lab.errors import ConfigError, WsaLabError, first_line, print_error
from wsa_lab.models import ActorCritic
from wsa_lab.weights.load import weights_from_checkpoint
from wsa_lab.rl.evaluation import headline_metric, sampled_play
from wsa_lab.config.strict import structured, unknown_key_error
from wsa_lab.run.atomic import output_error, write_text_atomic
from wsa_lab.run.checkpoint import load_checkpoint
from wsa_lab.run.reader import read_resolved_config, read_summary, run_folders_below
from wsa_lab.run.startup import check_output_dir
from wsa_lab.seeding import deterministic_kernels
from wsa_lab.suites import PreparedCondition, build_conditions, condition_key, prepare_condition

CONFIG_NAME = "evaluate"
CHECKPOINT = Path("checkpoints") / "last.pt"
RUN_MARKERS = ("summary.json", "resolved_config.yaml", str(CHECKPOINT))
#: Settings that were removed, and where their job went.
MOVED_SETTINGS = {
    "radius_grid": "the greedy radius grid is the coverage env's greedy_radius_grid now: pass "
    "+env.greedy_radius_grid=R (every condition) or set it in a condition's env",
}


@dataclass
class EvaluateSettings:
    """`conf/evaluate.yaml` without the suite (each field is documented there)."""

    num_instances: int
    episodes: int
    seed: int
    env: dict
    device: str
    deterministic: bool
    table: Optional[str]
    bootstrap_reps: int
    ablate: bool


@dataclass
class SuiteConfig:
    """`conf/eval_env/<suite>.yaml`: a name, its conditions (see wsa_lab.suites) and the table's env columns."""

    name: str
    conditions: dict = field(default_factory=dict)
    columns: dict = field(default_factory=dict)  # column title -> env key (dotted) shown per condition


@dataclass
class EvaluationResult:
    """What `evaluate_runs` returns: the suite, one JSON-ready dict per run, and the table."""

    suite: str
    runs: list[dict[str, Any]]
    table: str
    table_path: Path
    prefix: str = "eval"  # the JSON files' prefix: eval_<suite>.json, or ablation_<suite>.json (ablate=true)


# ---------------------------------------------------------------------------------------------- config
def compose_settings(overrides: Sequence[str] = ()) -> tuple[EvaluateSettings, SuiteConfig]:
    """Compose `conf/evaluate.yaml` + `conf/eval_env/<suite>.yaml` with Hydra-style overrides."""
    root = config_dir()
    keys = [*OmegaConf.load(root / f"{CONFIG_NAME}.yaml").keys(), "eval_env"]
    keys.remove("defaults")
    suites = sorted(p.stem for p in (root / "eval_env").glob("*.yaml"))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep and not key.startswith("~"):
            raise ConfigError(f"expected key=value (or ~key), got {item!r}")
        top = key.lstrip("+~").split(".")[0]
        if top in MOVED_SETTINGS:
            raise ConfigError(f"{top} was removed: {MOVED_SETTINGS[top]}")
        if top not in keys:
            raise unknown_key_error(top, keys, "evaluate")
        if key == "eval_env" and value not in suites:
            raise ConfigError(f"unknown eval_env {value!r}; choose one of: {', '.join(suites)}")
    try:
        with initialize_config_dir(config_dir=str(root), version_base="1.3"):
            cfg = compose(CONFIG_NAME, overrides=list(overrides))
    except HydraException as exc:
        raise ConfigError(" ".join(line.strip() for line in str(exc).strip().splitlines())) from exc
    _check_renamed_if_changed(overrides)
    data = OmegaConf.to_container(cfg, resolve=True)
    suite = structured(SuiteConfig, data.pop("eval_env"), "eval_env")
    settings = structured(EvaluateSettings, data, "evaluate")
    for name in ("num_instances", "episodes", "bootstrap_reps"):
        if getattr(settings, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(settings, name)}")
    return settings, suite


def _check_renamed_if_changed(overrides: Sequence[str]) -> None:
    """A suite whose conditions the command line changes needs its own name: its results are written to
    eval_<name>.json/.md, which would otherwise replace the shipped suite's results under the shipped name."""
    keys = [item.partition("=")[0].lstrip("+~") for item in overrides]
    changed = [k for k in keys if k.startswith("eval_env.conditions")]
    if changed and "eval_env.name" not in keys:
        raise ConfigError(
            f"{changed[0]} changes the suite's conditions but keeps its name, so its results would replace the "
            "suite's own eval_<name>.json and eval_<name>.md; also set eval_env.name=<a new name>"
        )


# ---------------------------------------------------------------------------------------------- runs
def _is_run_folder(path: Path) -> bool:
    return any((path / marker).is_file() for marker in RUN_MARKERS)


def find_runs(paths: Sequence[str | Path], warn: Callable[[str], None] = lambda _: None) -> list[Path]:
    """Run folders named by `paths`: each is a run folder, or a folder (a sweep) searched for run folders.

    A named run folder without `checkpoints/last.pt` is an error; inside a sweep it is skipped with a warning.
    """
    if not paths:
        raise ConfigError("name at least one run folder or sweep folder")
    runs: list[Path] = []
    for given in paths:
        path = Path(given).expanduser()
        if not path.is_dir():
            raise ConfigError(f"{given}: no such folder")
        if _is_run_folder(path):
            if not (path / CHECKPOINT).is_file():
                raise ConfigError(f"{given}: run folder without {CHECKPOINT} (did the run save a checkpoint?)")
            runs.append(path)
            continue
        found = []
        for here in run_folders_below(path, _is_run_folder):
            if (here / CHECKPOINT).is_file():
                found.append(here)
            else:
                warn(f"skipping {here}: no {CHECKPOINT}")
        if not found:
            raise ConfigError(f"{given}: no run folder with {CHECKPOINT} in it")
        runs.extend(found)
    unique = list(dict.fromkeys(p.resolve() for p in runs))
    return unique


def read_run_files(path: Path) -> tuple[DictConfig, dict[str, Any]]:
    """A run folder's `resolved_config.yaml` (a mapping with an `env`) and `summary.json` (`{}` when absent);
    anything unreadable is a one-line ConfigError naming the folder and the file."""
    return read_resolved_config(path), read_summary(path)


def declared_metric(cfg: DictConfig, summary: dict[str, Any]) -> Optional[str]:
    """The run's headline metric: its summary's `metric`, else its config's `evaluation.metric`; None = the default
    from its env's references (:func:`~wsa_lab.rl.evaluation.headline_metric`)."""
    return summary.get("metric") or (cfg.get("evaluation") or {}).get("metric")


@dataclass
class LoadedRun:
    """A trained run: its folder, resolved config, summary, rebuilt agent (eval mode) and its training env's specs."""

    path: Path
    cfg: DictConfig
    summary: dict[str, Any]
    agent: ActorCritic
    global_step: Optional[int]
    specs: tuple[ObservationSpec, ActionSpec]

    @property
    def arm(self) -> str:
        return str(self.summary.get("name", self.cfg.get("name", self.path.name)))

    @property
    def seed(self) -> Any:
        return self.summary.get("seed", self.cfg.get("seed"))

    @property
    def metric(self) -> Optional[str]:
        return declared_metric(self.cfg, self.summary)


def load_run(path: Path, device: torch.device) -> LoadedRun:
    """Rebuild a run's agent from `resolved_config.yaml` and load `checkpoints/last.pt` into it."""
    cfg, summary = read_run_files(path)
    env = make_env(cfg, num_envs=1, seed=0, device=device)  # only to size the agent from its spaces
    try:
        trained_specs = specs(env)
        with weights_from_checkpoint():  # the checkpoint holds the ImageNet backbones too: no weight file needed
            agent = make_agent(cfg, env).to(device)
    finally:
        close_env(env)
    try:
        state = load_checkpoint(path / CHECKPOINT, map_location=device)
        agent.load_state_dict(state["agent"], strict=True)
    except (RuntimeError, KeyError, OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise WsaLabError(f"{path / CHECKPOINT}: cannot load the agent from it ({first_line(exc)})") from exc
    agent.eval()
    return LoadedRun(path, cfg, summary, agent, state.get("global_step"), trained_specs)


def check_one_metric(metrics: dict[str, Optional[str]]) -> Optional[str]:
    """The one headline metric of `metrics` (path -> metric; None entries are not counted), or a one-line
    ConfigError when they differ: one table cannot average fractions of a reference with raw returns."""
    counts = Counter(m for m in metrics.values() if m is not None)
    if len(counts) > 1:
        listed = ", ".join(f"{m}: {n} run{'s' if n > 1 else ''}" for m, n in counts.items())
        raise ConfigError(
            f"the runs have different headline metrics ({listed}); evaluate them separately (one table per metric)"
        )
    return next(iter(counts), None)


# ---------------------------------------------------------------------------------------------- playing
def metric_key(metric: str) -> str:
    """The per-condition JSON key of a headline metric: `eval/<ref>_ratio` -> `<ref>_ratio`, `eval/return` -> `return`."""
    return metric.removeprefix("eval/")


def _std(x: torch.Tensor) -> float:
    return x.std().item() if x.numel() > 1 else 0.0


def sampled_returns(agent: ActorCritic, prepared: PreparedCondition, seed: int, episodes: int) -> torch.Tensor:
    """Returns of the stochastic policy on the condition's held-out episodes, `episodes` times (reproducible, the
    global RNG untouched: :func:`~wsa_lab.rl.evaluation.sampled_play`).

    Shapes:
        - output: ``(episodes, B)`` on the CPU
    """
    return sampled_play(agent, prepared.env, seed, episodes)


def evaluate_agent(agent: ActorCritic, prepared: PreparedCondition, seed: int, episodes: int) -> dict[str, Any]:
    """The agent's deterministic and stochastic returns on a prepared condition, with the references and ratios.

    Keys: the condition's description, `num_instances`, `episodes`, `references` (names), `return`,
    `return_std`, `<ref>_ratio`, `stochastic_return`, `stochastic_return_std`, `stochastic_<ref>_ratio`,
    `sampled_return` and `sampled_<ref>_ratio` (the best of the `episodes` sampled plays of each held-out episode,
    averaged: training's ``eval/sampled_*`` with ``evaluation.samples=episodes``), `<ref>_return` and
    `<other>_<first>_ratio` (each other reference as a fraction of the first).
    """
    evaluator = prepared.evaluator
    deterministic = evaluator.evaluate(agent)  # eval/return, eval/return_std, eval/<ref>_ratio
    stochastic = sampled_returns(agent, prepared, seed, episodes)
    mean = stochastic.mean().item()
    best = stochastic.max(dim=0).values.mean().item()
    return {
        **prepared.condition.describe(),
        "num_instances": prepared.num_instances,
        "episodes": episodes,
        "references": prepared.reference_names,
        **{metric_key(k): v for k, v in deterministic.items()},
        "stochastic_return": mean,
        "stochastic_return_std": _std(stochastic.reshape(-1)),
        **{f"stochastic_{n}_ratio": ratio_to_reference(mean, r) for n, r in evaluator.reference_returns.items()},
        "sampled_return": best,
        **{f"sampled_{n}_ratio": ratio_to_reference(best, r) for n, r in evaluator.reference_returns.items()},
        **{k.removeprefix("reference/"): v for k, v in evaluator.reference.items()},
    }


def _check_metric(metric: str, prepared: PreparedCondition, run: LoadedRun) -> None:
    if metric not in prepared.evaluator.metrics:
        raise ConfigError(
            f"{run.path}: its headline metric {metric} is not measured on eval_env condition {prepared.condition.name!r} "
            f"(its env has {', '.join(prepared.evaluator.metrics)})"
        )


def evaluate_run(
    run: LoadedRun, suite: SuiteConfig, settings: EvaluateSettings, device: torch.device,
    cache: dict[str, PreparedCondition],
) -> dict[str, Any]:
    """One run on every condition of the suite (conditions prepared on first use, into `cache`); with
    `settings.ablate`, its PTM ablations on each (:func:`wsa_lab.ablation.ablate_condition`) instead."""
    per_condition: dict[str, Any] = {}
    metric = run.metric
    for condition in build_conditions(suite.conditions, run.cfg.env, settings.env):
        key = condition_key(condition, num_instances=settings.num_instances, seed=settings.seed, device=str(device))
        if key not in cache:
            cache[key] = prepare_condition(condition, settings.num_instances, settings.seed, device)
        prepared = cache[key]
        prepared.check_agent(run.specs)
        metric = metric or headline_metric(prepared.reference_names)
        _check_metric(metric, prepared, run)
        if settings.ablate:
            per_condition[condition.name] = ablate_condition(run.agent, prepared, metric_key(metric))
        else:
            per_condition[condition.name] = evaluate_agent(run.agent, prepared, settings.seed, settings.episodes)
    return {
        "suite": suite.name,
        "metric": metric,
        "run": {
            "path": str(run.path), "name": run.arm, "phase": run.summary.get("phase"), "seed": run.seed,
            "status": run.summary.get("status"), "global_step": run.global_step, "env": run.summary.get("env"),
        },
        **({"ptm_names": run.agent.ptm_names} if settings.ablate else {}),
        "settings": {
            "num_instances": settings.num_instances, "episodes": settings.episodes, "seed": settings.seed,
            "env": settings.env, "device": str(device),
        },
        "conditions": per_condition,
    }


def unablatable(path: Path, cfg: DictConfig) -> Optional[str]:
    """Why the run's agent cannot be ablated (read from its config, before any agent is built), or None: ablation
    needs attention weights over >= 2 PTMs."""
    wsa = (cfg.get("actor_critic") or {}).get("wsa") or {}
    ptms = list(wsa.get("pretrained_models") or [])
    if not wsa.get("enabled"):
        return f"{path}: ablate=true ablates the PTMs of a WSA agent; this run is the Standard Actor (no PTMs, no attention)"
    if wsa.get("fusion") == "concat" or len(ptms) < 2:
        return (f"{path}: ablate=true needs attention weights over >= 2 PTMs; this run has fusion "
                f"{wsa.get('fusion')!r} over {len(ptms)} PTM(s)")
    return None


def evaluate_runs(
    paths: Sequence[str | Path], overrides: Sequence[str] = (), log: Callable[[str], None] = lambda _: None
) -> EvaluationResult:
    """Evaluate every run under `paths` on the suite chosen by `overrides`; write the JSON files and table."""
    settings, suite = compose_settings(overrides)
    device = resolve_device(settings.device)
    deterministic_kernels(device, settings.deterministic)
    run_paths = find_runs(paths, warn=log)
    # Before any agent plays: every run's files are readable and their declared headline metrics agree.
    files = {p: read_run_files(p) for p in run_paths}
    check_one_metric({str(p): declared_metric(*f) for p, f in files.items()})
    if settings.ablate:  # a sweep's Standard arm (or a one-PTM arm) is left out, said; none left is an error
        reasons = {p: unablatable(p, cfg) for p, (cfg, _summary) in files.items()}
        for p, reason in reasons.items():
            if reason is not None and len(reasons) > 1:
                log(f"left out {reason}")
        run_paths = [p for p in run_paths if reasons[p] is None]
        if not run_paths:
            raise ConfigError(next(iter(reasons.values())) if len(reasons) == 1 else
                              "ablate=true: none of the runs has attention weights over >= 2 PTMs (each left out above)")
    prefix = "ablation" if settings.ablate else "eval"
    table_path = Path(settings.table) if settings.table else default_table_path(paths, suite.name, prefix)
    check_output_dir(table_path.parent, "table")  # before any agent plays: a table that cannot be written says so now
    cache: dict[str, PreparedCondition] = {}  # condition -> its env and references, shared by the runs
    results = []
    try:
        for i, path in enumerate(run_paths, 1):
            run = load_run(path, device)
            status = run.summary.get("status")
            if status not in (None, "completed"):
                log(f"warning: {path} has status {status!r}: evaluated, but not averaged into the table")
            log(f"[{i}/{len(run_paths)}] {run.arm} seed {run.seed}: {path}")
            result = evaluate_run(run, suite, settings, device, cache)
            write_text_atomic(path / f"{prefix}_{suite.name}.json", json.dumps(result, indent=2) + "\n")
            results.append(result)
            del run
    finally:
        for prepared in cache.values():
            prepared.close()
    if settings.ablate:
        table = format_ablation_table(suite.name, results)
    else:
        table = format_table(suite.name, results, settings, suite.columns)
    try:
        table_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(table_path, exc, "table") or ConfigError(f"table={table_path}: cannot create its folder ({exc})") from exc
    write_text_atomic(table_path, table, where="table")
    return EvaluationResult(suite.name, results, table, table_path, prefix)


def default_table_path(paths: Sequence[str | Path], suite: str, prefix: str = "eval") -> Path:
    """`<prefix>_<suite>.md` in the one folder given, else in the folders' common parent (cwd if that is `/`)."""
    folders = [Path(p).expanduser().resolve() for p in paths]
    common = Path(os.path.commonpath(folders)) if len(folders) > 1 else folders[0]
    if common == Path(common.anchor):
        common = Path.cwd()
    return common / f"{prefix}_{suite}.md"


# ---------------------------------------------------------------------------------------------- table
def _group_by_arm(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    arms: dict[str, list[dict[str, Any]]] = {}
    for result in results:  # arms in order of first appearance (a sweep's job order)
        arms.setdefault(result["run"]["name"], []).append(result)
    return arms


def _fmt(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def _cell(estimate: stats.Estimate) -> str:
    if math.isnan(estimate.low):
        return _fmt(estimate.value)
    return f"{_fmt(estimate.value)} [{_fmt(estimate.low)}, {_fmt(estimate.high)}]"


def _same_or_varies(values: list[Any], fmt: Callable[[Any], str] = str) -> str:
    distinct = list(dict.fromkeys(values))
    return fmt(distinct[0]) if len(distinct) == 1 else "varies"


def _lookup(env: dict[str, Any], dotted: str) -> Any:
    """`env["kwargs"]["num_jobs"]` for `kwargs.num_jobs`; None when absent."""
    node: Any = env
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _changed(cell: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in cell.get("changed", {}).items()) or "-"


def _description_columns(cells: list[dict[str, Any]], columns: dict[str, str]) -> list[tuple[str, Callable[[dict], Any]]]:
    """The table's env columns: the suite's `columns` that the envs have, else what each condition changes."""
    present = [(title, key) for title, key in columns.items() if any(_lookup(c["env"], key) is not None for c in cells)]
    if present:
        return [(title, lambda c, key=key: _lookup(c["env"], key)) for title, key in present]
    return [("changed", _changed)]


def _reference_columns(cells: list[dict[str, Any]]) -> list[tuple[str, Callable[[dict], Any]]]:
    """The first reference's return, then each other reference as a fraction of the first."""
    names = list(cells[0].get("references", []))
    if not names:
        return []
    first = names[0]
    out = [(f"{first} ref. return", lambda c: round(c[f"{first}_return"], 6))]
    out += [(name, lambda c, name=name: round(c[f"{name}_{first}_ratio"], 6)) for name in names[1:]]
    return out


def _legend(metric: str, settings: EvaluateSettings, reps: int) -> str:
    key = metric_key(metric)
    if key == "return":
        what = "the agent's mean episode return"
    else:
        ref = key.removesuffix("_ratio")
        what = (
            f"`{key}` = the agent's return as a fraction of the `{ref}` reference's on the same episodes "
            "(wsa_lab.contract.ratio_to_reference: 1 = as good, higher = better)"
        )
    return (
        f"Cells: {what}, mean over seeds [95% percentile-bootstrap CI over seeds, {reps} resamples, seed 0]. "
        "deterministic = most likely node (and the continuous action's mean); "
        f"stochastic = sampled actions ({settings.episodes} plays of every held-out episode); best of "
        f"{settings.episodes} = the best of those plays per episode. Each condition plays "
        f"the episodes its env starts from reset(seed={settings.seed}): {settings.num_instances} envs unless the "
        "condition fixes fewer (e.g. a city)."
    )


def format_table(
    suite: str, results: list[dict[str, Any]], settings: EvaluateSettings, columns: Optional[dict[str, str]] = None
) -> str:
    """Markdown: one row per condition, per arm the deterministic and stochastic headline metric over seeds.

    The headline metric is each result's `metric` (one for all; different ones are a ConfigError). `columns`
    (title -> dotted env key) are shown per condition when the envs have them, else what each condition changes.
    As in the report (`wsa_lab.report`), runs whose status is not `completed` are listed, never averaged in.
    """
    metrics = {r["run"].get("path", str(i)): r.get("metric") for i, r in enumerate(results)}
    metric = check_one_metric(metrics) or "eval/return"
    unfinished = [r for r in results if r["run"].get("status") not in (None, "completed")]
    results = [r for r in results if r not in unfinished]
    skipped = [f"- not averaged in: {r['run'].get('path')} (status {r['run'].get('status')!r})" for r in unfinished]
    if not results:
        return "\n".join([f"# Evaluation suite `{suite}`", "", "No completed run to aggregate.", "", *skipped]) + "\n"
    arms = _group_by_arm(results)
    conditions = list(results[0]["conditions"])
    reps = settings.bootstrap_reps
    key = metric_key(metric)
    keys = (key, f"stochastic_{key}", f"sampled_{key}")
    lines = [
        f"# Evaluation suite `{suite}`",
        "",
        _legend(metric, settings, reps),
        "",
        "Runs: " + "; ".join(
            f"{arm}: {len(rs)} (seeds {', '.join(str(r['run']['seed']) for r in rs)})" for arm, rs in arms.items()
        ),
        "",
    ]
    first_cells = [r["conditions"][conditions[0]] for r in results]
    references = _reference_columns(first_cells)
    described = _description_columns(first_cells, columns or {}) + references
    if len(references) > 1:
        first = first_cells[0]["references"][0]
        lines[-2:-2] = [f"`{first} ref. return`: the `{first}` reference's mean return; each other reference column: "
                        f"that reference's return as a fraction of `{first}`'s.", ""]
    header = ["condition", *(title for title, _ in described)]
    for arm in arms:
        header += [f"{arm} deterministic", f"{arm} stochastic", f"{arm} best of {settings.episodes}"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in conditions:
        cells = [r["conditions"][name] for r in results]
        row = [name, *(_same_or_varies([value(c) for c in cells], _fmt) for _, value in described)]
        for rs in arms.values():
            for k in keys:
                scores = np.array([r["conditions"][name][k] for r in rs])
                row.append(_cell(stats.bootstrap_ci(scores, stats.mean, reps=reps, seed=0)))
        lines.append("| " + " | ".join(row) + " |")
    if len(conditions) > 1:
        row = ["**all (IQM over seeds x conditions)**", *([""] * len(described))]
        for rs in arms.values():
            for k in keys:
                scores = np.array([[r["conditions"][c][k] for c in conditions] for r in rs])  # (runs, conditions)
                row.append(_cell(stats.bootstrap_ci(scores, stats.iqm, reps=reps, seed=0)))
        lines.append("| " + " | ".join(row) + " |")
    names = list(arms)
    if len(names) > 1:
        lines += [
            "", f"Probability of improvement (deterministic `{key}`; mean over conditions of P(X > Y) over seed pairs):",
            "",
        ]
        for i, base in enumerate(names):
            for other in names[i + 1 :]:
                if min(len(arms[other]), len(arms[base])) < 2:
                    lines.append(f"- P({other} > {base}) = n/a (needs >= 2 seeds per arm)")
                    continue
                p = np.mean([
                    stats.probability_of_improvement(
                        [r["conditions"][c][key] for r in arms[other]], [r["conditions"][c][key] for r in arms[base]]
                    )
                    for c in conditions
                ])
                lines.append(f"- P({other} > {base}) = {p:.2f}")
    if skipped:
        lines += ["", *skipped]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- CLI
USAGE = (
    "usage: python -m wsa_lab.evaluate RUN_OR_SWEEP_FOLDER [...] [eval_env=in_distribution|size_shift|"
    "structure_shift|cities] [episodes=4] [num_instances=32] [seed=2027] [+env.KEY=VALUE] [device=auto] [table=PATH] "
    "[ablate=true]"
)


def split_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Folders and Hydra overrides (`key=value`, `+key=value`, `~key`); an existing folder is always a folder."""
    folders, overrides = [], []
    for arg in argv:
        is_override = "=" in arg or arg.startswith(("~", "+"))
        (overrides if is_override and not Path(arg).is_dir() else folders).append(arg)
    return folders, overrides


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[0] + "\n\n" + USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 1
    folders, overrides = split_args(argv)
    try:
        result = evaluate_runs(folders, overrides, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    except (WsaLabError, OmegaConfBaseException) as exc:
        return print_error("wsa_lab.evaluate", exc)
    print(result.table, end="")
    print(f"wrote {result.prefix}_{result.suite}.json in {len(result.runs)} run folder(s) and {result.table_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
