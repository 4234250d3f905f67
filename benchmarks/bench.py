"""`python benchmarks/bench.py`: how fast each ablation arm trains, measured side by side in one process.

For every arm it builds the env, actor-critic and PPO with `train`'s builders (`wsa_lab.build`), then runs
PPO iterations (rollout + update) round-robin over the arms: one warm-up round, then `--repeats` rounds,
reporting medians. Per arm: env steps per second of the rollout, of the update and overall, the share of
the iteration spent in the environment (step + observation + rendering), and the peak memory (CPU: peak
RSS of a fresh subprocess running the arm; CUDA: max allocated). Then a scaling sweep over graph size and
PTM count, gradient checkpointing on/off at a large image, the coverage env through its Gymnasium registration
(gymnasium's vector env) next to the batched one, the cost of mixed-size graph batches against their total node
count, and a check that the evaluation set's reference returns are computed once. Prints tables and writes
everything to a JSON file. Timers wrap the env from outside (:class:`TimedEnv`); no production method is replaced.

    python benchmarks/bench.py                    # everything (~20 min on 2 CPU cores)
    python benchmarks/bench.py --only arms        # the five main arms only
    python benchmarks/bench.py --profile          # + the top ops of one update per main arm

(`python -m benchmarks.bench` from the repository root does the same.) It is a script beside the package, not part
of it: `wsa_lab` must be importable (installed, or its `src` on PYTHONPATH).

ImageNet files are not needed: when they are missing (`--weights auto`), same-shaped random state dicts
stand in for them (timings do not depend on the values) and the output says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from wsa_lab.build import build_training, make_env
from wsa_lab.config.validate import validate
from wsa_lab.run.atomic import write_text_atomic
from wsa_lab.resources import estimate_memory
from wsa_lab.rl import Evaluator

# Main arms: the comparison (standard actor vs WSA-3, with the frozen-feature cache on and off).
ALL_FROZEN = ["ptm.graph_cnn.freeze_backbone=true", "ptm.resnet18_random.freeze_backbone=true"]
NO_CACHE = ["actor_critic.frozen_feature_cache=false"]
ARMS: dict[str, list[str]] = {
    "standard": ["experiment=phase1_baseline"],
    "wsa3_hybrid": ["experiment=phase3_hybrid"],
    "wsa3_hybrid_nocache": ["experiment=phase3_hybrid", *NO_CACHE],
    "wsa3_frozen": ["experiment=phase3_hybrid", *ALL_FROZEN],
    "wsa3_frozen_nocache": ["experiment=phase3_hybrid", *ALL_FROZEN, *NO_CACHE],
}
# The coverage env through gymnasium's SyncVectorEnv (env=gym): the same dynamics, one instance per sub-env.
GYM_COVERAGE = ["env=gym", "env.id=wsa_lab.envs:wsa_lab/Coverage-v0"]
GYM_ARMS: dict[str, list[str]] = {
    "standard_gym": ["experiment=phase1_baseline", *GYM_COVERAGE],
    "wsa3_hybrid_gym": ["experiment=phase3_hybrid", *GYM_COVERAGE],
}
# The start-up memory estimate (wsa_lab.resources) against the measured peak RSS of one iteration.
N20000 = ["env.num_nodes=20000", "algo.num_envs=2", "algo.num_steps=8", "evaluation.num_instances=2",
          "algo.num_minibatches=1"]
MEMORY_CONFIGS: dict[str, list[str]] = {
    "standard": ["experiment=phase1_baseline"],
    "wsa3_hybrid": ["experiment=phase3_hybrid"],
    "wsa3_hybrid_envs64": ["experiment=phase3_hybrid", "algo.num_envs=64"],
    "wsa3_hybrid_image64": ["experiment=phase3_hybrid", "env.image_size=64"],
    "wsa3_hybrid_N2000": ["experiment=phase3_hybrid", "env.num_nodes=2000", "algo.num_steps=8", "algo.num_minibatches=1"],
    "graph_only_N2000": ["ptm=[graph_cnn]", "env.num_nodes=2000", "algo.num_envs=64"],
    # 20,000 nodes: one instance's kNN distances alone would be 1.6 GB (the env builds them in row blocks)
    "standard_N20000": ["experiment=phase1_baseline", *N20000],
    "wsa3_hybrid_N20000": ["experiment=phase3_hybrid", *N20000],
}
# Mixed-size batches: total nodes of a batch of graphs with 10..200 nodes each, degree 8.
MIXED_TOTAL_NODES = (1600, 3200, 6400, 12800)
QUICK_MIXED_TOTAL_NODES = (200, 400)
SWEEP_NODES = (50, 200, 500, 2000)
SWEEP_PTMS = (1, 2, 3, 4)
# Sweeps and the checkpointing probe use shorter rollouts with the default minibatch size (128 samples).
SHORT_ROLLOUT = ["algo.num_steps=8", "algo.num_minibatches=1"]
CHECKPOINT_IMAGE = 128
# Tiny sizes for `--quick` (tests): every code path in seconds.
QUICK = [
    "env.num_nodes=20", "env.knn_k=4", "env.num_sites=3", "env.image_size=32", "algo.num_envs=4",
    "algo.num_steps=4", "algo.num_minibatches=2", "algo.update_epochs=1", "algo.total_timesteps=16",
    "evaluation.num_instances=4",
]
QUICK_GYM = ["+env.kwargs.num_nodes=20", "+env.kwargs.knn_k=4", "+env.kwargs.num_sites=3"]
QUICK_NODES, QUICK_PTMS, QUICK_IMAGE = (20, 40), (1, 2), 64
TARGETS = {
    "hybrid_cost_vs_standard_max": 1.25,
    "frozen_speedup_vs_standard_min": 2.0,
    "env_share_max": 0.05,
}


# ---------------------------------------------------------------------------------------------- building
@dataclass
class Arm:
    """One configuration, built like `train` builds a run, with timers around the env and the phases."""

    name: str
    overrides: list[str]
    ppo: Any
    device: torch.device
    info: dict[str, Any]
    env: TimedEnv
    samples: list[dict[str, float]] = field(default_factory=list)
    cuda_peak: int = 0


def compose(overrides: list[str], output_dir: str) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from wsa_lab.conf_files import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose("config", overrides=[*overrides, f"paths.output_dir={output_dir}"])


class TimedEnv:
    """A vector env with a stopwatch around `step` (dynamics + observation + rendering); all else is the env's."""

    def __init__(self, env: Any, device: torch.device) -> None:
        self.env, self.device, self.seconds = env, device, 0.0

    def step(self, *args: Any, **kwargs: Any) -> Any:
        start = _now(self.device)
        result = self.env.step(*args, **kwargs)
        self.seconds += _now(self.device) - start
        return result

    def __getattr__(self, name: str) -> Any:  # num_envs, device, reset, spaces, ...: the wrapped env's
        return getattr(self.env, name)


def build_arm(name: str, overrides: list[str], device: str, workdir: str) -> Arm:
    """The arm's env, agent and PPO, built by `wsa_lab.build` as a run builds them (without the evaluator), with
    :class:`TimedEnv` around the training env."""
    cfg = compose([*overrides, f"device={device}", "seed=0"], os.path.join(workdir, name))
    settings = validate(cfg)
    built = build_training(cfg, settings, [], evaluation=False, wrap_env=lambda env: TimedEnv(env, settings.device))
    agent, env, ppo = built.agent, built.env, built.ppo
    params = list(agent.parameters())
    env_cfg = cfg.env.get("kwargs") or cfg.env  # the coverage env's sizes, whether batched or through env=gym
    num_nodes = int(env_cfg.get("num_nodes", 50))
    info = {
        "ptm_names": agent.ptm_names,
        "frozen_feature_cache": agent.cacheable,
        "num_nodes": num_nodes,
        "image_size": env_cfg.get("image_size", 32),
        "batch_size": settings.algo.batch_size,
        "minibatch_size": settings.algo.minibatch_size,
        "update_epochs": settings.algo.update_epochs,
        "checkpointing": num_nodes > cfg.actor_critic.checkpoint_min_nodes,
        "params_total": sum(p.numel() for p in params),
        "params_trainable": sum(p.numel() for p in params if p.requires_grad),
    }
    return Arm(name, overrides, ppo, settings.device, info, env)


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


# ---------------------------------------------------------------------------------------------- measuring
def run_iteration(arm: Arm) -> dict[str, float]:
    """One PPO iteration (rollout + update) of `arm`, timed by phase."""
    if arm.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(arm.device)
    arm.env.seconds = 0.0
    start, cpu_start = _now(arm.device), time.process_time()
    arm.ppo.collect_rollout()
    mid, cpu_mid = _now(arm.device), time.process_time()
    arm.ppo.update()
    end, cpu_end = _now(arm.device), time.process_time()
    if arm.device.type == "cuda":
        arm.cuda_peak = max(arm.cuda_peak, torch.cuda.max_memory_allocated(arm.device))
    return {"rollout_s": mid - start, "update_s": end - mid, "env_s": arm.env.seconds,
            "rollout_cpu_s": cpu_mid - cpu_start, "update_cpu_s": cpu_end - cpu_mid}


STATS: dict[str, Callable[[list[float]], float]] = {"median": statistics.median, "min": min}


def measure(
    arms: list[Arm], warmup: int, repeats: int, log: Callable[[str], None], stat: str = "median"
) -> list[dict[str, Any]]:
    """Round-robin over the arms (so load changes hit every arm alike); `stat` (median) of the timed rounds."""
    for round_ in range(warmup + repeats):
        times = []
        for arm in arms:
            sample = run_iteration(arm)
            if round_ >= warmup:
                arm.samples.append(sample)
            times.append(f"{arm.name} {sample['rollout_s']:.2f}+{sample['update_s']:.2f}s")
        log(f"  round {round_ + 1}/{warmup + repeats}{' (warm-up)' if round_ < warmup else ''}: " + ", ".join(times))
    return [summarise(arm, stat) for arm in arms]


def summarise(arm: Arm, stat: str = "median") -> dict[str, Any]:
    """Per-phase `stat` over the timed rounds; the iteration's own `stat` (not the sum of the phases')."""
    agg = STATS[stat]
    keys = ("rollout_s", "update_s", "env_s", "rollout_cpu_s", "update_cpu_s")
    med = {k: agg([s[k] for s in arm.samples]) for k in keys}
    med["iteration_cpu_s"] = agg([s["rollout_cpu_s"] + s["update_cpu_s"] for s in arm.samples])
    iteration = [s["rollout_s"] + s["update_s"] for s in arm.samples]
    total = agg(iteration)
    steps = arm.info["batch_size"]
    row = {
        "arm": arm.name,
        "overrides": arm.overrides,
        **arm.info,
        **med,
        "iteration_s": total,
        "iteration_s_all": iteration,
        "sps_rollout": steps / med["rollout_s"],
        "sps_update": steps / med["update_s"],
        "sps_overall": steps / total,
        "env_share": agg([s["env_s"] / (s["rollout_s"] + s["update_s"]) for s in arm.samples]),
    }
    if arm.device.type == "cuda":
        row["cuda_max_allocated_mib"] = arm.cuda_peak / 2**20
    return row


def peak_rss_subprocess(overrides: list[str], device: str) -> dict[str, float]:
    """Peak RSS of a fresh process that builds the arm and runs one iteration (CPU memory per arm)."""
    probe = json.dumps({"overrides": overrides, "device": device})
    proc = subprocess.run(
        [sys.executable, __file__, "--probe-memory", probe], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe failed for {overrides}:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def probe_memory(spec: str) -> None:
    """Child side of `peak_rss_subprocess`: print {rss_start_mib, estimate_mib, rss_build_mib, rss_peak_mib,
    update_s} as JSON (`estimate_mib`: the start-up memory estimate of wsa_lab.resources for this config)."""
    args = json.loads(spec)
    with tempfile.TemporaryDirectory() as workdir:
        cfg = compose([*args["overrides"], f"device={args['device']}", "seed=0"], os.path.join(workdir, "estimate"))
        rss_start = _max_rss_mib()
        estimate = estimate_memory(cfg, validate(cfg)).total / 2**20
        arm = build_arm("probe", args["overrides"], args["device"], workdir)
        rss_build = _max_rss_mib()
        sample = run_iteration(arm)
    print(json.dumps({"rss_start_mib": rss_start, "estimate_mib": estimate, "rss_build_mib": rss_build,
                      "rss_peak_mib": _max_rss_mib(), "update_s": sample["update_s"]}))


def _max_rss_mib() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, bytes on macOS


def profile_update(arm: Arm, top: int = 15) -> str:
    """torch.profiler table (self CPU time) of one update of `arm`: what bounds its speed."""
    from torch.profiler import ProfilerActivity, profile

    arm.ppo.collect_rollout()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if arm.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        arm.ppo.update()
    key = "self_cuda_time_total" if arm.device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=top)


class CountedReferences:
    """A vector env that counts its `reference_returns()` calls (the references' cost: for coverage, greedy play)."""

    def __init__(self, env: Any) -> None:
        self.env, self.calls = env, 0

    def reference_returns(self) -> Any:
        self.calls += 1
        return self.env.reference_returns()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)


def reference_check(arm: Arm, overrides: list[str], workdir: str, evaluations: int = 3) -> dict[str, Any]:
    """Build the run's Evaluator and evaluate several times: the references are computed only at construction."""
    cfg = compose([*overrides, f"device={arm.device}"], os.path.join(workdir, "evaluator"))
    ev = validate(cfg).evaluation
    start = time.perf_counter()
    env = CountedReferences(make_env(cfg, num_envs=ev.num_instances, seed=ev.seed, device=arm.device))
    evaluator = Evaluator(env, ev.seed, ev.metric)
    build_s = time.perf_counter() - start
    after_build = env.calls
    start = time.perf_counter()
    for _ in range(evaluations):
        evaluator.evaluate(arm.ppo.agent)
    evaluate_s = (time.perf_counter() - start) / evaluations
    return {
        "reference_calls_at_construction": after_build,
        "reference_calls_during_evaluations": env.calls - after_build,
        "references": evaluator.reference_names,
        "evaluations": evaluations,
        "evaluator_build_s": build_s,
        "evaluate_s": evaluate_s,
        "computed_once": after_build == 1 and env.calls == after_build,
    }


def mixed_size_section(totals: tuple[int, ...], repeats: int, device: str, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Forward + backward of a graph-PTM actor-critic on batches of graphs of mixed sizes (10..200 nodes, degree
    8): time per batch against its total node count (flat batches: the cost should grow linearly)."""
    from hydra.utils import instantiate

    from wsa_lab.contract import GraphBatch, action_spec, observation_spec
    from wsa_lab.envs import coverage_spaces

    obs_space, act_space = coverage_spaces(200, 32)
    with tempfile.TemporaryDirectory() as workdir:  # the actor-critic as configured (conf/actor_critic), graph PTM only
        cfg = compose(["ptm=[graph_cnn]"], workdir)
        torch.manual_seed(0)
        build = instantiate(cfg.actor_critic, _partial_=True, _convert_="all")
        agent = build(observation_spec=observation_spec(obs_space), action_spec=action_spec(act_space)).to(device)
    node_width = obs_space["graph"].node_space.shape[0]
    rows = []
    for total in totals:
        gen = torch.Generator().manual_seed(total)
        sizes: list[int] = []
        while sum(sizes) < total:
            sizes.append(min(int(torch.randint(10, 201, (1,), generator=gen)), total - sum(sizes)))
        sizes = [n for n in sizes if n > 8] or [total]
        counts = torch.tensor(sizes)
        ptr = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        num_nodes = int(ptr[-1])
        graph_of = torch.repeat_interleave(torch.arange(len(sizes)), counts)
        # each node receives 8 edges from random nodes of its own graph (grouped by target)
        src = (ptr[graph_of].unsqueeze(1) + (torch.rand(num_nodes, 8, generator=gen) * counts[graph_of].unsqueeze(1)).long())
        dst = torch.arange(num_nodes).unsqueeze(1).expand(-1, 8)
        batch = GraphBatch(
            x=torch.rand(num_nodes, node_width, generator=gen), edge_index=torch.stack([src.reshape(-1), dst.reshape(-1)]),
            ptr=ptr, edge_ptr=ptr * 8, action_mask=torch.ones(num_nodes, dtype=torch.bool),
            edge_attr=torch.rand(num_nodes * 8, 1, generator=gen), positions=torch.rand(num_nodes, 2, generator=gen),
        ).to(device)
        times = []
        for _ in range(repeats + 1):  # the first is a warm-up
            start = _now(torch.device(device))
            out = agent.get_action_and_value(batch)
            (out.log_prob.sum() + out.value.sum()).backward()
            times.append(_now(torch.device(device)) - start)
        seconds = statistics.median(times[1:])
        rows.append({"total_nodes": num_nodes, "graphs": len(sizes), "min_nodes": min(sizes), "max_nodes": max(sizes),
                     "seconds": seconds, "us_per_node": 1e6 * seconds / num_nodes})
        log(f"  mixed sizes: {num_nodes} nodes in {len(sizes)} graphs: {seconds * 1e3:.1f} ms")
    return rows


# ---------------------------------------------------------------------------------------------- weights
def weights_dir_for(mode: str, workdir: str) -> tuple[str | None, str]:
    """(paths.weights_dir override or None, note). `synthetic`: same-shaped random state dicts in `workdir`."""
    from wsa_lab.errors import WeightsNotFoundError
    from wsa_lab.weights.checks import ALLOW_UNVERIFIED_ENV, check_weights_file
    from wsa_lab.weights.files import weights_file, weights_file_name
    from wsa_lab.weights.names import RESNETS

    needed = ("resnet18", "resnet34")  # the ImageNet PTMs of the benchmarked arms
    if mode in ("auto", "real"):
        try:
            files = [weights_file(m, RESNETS[m].imagenet, allow_download=False) for m in needed]
            if all(check_weights_file(f).state == "ok" for f in files):
                return None, "real ImageNet weights (torch hub cache)"
            # found, but not the files their names promise (stand-ins under the opt-out): say so
            return None, "stand-in ImageNet files (torch hub cache; their SHA-256 does not match torchvision's)"
        except WeightsNotFoundError:
            if mode == "real":
                raise

    folder = Path(workdir) / "synthetic_weights"
    folder.mkdir(parents=True, exist_ok=True)
    # stand-ins do not match torchvision's checksums: the loud opt-out (inherited by the memory subprocesses)
    os.environ[ALLOW_UNVERIFIED_ENV] = "1"
    for model_type in needed:
        torch.manual_seed(0)
        torch.save(RESNETS[model_type].builder(weights=None).state_dict(), folder / weights_file_name(model_type))
    return str(folder), f"synthetic weights (ImageNet files absent; same shapes, so the same cost; {ALLOW_UNVERIFIED_ENV}=1)"


# ---------------------------------------------------------------------------------------------- report
def ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    by = {r["arm"]: r for r in rows}
    out: dict[str, float] = {}
    for key, suffix in (("iteration_s", ""), ("iteration_cpu_s", "_cpu_time")):  # wall clock; process CPU time
        if not all(key in r for r in rows):
            continue
        if "standard" in by:
            base = by["standard"][key]
            for r in rows:
                r[f"cost_vs_standard{suffix}"] = r[key] / base  # time per env step relative to the standard actor
            if "wsa3_hybrid" in by:
                out[f"hybrid_cost_vs_standard{suffix}"] = by["wsa3_hybrid"][key] / base
            if "wsa3_frozen" in by:
                out[f"frozen_speedup_vs_standard{suffix}"] = base / by["wsa3_frozen"][key]
        for arm in ("wsa3_hybrid", "wsa3_frozen"):
            if arm in by and f"{arm}_nocache" in by:
                out[f"{arm}_cache_speedup{suffix}"] = by[f"{arm}_nocache"][key] / by[arm][key]
    if rows:
        out["env_share_max"] = max(r["env_share"] for r in rows)
    return out


def target_verdicts(r: dict[str, float]) -> dict[str, dict[str, Any]]:
    checks = {"env_share_max": ("<=", TARGETS["env_share_max"])}
    for suffix in ("", "_cpu_time"):
        checks[f"hybrid_cost_vs_standard{suffix}"] = ("<=", TARGETS["hybrid_cost_vs_standard_max"])
        checks[f"frozen_speedup_vs_standard{suffix}"] = (">=", TARGETS["frozen_speedup_vs_standard_min"])
    out = {}
    for key, (op, bound) in checks.items():
        if key in r:
            ok = r[key] <= bound if op == "<=" else r[key] >= bound
            out[key] = {"value": r[key], "target": f"{op} {bound}", "met": ok}
    return out


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """Markdown table; `columns` = (header, key, format)."""
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        cells = [format(r[k], f) if r.get(k) is not None else "-" for _, k, f in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


ARM_COLUMNS = [
    ("arm", "arm", ""), ("rollout SPS", "sps_rollout", ".0f"), ("update SPS", "sps_update", ".0f"),
    ("overall SPS", "sps_overall", ".0f"), ("s / iteration", "iteration_s", ".2f"),
    ("cost vs standard", "cost_vs_standard", ".2f"), ("(CPU time)", "cost_vs_standard_cpu_time", ".2f"),
    ("env share", "env_share", ".1%"),
    ("trainable params", "params_trainable", ","), ("peak RSS MiB", "rss_peak_mib", ".0f"),
]


def machine_info(device: str) -> dict[str, Any]:
    info = {
        "host": platform.node(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "device": device,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__.splitlines()[0])
    sections = ["arms", "gym", "mixed", "nodes", "ptms", "checkpoint", "references", "memory"]
    parser.add_argument("--only", nargs="+", choices=sections, default=sections, help="sections to run")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds of the main arms (median); default 5")
    parser.add_argument("--sweep-repeats", type=int, default=None, help="timed rounds of the sweeps; default 3")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds before the timed ones; default 1")
    parser.add_argument("--stat", choices=list(STATS), default="median",
                        help="statistic over the timed rounds (min resists other jobs on a shared machine)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--weights", choices=["auto", "real", "synthetic"], default="auto")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS subprocesses (CPU)")
    parser.add_argument("--profile", action="store_true", help="print the top ops of one update per main arm")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test, not a measurement)")
    parser.add_argument("--out", default="bench.json", help="JSON output file")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every configuration")
    parser.add_argument("--probe-memory", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe_memory:
        probe_memory(args.probe_memory)
        return {}
    if args.threads:
        torch.set_num_threads(args.threads)
    defaults = (1, 1, 0) if args.quick else (5, 3, 1)  # repeats, sweep repeats, warm-up rounds
    for name, default in zip(("repeats", "sweep_repeats", "warmup"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, default)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    common = [*(QUICK if args.quick else []), *args.overrides]
    nodes = QUICK_NODES if args.quick else SWEEP_NODES
    counts = QUICK_PTMS if args.quick else SWEEP_PTMS
    image = QUICK_IMAGE if args.quick else CHECKPOINT_IMAGE
    memory = not args.no_memory and not args.device.startswith("cuda")
    report: dict[str, Any] = {
        "command": "python benchmarks/bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(args.device),
        "settings": {"repeats": args.repeats, "sweep_repeats": args.sweep_repeats, "warmup": args.warmup,
                     "stat": args.stat, "overrides": common},
        "targets": TARGETS,
    }
    with tempfile.TemporaryDirectory() as workdir:
        weights_dir, note = weights_dir_for(args.weights, workdir)
        report["weights"] = note
        if weights_dir:
            common = [*common, f"paths.weights_dir={weights_dir}"]
        log(f"bench: {note}; torch threads {torch.get_num_threads()}; device {args.device}")

        def run_group(title: str, configs: dict[str, list[str]], repeats: int) -> list[dict[str, Any]]:
            log(f"{title}: building {len(configs)} configurations")
            arms = [build_arm(name, [*common, *ov], args.device, workdir) for name, ov in configs.items()]
            rows = measure(arms, args.warmup, repeats, log, args.stat)
            if memory:
                for row, arm in zip(rows, arms):
                    row.update(peak_rss_subprocess(arm.overrides, args.device))
            return rows

        if "arms" in args.only:
            rows = run_group("main arms", ARMS, args.repeats)
            report["arms"] = rows
            report["ratios"] = ratios(rows)
            report["verdicts"] = target_verdicts(report["ratios"])
            if args.profile:
                arms = [build_arm(name, [*common, *ov], args.device, workdir) for name, ov in ARMS.items()]
                report["profiles"] = {arm.name: profile_update(arm) for arm in arms}
        if "nodes" in args.only:
            configs = {}
            for n in nodes:
                for arm in ("standard", "wsa3_hybrid"):
                    configs[f"{arm}_N{n}"] = [*ARMS[arm], f"env.num_nodes={n}", *([] if args.quick else SHORT_ROLLOUT)]
            report["sweep_nodes"] = run_group("graph-size sweep", configs, args.sweep_repeats)
        if "ptms" in args.only:
            configs = {f"wsa{k}": ["experiment=phase4_count", f"ptm_count={k}", *([] if args.quick else SHORT_ROLLOUT)]
                       for k in counts}
            report["sweep_ptms"] = run_group("PTM-count sweep", configs, args.sweep_repeats)
        if "checkpoint" in args.only:
            report["checkpointing"] = checkpoint_section(args, common, image, memory, workdir, log)
        if "gym" in args.only:
            # the same arms through gymnasium's vector env, measured together with their batched twins
            gym_common = [o for o in common if not o.startswith("env.")] + (QUICK_GYM if args.quick else [])
            configs = {name.removesuffix("_gym"): ARMS[name.removesuffix("_gym")] for name in GYM_ARMS}
            log(f"coverage env through Gymnasium: building {2 * len(configs)} configurations")
            arms = [build_arm(name, [*common, *ov], args.device, workdir) for name, ov in configs.items()]
            arms += [build_arm(name, [*gym_common, *ov], args.device, workdir) for name, ov in GYM_ARMS.items()]
            rows = measure(arms, args.warmup, args.sweep_repeats, log, args.stat)
            by = {r["arm"]: r for r in rows}
            for name in GYM_ARMS:
                by[name]["cost_vs_batched"] = by[name]["iteration_s"] / by[name.removesuffix("_gym")]["iteration_s"]
            report["gym"] = rows
        if "mixed" in args.only:
            totals = QUICK_MIXED_TOTAL_NODES if args.quick else MIXED_TOTAL_NODES
            report["mixed_sizes"] = mixed_size_section(totals, args.sweep_repeats, args.device, log)
        if "memory" in args.only and not args.device.startswith("cuda"):
            configs = {name: [*common, *ov] for name, ov in MEMORY_CONFIGS.items()}
            if args.quick:
                configs = dict(list(configs.items())[:2])
            rows = []
            for name, ov in configs.items():
                log(f"memory estimate vs measured: {name}")
                row = {"config": name, **peak_rss_subprocess(ov, args.device)}
                row["predicted_mib"] = row["rss_start_mib"] + row["estimate_mib"]
                row["measured_over_predicted"] = row["rss_peak_mib"] / row["predicted_mib"]
                rows.append(row)
            report["memory"] = rows
        if "references" in args.only:
            overrides = [*common, *ARMS["wsa3_hybrid"]]
            arm = build_arm("references", overrides, args.device, workdir)
            report["references"] = reference_check(arm, overrides, workdir)
    text = render(report)
    print(text)
    write_text_atomic(args.out, json.dumps(report, indent=2, default=str))
    log(f"wrote {args.out}")
    return report


def checkpoint_section(args: argparse.Namespace, common: list[str], image: int, memory: bool, workdir: str,
                       log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Gradient checkpointing on vs off at a large image: peak memory and update time (one epoch)."""
    configs = {}
    for arm in ("standard", "wsa3_hybrid"):
        for on in (False, True):
            configs[f"{arm}_ckpt_{'on' if on else 'off'}"] = [
                *ARMS[arm], f"env.image_size={image}", *([] if args.quick else SHORT_ROLLOUT), "algo.update_epochs=1",
                f"actor_critic.checkpoint_min_nodes={0 if on else 1_000_000}",
            ]
    log(f"gradient checkpointing at image_size={image}: {len(configs)} configurations")
    grad_diff = {arm: checkpoint_gradient_diff([*common, *configs[f"{arm}_ckpt_off"]],
                                               [*common, *configs[f"{arm}_ckpt_on"]], args.device, workdir)
                 for arm in ("standard", "wsa3_hybrid")}
    rows = []
    for name, ov in configs.items():
        row: dict[str, Any] = {"config": name, "image_size": image, "checkpointing": name.endswith("_on")}
        if row["checkpointing"]:
            row["grad_max_abs_diff"] = grad_diff[name.removesuffix("_ckpt_on")]
        if memory:
            row.update(peak_rss_subprocess([*common, *ov], args.device))
        else:
            arm = build_arm(name, [*common, *ov], args.device, workdir)
            run_iteration(arm)
            sample = run_iteration(arm)
            row["update_s"] = sample["update_s"]
            if arm.device.type == "cuda":
                row["cuda_max_allocated_mib"] = arm.cuda_peak / 2**20
            del arm
        rows.append(row)
    return rows


def checkpoint_gradient_diff(off: list[str], on: list[str], device: str, workdir: str) -> float:
    """Largest |difference| over every parameter's gradient of one loss, checkpointing off vs on (same seed,
    same states, same dropout draws): 0.0 means checkpointing changes memory and time, not the training."""
    grads = []
    for overrides in (off, on):
        arm = build_arm("gradients", overrides, device, workdir)  # seed 0: same weights, same env states
        agent = arm.ppo.agent
        torch.manual_seed(1)  # the same dropout masks in both builds (checkpointing replays the RNG state)
        step = agent.get_action_and_value(arm.ppo.next_obs)
        (step.log_prob.sum() + step.value.sum() + step.entropy.sum()).backward()
        grads.append({n: p.grad.clone() for n, p in agent.named_parameters() if p.grad is not None})
        del arm
    if grads[0].keys() != grads[1].keys():
        raise RuntimeError("checkpointing changed which parameters get gradients")
    return max((grads[0][n] - grads[1][n]).abs().max().item() for n in grads[0])


def render(report: dict[str, Any]) -> str:
    out = [f"# benchmarks/bench.py  ({report['machine']['device']}, {report['machine']['torch_threads']} threads, "
           f"{report['weights']})", ""]
    if "arms" in report:
        stat = report["settings"]["stat"]
        out += [f"## Main arms (env steps per second; {stat} of the timed rounds)", "", table(report["arms"], ARM_COLUMNS), ""]
        # the targets are for the 2-core CPU; a GPU run at these sizes is bound by kernel launches
        on_cpu = report["machine"]["device"] == "cpu"
        for key, v in report.get("verdicts", {}).items():
            verdict = ("MET" if v["met"] else "NOT MET") if on_cpu else "reported only (the target is for the CPU)"
            out.append(f"- {key}: {v['value']:.2f} (target {v['target']}): {verdict}")
        for key, value in report.get("ratios", {}).items():
            if key.endswith("cache_speedup"):
                out.append(f"- {key}: {value:.2f}x")
        out.append("")
    sweep_cols = [("config", "arm", ""), ("N", "num_nodes", "d"), ("PTMs", "ptm_names", ""),
                  ("ckpt", "checkpointing", ""), ("rollout SPS", "sps_rollout", ".0f"),
                  ("update SPS", "sps_update", ".0f"), ("overall SPS", "sps_overall", ".0f"),
                  ("env share", "env_share", ".1%"), ("peak RSS MiB", "rss_peak_mib", ".0f"),
                  ("CUDA MiB", "cuda_max_allocated_mib", ".0f")]
    for key, title in (("sweep_nodes", "Graph-size sweep"), ("sweep_ptms", "PTM-count sweep")):
        if key in report:
            rows = [{**r, "ptm_names": "+".join(r["ptm_names"]) or "(standard)"} for r in report[key]]
            out += [f"## {title}", "", table(rows, sweep_cols), ""]
    if "checkpointing" in report:
        cols = [("config", "config", ""), ("image", "image_size", "d"), ("checkpointing", "checkpointing", ""),
                ("peak RSS MiB", "rss_peak_mib", ".0f"), ("RSS after build MiB", "rss_build_mib", ".0f"),
                ("CUDA MiB", "cuda_max_allocated_mib", ".0f"), ("update s (one run)", "update_s", ".2f"),
                ("max |grad diff| vs off", "grad_max_abs_diff", ".1e")]
        out += ["## Gradient checkpointing (one update epoch of 128 samples)", "", table(report["checkpointing"], cols), ""]
    if "gym" in report:
        cols = [("config", "arm", ""), ("rollout SPS", "sps_rollout", ".0f"), ("update SPS", "sps_update", ".0f"),
                ("overall SPS", "sps_overall", ".0f"), ("s / iteration", "iteration_s", ".2f"),
                ("cost vs batched", "cost_vs_batched", ".2f"), ("env share", "env_share", ".1%")]
        out += ["## Coverage env: batched vs through its Gymnasium registration (SyncVectorEnv)", "",
                table(report["gym"], cols), ""]
    if "mixed_sizes" in report:
        cols = [("total nodes", "total_nodes", "d"), ("graphs", "graphs", "d"), ("nodes per graph", "sizes", ""),
                ("forward+backward ms", "ms", ".1f"), ("us per node", "us_per_node", ".2f")]
        rows = [{**r, "sizes": f"{r['min_nodes']}..{r['max_nodes']}", "ms": 1e3 * r["seconds"]} for r in report["mixed_sizes"]]
        out += ["## Mixed-size graph batches (graph_cnn WSA actor-critic, forward + backward)", "", table(rows, cols), ""]
    if "memory" in report:
        cols = [("config", "config", ""), ("RSS at start MiB", "rss_start_mib", ".0f"), ("estimate MiB", "estimate_mib", ".0f"),
                ("predicted peak MiB", "predicted_mib", ".0f"), ("measured peak MiB", "rss_peak_mib", ".0f"),
                ("measured / predicted", "measured_over_predicted", ".2f")]
        out += ["## Start-up memory estimate vs measured peak RSS (one iteration)", "", table(report["memory"], cols), ""]
    if "references" in report:
        g = report["references"]
        out += ["## Reference returns of the evaluation set", "",
                f"reference_returns() calls ({', '.join(g['references'])}): {g['reference_calls_at_construction']} when "
                f"the Evaluator is built, {g['reference_calls_during_evaluations']} during {g['evaluations']} evaluations "
                f"(computed once: {g['computed_once']}); build {g['evaluator_build_s']:.2f} s, "
                f"one evaluation {g['evaluate_s']:.2f} s", ""]
    for name, prof in report.get("profiles", {}).items():
        out += [f"## Profile of one update: {name}", "", "```", prof, "```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    main()
