"""`train(cfg)`: the training loop. It builds its run through :mod:`wsa_lab.build`, trains, and fills the run folder.

The run folder (`paths.output_dir`) gets: `.hydra/` (Hydra), `resolved_config.yaml`, `metrics.jsonl`,
`summary.json` and `checkpoints/{last,prev}.pt`. A folder that already holds a checkpoint is resumed
(`resume=false` starts over); see `wsa_lab.run.folder`.
"""

from __future__ import annotations

import logging
import math
import platform
import time
from typing import Any

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from wsa_lab.build import build_training, close_env
from wsa_lab.config.validate import validate
from wsa_lab.contract import VectorGraphEnv
from wsa_lab.errors import ConfigError, EnvError, TrainingDivergedError
from wsa_lab.resources import check_memory, human
from wsa_lab.rl import PPO
from wsa_lab.rl.attention_probe import write_attention_states
from wsa_lab.run.folder import Checkpoint, RunFolder, config_snapshot, resume_changes
from wsa_lab.run.init_from import carry_over, read_source
from wsa_lab.run.signals import Interrupted, StopSignals
from wsa_lab.seeding import rng_state, set_rng_state
from wsa_lab.tracking import Continuation, build_tracker
from wsa_lab.weights.checks import forget_weight_checks, unverified_weight_files

log = logging.getLogger(__name__)

# What a checkpoint must hold to resume from it (besides PPO.state_dict's keys).
CHECKPOINT_KEYS = ("agent", "optimizer", "global_step", "iteration", "env", "rng", "history", "config")


def _count_params(module: torch.nn.Module) -> tuple[int, int]:
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def _restore(
    cfg: DictConfig, folder: RunFolder, ppo: PPO, env: VectorGraphEnv, found: Checkpoint | None
) -> tuple[dict[str, Any], Continuation] | None:
    """Continue from the accepted checkpoint; return its history and where the loggers continue, or None for a fresh
    start."""
    if found is None:
        folder.start_over(drop_checkpoints=not cfg.get("resume", True))
        return None
    state, path = found
    ppo.load_state_dict(state)
    restored = hasattr(env, "load_state_dict") and env.load_state_dict(state["env"]) is not False
    if not restored:  # the env cannot restore its episodes in flight: they restart, from seeds the step fixes
        log.warning("env %s keeps no state: the episodes in flight at the checkpoint restart", type(env).__name__)
        ppo.next_obs = env.reset(seed=(cfg.seed + 1_000_003 * ppo.global_step) % 2**31)
        ppo.next_done.zero_()
    set_rng_state(state["rng"])
    threads = state.get("torch_threads")
    if threads is not None and threads != torch.get_num_threads():
        log.warning(
            "this run was checkpointed with %d torch threads and resumes with %d: CPU sums are ordered by thread, so "
            "logged values may differ from an uninterrupted run in the last digits (set OMP_NUM_THREADS=%d to match)",
            threads, torch.get_num_threads(), threads,
        )
    dropped, logged_until = folder.resume_metrics_at(ppo.global_step)
    log.info(
        "resuming from %s at global_step %d (iteration %d); %d metrics lines logged after it were dropped",
        path, ppo.global_step, ppo.iteration, dropped,
    )
    history = dict(state["history"])
    history["resumed_from_steps"] = [*history.get("resumed_from_steps", []), ppo.global_step]
    return history, Continuation(step=ppo.global_step, logged_until=logged_until)


def env_name(cfg: DictConfig) -> str:
    """What the run trained on: the Gymnasium id, else the env class."""
    return str(cfg.env.get("id") or str(cfg.env.get("_target_", "?")).rsplit(".", 1)[-1])


def _fmt(value: float | None) -> str:
    """A progress-bar number: `-` until there is one (e.g. before the first evaluation)."""
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train one run (or resume it from its folder's checkpoint); return its summary."""
    envs: list[Any] = []  # closed at the end (async Gymnasium envs hold worker processes)
    # one writer per run folder: RunFolderBusyError if a live run holds it (held once: the CLI's callback took it)
    with RunFolder(cfg.paths.output_dir) as folder:
        try:
            return _train(cfg, folder, envs)
        finally:
            for env in envs:
                close_env(env)


def _train(cfg: DictConfig, folder: RunFolder, envs: list[Any]) -> dict[str, Any]:
    settings = validate(cfg)
    algo, eval_cfg, ckpt_cfg = settings.algo, settings.evaluation, settings.checkpoint
    run_dir = folder.path
    snapshot = config_snapshot(cfg)
    # a refusal here leaves the folder as it was
    found = folder.accept_resume(snapshot, resume=cfg.get("resume", True), required=CHECKPOINT_KEYS)
    # init_from seeds a fresh start only: a run that resumes its own checkpoint (a requeue, a rerun) continues
    # from that, which began from init_from (the checkpoint's config says which: another one is refused above)
    source = read_source(cfg.init_from) if found is None and cfg.get("init_from") is not None else None
    if found is not None and cfg.get("init_from") is not None:
        log.info("init_from=%s is not loaded again: this run resumes its own checkpoint, which started from it", cfg.init_from)
    memory = check_memory(cfg, settings)  # before the envs allocate anything
    forget_weight_checks()  # the summary lists the weight files of this run, not of earlier runs in this process
    built = build_training(cfg, settings, envs)
    env, agent, ppo, evaluator = built.env, built.agent, built.ppo, built.evaluator
    carried = None  # what init_from loaded (summary.json's `init_from`)
    if source is not None:  # before the run writes anything: a mismatch leaves no trace
        outcome = carry_over(agent, source)
        log.info("%s", outcome.line())
        carried = outcome.record()
        del source, outcome  # the source's tensors (ResNet-sized) are not held while training
    metric = evaluator.metric
    best_key = "best_" + metric.removeprefix("eval/")
    total, trainable = _count_params(agent)
    summary: dict[str, Any] = {
        "name": cfg.name,
        "phase": cfg.phase,
        "seed": cfg.seed,
        "wsa_enabled": agent.uses_wsa,
        "fusion": cfg.actor_critic.wsa.fusion if agent.uses_wsa else None,
        "ptm_names": agent.ptm_names,
        "env": env_name(cfg),
        "metric": metric,
        "ptm_count": len(agent.ptm_names),
        "params_total": total,
        "params_trainable": trainable,
        "device": str(settings.device),
        "torch": torch.__version__,
        "host": platform.node(),
        "torch_threads": torch.get_num_threads(),
        "memory_estimate": human(memory),
        "unverified_weight_files": unverified_weight_files(),  # loaded under WSA_LAB_ALLOW_UNVERIFIED_WEIGHTS=1
        **evaluator.reference,
    }
    # evaluation history and time spent, carried across restarts by the checkpoint
    history: dict[str, Any] = {"best": -math.inf, "last_eval": {}, "wall_time_s": 0.0, "resumed_from_steps": []}
    if carried is not None:
        history["init_from"] = carried  # kept by the checkpoints, so a resumed run's summary says it too
    # Accepted (config, resume, env, models all fine): from here on the run writes to its folder.
    folder.write_resolved_config(cfg)
    resumed = _restore(cfg, folder, ppo, env, found)
    if resumed is not None:
        history.update(resumed[0])
    summary["resumed_from_steps"] = history["resumed_from_steps"]
    if "init_from" in history:
        summary["init_from"] = history["init_from"]
    if found is not None and (changes := resume_changes(found[0]["config"], snapshot)):
        log.warning("resumed with other settings: %s", "; ".join(changes))  # e.g. a lower learning rate after a divergence
        summary["resume_changes"] = [*found[0]["history"].get("resume_changes", []), *changes]
        history["resume_changes"] = summary["resume_changes"]
    progress = "console" in cfg.logger and bool(cfg.logger.console.progress_bar)  # the console logger's bar
    start, resumed_time = time.time(), history["wall_time_s"]

    saved_at = [ppo.global_step] if found is not None else []  # the steps of the checkpoints this folder holds

    def checkpoint() -> None:
        history["wall_time_s"] = resumed_time + time.time() - start
        saved_at.append(ppo.global_step)
        folder.save_checkpoint({
            **ppo.state_dict(), "env": env.state_dict() if hasattr(env, "state_dict") else {}, "rng": rng_state(),
            "history": history, "config": snapshot, "torch_threads": torch.get_num_threads(),
        })

    stopped_on_signal = False
    tracker = build_tracker(cfg, run_dir, None if resumed is None else resumed[1])
    tracker.write_summary({**summary, "status": "running"})
    # Signals stay caught until the summary is written: one that lands after the last iteration's checkpoint
    # (the run is complete) must not kill the process mid-summary.
    with StopSignals(run_dir) as signals:
        try:
            with tqdm(
                total=algo.num_iterations * algo.batch_size, initial=ppo.iteration * algo.batch_size, unit="step",
                disable=not progress, dynamic_ncols=True,
            ) as bar:
                if resumed is None:
                    tracker.log(evaluator.reference, step=0)
                while ppo.iteration < algo.num_iterations:
                    metrics = ppo.iterate()
                    last = ppo.iteration == algo.num_iterations
                    if ppo.iteration % eval_cfg.interval == 0 or last:
                        history["last_eval"] = evaluator.evaluate(agent)
                        value = history["last_eval"][metric]
                        if math.isfinite(value):
                            history["best"] = max(history["best"], value)
                        metrics.update(history["last_eval"])
                    tracker.log(metrics, step=ppo.global_step)
                    if agent.rollout.last_attention is not None:
                        tracker.log_attention(agent.rollout.last_attention, agent.ptm_names, step=ppo.global_step)
                    stop = signals.requested and not last
                    if ppo.iteration % ckpt_cfg.interval == 0 or last or stop:
                        checkpoint()
                    bar.update(algo.batch_size)
                    bar.set_postfix({
                        "ret": _fmt(metrics.get("charts/episodic_return")),
                        metric.removeprefix("eval/"): _fmt(history["last_eval"].get(metric)),
                        "sps": f"{metrics['charts/SPS']:.0f}",
                    })
                    if stop:
                        stopped_on_signal = True
                        signals.stop()  # requeue through submitit's handler, or exit 128 + signal
                # the report's "where is each PTM used" figure: per-state weights on a few held-out states
                write_attention_states(run_dir, agent, evaluator.env, evaluator.seed, ppo.global_step)
        except BaseException as exc:
            status = "interrupted" if stopped_on_signal or isinstance(exc, Interrupted) else "failed"
            failure = exc
            if isinstance(exc, (EnvError, TrainingDivergedError)):  # say what the folder still holds, and what to do
                kept = (f"the last good checkpoint (global_step {saved_at[-1]}) is kept: rerun the same command to resume"
                        if saved_at else "no checkpoint was written before it: the run starts again when rerun")
                failure = type(exc)(f"{exc}; {kept}")
            tracker.finish({
                **summary, "status": status, "error": f"{type(failure).__name__}: {failure}",
                "global_step": ppo.global_step, "wall_time_s": resumed_time + time.time() - start,
            })
            if failure is not exc:
                raise failure from exc
            raise
        summary.update(
            status="completed",
            global_step=ppo.global_step,
            iterations=ppo.iteration,
            wall_time_s=resumed_time + time.time() - start,
            **{best_key: history["best"]},
            **history["last_eval"],
        )
        tracker.finish(summary)
    return summary
