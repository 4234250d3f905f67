"""`python -m wsa_lab.evaluate <run or sweep folders> [key=value ...]`: evaluate trained agents on a suite.

Each run's agent is rebuilt from its `resolved_config.yaml` and `checkpoints/last.pt`, then plays every
condition of the suite (`eval_env=<name>`, `conf/eval_env/`) twice: greedy (the deterministic policy: most
likely node, mean radius) and stochastic (sampled actions, `episodes` per instance). Both are reported as
a fraction of the one-step greedy reference (`greedy_ratio`, as `eval/greedy_ratio` in training), next to
the random policy's. A condition's instances and references are computed once per evaluation and shared
by every run. Outputs: `eval_<suite>.json` in each run folder, and a Markdown table across runs (grouped
by arm, statistics over seeds) printed and written to `eval_<suite>.md` next to the inputs.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import sys
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
from wsa_lab.checkpoint import load_checkpoint
from wsa_lab.config import config_dir, resolve_device
from wsa_lab.envs.suites import PreparedCondition, build_conditions, condition_key, prepare_condition
from wsa_lab.errors import ConfigError, WsaLabError
from wsa_lab.files import write_text_atomic
from wsa_lab.models import ActorCritic
from wsa_lab.models.weights import weights_from_checkpoint
from wsa_lab.rl.evaluation import play
from wsa_lab.schema import structured, unknown_key_error
from wsa_lab.seeding import deterministic_kernels
from wsa_lab.train import make_agent, make_env

CONFIG_NAME = "evaluate"
CHECKPOINT = Path("checkpoints") / "last.pt"
RUN_MARKERS = ("summary.json", "resolved_config.yaml", str(CHECKPOINT))


@dataclass
class EvaluateSettings:
    """`conf/evaluate.yaml` without the suite (each field is documented there)."""

    num_instances: int = 32
    episodes: int = 4
    seed: int = 2027
    radius_grid: Optional[int] = None
    device: str = "auto"
    deterministic: bool = True
    table: Optional[str] = None
    bootstrap_reps: int = 2000


@dataclass
class SuiteConfig:
    """`conf/eval_env/<suite>.yaml`: a name and its conditions (see wsa_lab.envs.suites)."""

    name: str
    conditions: dict = field(default_factory=dict)


@dataclass
class EvaluationResult:
    """What `evaluate_runs` returns: the suite, one JSON-ready dict per run, and the table."""

    suite: str
    runs: list[dict[str, Any]]
    table: str
    table_path: Path


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
        if top not in keys:
            raise unknown_key_error(top, keys, "evaluate")
        if key == "eval_env" and value not in suites:
            raise ConfigError(f"unknown eval_env {value!r}; choose one of: {', '.join(suites)}")
    try:
        with initialize_config_dir(config_dir=str(root), version_base="1.3"):
            cfg = compose(CONFIG_NAME, overrides=list(overrides))
    except HydraException as exc:
        raise ConfigError(" ".join(line.strip() for line in str(exc).strip().splitlines())) from exc
    data = OmegaConf.to_container(cfg, resolve=True)
    suite = structured(SuiteConfig, data.pop("eval_env"), "eval_env")
    settings = structured(EvaluateSettings, data, "evaluate")
    for name in ("num_instances", "episodes", "bootstrap_reps"):
        if getattr(settings, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(settings, name)}")
    if settings.radius_grid is not None and settings.radius_grid < 1:
        raise ConfigError(f"radius_grid must be >= 1 or null, got {settings.radius_grid}")
    return settings, suite


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
        for root, dirs, _files in os.walk(path):
            dirs.sort()
            here = Path(root)
            if here != path and _is_run_folder(here):
                dirs.clear()  # a run folder's subfolders are not runs
                if (here / CHECKPOINT).is_file():
                    found.append(here)
                else:
                    warn(f"skipping {here}: no {CHECKPOINT}")
        if not found:
            raise ConfigError(f"{given}: no run folder with {CHECKPOINT} in it")
        runs.extend(found)
    unique = list(dict.fromkeys(p.resolve() for p in runs))
    return unique


@dataclass
class LoadedRun:
    """A trained run: its folder, resolved config, summary and rebuilt agent (eval mode)."""

    path: Path
    cfg: DictConfig
    summary: dict[str, Any]
    agent: ActorCritic
    global_step: Optional[int]

    @property
    def arm(self) -> str:
        return str(self.summary.get("name", self.cfg.get("name", self.path.name)))

    @property
    def seed(self) -> Any:
        return self.summary.get("seed", self.cfg.get("seed"))


def load_run(path: Path, device: torch.device) -> LoadedRun:
    """Rebuild a run's agent from `resolved_config.yaml` and load `checkpoints/last.pt` into it."""
    resolved = path / "resolved_config.yaml"
    if not resolved.is_file():
        raise ConfigError(f"{path}: no resolved_config.yaml (written by wsa_lab at the start of each run)")
    cfg = OmegaConf.load(resolved)
    summary_file = path / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    env = make_env(cfg, num_envs=1, seed=0, device=device, autoreset=False)
    with weights_from_checkpoint():  # the checkpoint holds the ImageNet backbones too: no weight file needed
        agent = make_agent(cfg, env).to(device)
    try:
        state = load_checkpoint(path / CHECKPOINT, map_location=device)
        agent.load_state_dict(state["agent"], strict=True)
    except (RuntimeError, KeyError, OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WsaLabError(f"{path / CHECKPOINT}: cannot load the agent from it ({first})") from exc
    agent.eval()
    return LoadedRun(path, cfg, summary, agent, state.get("global_step"))


# ---------------------------------------------------------------------------------------------- playing
def evaluate_agent(agent: ActorCritic, prepared: PreparedCondition, seed: int, device: torch.device) -> dict[str, Any]:
    """The agent's greedy and stochastic returns on a prepared condition, with the references and ratios."""
    env = prepared.condition.make_env(prepared.num_instances, seed=seed, device=device)
    deterministic = play(agent, env, prepared.instances, deterministic=True).cpu()
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # sampled actions: reproducible, global RNG left untouched
        torch.manual_seed(seed)
        stochastic = play(agent, env, prepared.repeated_instances(), deterministic=False).cpu()
    greedy_ref, random_ref = prepared.greedy_return, prepared.random_return

    def std(x: torch.Tensor) -> float:
        return x.std().item() if x.numel() > 1 else 0.0

    def ratio(value: float) -> float:  # fraction of the greedy reference (nan if the reference is 0)
        return value / greedy_ref if greedy_ref != 0 else float("nan")

    return {
        **prepared.condition.describe(),
        "num_instances": prepared.num_instances,
        "episodes": prepared.episodes,
        "return": deterministic.mean().item(),
        "return_std": std(deterministic),
        "greedy_ratio": ratio(deterministic.mean().item()),
        "stochastic_return": stochastic.mean().item(),
        "stochastic_return_std": std(stochastic),
        "stochastic_greedy_ratio": ratio(stochastic.mean().item()),
        "greedy_return": greedy_ref,
        "random_return": random_ref,
        "random_greedy_ratio": ratio(random_ref),
    }


def evaluate_runs(
    paths: Sequence[str | Path], overrides: Sequence[str] = (), log: Callable[[str], None] = lambda _: None
) -> EvaluationResult:
    """Evaluate every run under `paths` on the suite chosen by `overrides`; write the JSON files and table."""
    settings, suite = compose_settings(overrides)
    device = resolve_device(settings.device)
    deterministic_kernels(device, settings.deterministic)
    run_paths = find_runs(paths, warn=log)
    cache: dict[str, PreparedCondition] = {}  # condition -> instances + references, shared by the runs
    results = []
    for i, path in enumerate(run_paths, 1):
        run = load_run(path, device)
        status = run.summary.get("status")
        if status not in (None, "completed"):
            log(f"warning: {path} has status {status!r}: evaluated, but not averaged into the table")
        log(f"[{i}/{len(run_paths)}] {run.arm} seed {run.seed}: {path}")
        radius_grid = settings.radius_grid or int(run.cfg.get("evaluation", {}).get("radius_grid", 11))
        conditions = build_conditions(suite.conditions, run.cfg.env)
        per_condition = {}
        for condition in conditions:
            key = condition_key(
                condition, num_instances=settings.num_instances, episodes=settings.episodes,
                seed=settings.seed, radius_grid=radius_grid, device=str(device),
            )
            if key not in cache:
                cache[key] = prepare_condition(
                    condition, settings.num_instances, settings.episodes, settings.seed, radius_grid, device
                )
            per_condition[condition.name] = evaluate_agent(run.agent, cache[key], settings.seed, device)
        result = {
            "suite": suite.name,
            "run": {
                "path": str(path), "name": run.arm, "phase": run.summary.get("phase"), "seed": run.seed,
                "status": status, "global_step": run.global_step,
            },
            "settings": {
                "num_instances": settings.num_instances, "episodes": settings.episodes, "seed": settings.seed,
                "radius_grid": radius_grid, "device": str(device),
            },
            "conditions": per_condition,
        }
        write_text_atomic(path / f"eval_{suite.name}.json", json.dumps(result, indent=2) + "\n")
        results.append(result)
        del run
    table = format_table(suite.name, results, settings)
    table_path = Path(settings.table) if settings.table else default_table_path(paths, suite.name)
    table_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(table_path, table)
    return EvaluationResult(suite.name, results, table, table_path)


def default_table_path(paths: Sequence[str | Path], suite: str) -> Path:
    """`eval_<suite>.md` in the one folder given, else in the folders' common parent (cwd if that is `/`)."""
    folders = [Path(p).expanduser().resolve() for p in paths]
    common = Path(os.path.commonpath(folders)) if len(folders) > 1 else folders[0]
    if common == Path(common.anchor):
        common = Path.cwd()
    return common / f"eval_{suite}.md"


# ---------------------------------------------------------------------------------------------- table
def _group_by_arm(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    arms: dict[str, list[dict[str, Any]]] = {}
    for result in results:  # arms in order of first appearance (a sweep's job order)
        arms.setdefault(result["run"]["name"], []).append(result)
    return arms


def _fmt(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.3f}"


def _cell(estimate: stats.Estimate) -> str:
    if math.isnan(estimate.low):
        return _fmt(estimate.value)
    return f"{_fmt(estimate.value)} [{_fmt(estimate.low)}, {_fmt(estimate.high)}]"


def _same_or_varies(values: list[Any], fmt: Callable[[Any], str] = str) -> str:
    distinct = list(dict.fromkeys(values))
    return fmt(distinct[0]) if len(distinct) == 1 else "varies"


def format_table(suite: str, results: list[dict[str, Any]], settings: EvaluateSettings) -> str:
    """Markdown: one row per condition, per arm the greedy and stochastic greedy_ratio over seeds.

    As in the report (`wsa_lab.report`), runs whose status is not `completed` are listed, never averaged in.
    """
    unfinished = [r for r in results if r["run"].get("status") not in (None, "completed")]
    results = [r for r in results if r not in unfinished]
    skipped = [f"- not averaged in: {r['run'].get('path')} (status {r['run'].get('status')!r})" for r in unfinished]
    if not results:
        return "\n".join([f"# Evaluation suite `{suite}`", "", "No completed run to aggregate.", "", *skipped]) + "\n"
    arms = _group_by_arm(results)
    conditions = list(results[0]["conditions"])
    reps = settings.bootstrap_reps
    lines = [
        f"# Evaluation suite `{suite}`",
        "",
        "Cells: fraction of greedy = agent return / one-step greedy reference return on the same instances, "
        "mean over seeds [95% percentile-bootstrap CI over seeds, "
        f"{reps} resamples, seed 0]. deterministic = the agent's greedy policy (most likely node, mean radius); "
        f"stochastic = sampled actions ({settings.episodes} episodes per instance). "
        f"Generated conditions: {settings.num_instances} instances from seed {settings.seed}; a city condition "
        "is one instance.",
        "",
        "Runs: " + "; ".join(
            f"{arm}: {len(rs)} (seeds {', '.join(str(r['run']['seed']) for r in rs)})" for arm, rs in arms.items()
        ),
        "",
    ]
    header = ["condition", "N", "K", "greedy ref. return", "random"]
    for arm in arms:
        header += [f"{arm} deterministic", f"{arm} stochastic"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in conditions:
        cells = [r["conditions"][name] for r in results]
        row = [
            name,
            _same_or_varies([c["env"]["num_nodes"] for c in cells]),
            _same_or_varies([c["env"]["num_sites"] for c in cells]),
            _same_or_varies([round(c["greedy_return"], 6) for c in cells], _fmt),
            _same_or_varies([round(c["random_greedy_ratio"], 6) for c in cells], _fmt),
        ]
        for rs in arms.values():
            for key in ("greedy_ratio", "stochastic_greedy_ratio"):
                scores = np.array([r["conditions"][name][key] for r in rs])
                row.append(_cell(stats.bootstrap_ci(scores, stats.mean, reps=reps, seed=0)))
        lines.append("| " + " | ".join(row) + " |")
    if len(conditions) > 1:
        row = ["**all (IQM over seeds x conditions)**", "", "", "", ""]
        for rs in arms.values():
            for key in ("greedy_ratio", "stochastic_greedy_ratio"):
                scores = np.array([[r["conditions"][c][key] for c in conditions] for r in rs])  # (runs, conditions)
                row.append(_cell(stats.bootstrap_ci(scores, stats.iqm, reps=reps, seed=0)))
        lines.append("| " + " | ".join(row) + " |")
    names = list(arms)
    if len(names) > 1:
        lines += ["", "Probability of improvement (deterministic policy; mean over conditions of P(X > Y) over seed pairs):", ""]
        for i, base in enumerate(names):
            for other in names[i + 1 :]:
                p = np.mean([
                    stats.probability_of_improvement(
                        [r["conditions"][c]["greedy_ratio"] for r in arms[other]],
                        [r["conditions"][c]["greedy_ratio"] for r in arms[base]],
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
    "structure_shift|cities] [episodes=4] [num_instances=32] [seed=2027] [device=auto] [table=PATH]"
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
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"wsa_lab.evaluate: error: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    print(result.table, end="")
    print(f"wrote eval_{result.suite}.json in {len(result.runs)} run folder(s) and {result.table_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
