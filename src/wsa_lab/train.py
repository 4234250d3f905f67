"""`train(cfg)`: build env, actor-critic and PPO from the composed config, train, and fill the run folder.

The run folder (`paths.output_dir`) gets: `.hydra/` (Hydra), `resolved_config.yaml`, `metrics.jsonl`,
`summary.json` and `checkpoints/last.pt`.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from wsa_lab.checkpoint import save_checkpoint
from wsa_lab.config import validate
from wsa_lab.envs import CoverageEnv
from wsa_lab.errors import ConfigError, WsaLabError
from wsa_lab.models import ActorCritic
from wsa_lab.rl import PPO, Evaluator
from wsa_lab.seeding import rng_state, seed_everything
from wsa_lab.tracking import build_tracker


def _instantiate(node: DictConfig, where: str, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate`, with the component's own argument errors as one-line ConfigErrors."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, WsaLabError):
            raise cause from None
        if isinstance(cause, (ValueError, TypeError)):  # e.g. the env's checks: K >= N, r_min > r_max
            raise ConfigError(f"{where}: {cause}") from cause
        raise


def make_env(cfg: DictConfig, **kwargs: Any) -> CoverageEnv:
    """The environment of `cfg.env`; `num_envs`, `seed`, `device`, `autoreset` come from the caller."""
    return _instantiate(cfg.env, "env", **kwargs)


def make_agent(cfg: DictConfig, env: CoverageEnv) -> ActorCritic:
    """The actor-critic of `cfg.actor_critic`, sized for `env`'s observations."""
    return _instantiate(
        cfg.actor_critic, "actor_critic",
        node_feature_dim=env.node_feature_dim, image_size=env.image_size, _convert_="all",
    )


def _count_params(module: torch.nn.Module) -> tuple[int, int]:
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train one run; return its summary (final and best evaluation, references, sizes, timing)."""
    settings = validate(cfg)
    algo, eval_cfg, ckpt_cfg = settings.algo, settings.evaluation, settings.checkpoint
    run_dir = Path(cfg.paths.output_dir)
    (run_dir / "resolved_config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    device = settings.device
    seed_everything(cfg.seed)
    env = make_env(cfg, num_envs=algo.num_envs, seed=cfg.seed, device=device)
    agent = make_agent(cfg, env).to(device)
    eval_env = make_env(cfg, num_envs=eval_cfg.num_instances, seed=eval_cfg.seed, device=device, autoreset=False)
    evaluator = Evaluator(eval_env, eval_cfg.seed, eval_cfg.radius_grid)
    wsa_logging = cfg.actor_critic.wsa.get("logging", {}) if agent.uses_wsa else {}
    ppo = PPO(
        agent, env, algo,
        log_attention=wsa_logging.get("log_attention_weights", True),
        log_features=wsa_logging.get("log_features", True),
    )
    total, trainable = _count_params(agent)
    summary: dict[str, Any] = {
        "name": cfg.name,
        "phase": cfg.phase,
        "seed": cfg.seed,
        "wsa_enabled": agent.uses_wsa,
        "fusion": cfg.actor_critic.wsa.fusion if agent.uses_wsa else None,
        "ptm_names": agent.ptm_names,
        "ptm_count": len(agent.ptm_names),
        "params_total": total,
        "params_trainable": trainable,
        "device": str(device),
        "torch": torch.__version__,
        "host": platform.node(),
        **evaluator.reference,
    }
    progress = cfg.logger.get("console", {}).get("progress_bar", True)
    start = time.time()
    last_eval: dict[str, float] = {}
    best_ratio = float("-inf")
    tracker = build_tracker(cfg, run_dir)
    tracker.write_summary({**summary, "status": "running"})
    try:
        with tqdm(total=algo.num_iterations * algo.batch_size, unit="step", disable=not progress, dynamic_ncols=True) as bar:
            tracker.log(evaluator.reference, step=0)
            while ppo.iteration < algo.num_iterations:
                metrics = ppo.iterate()
                last = ppo.iteration == algo.num_iterations
                if ppo.iteration % eval_cfg.interval == 0 or last:
                    last_eval = evaluator.evaluate(agent)
                    best_ratio = max(best_ratio, last_eval["eval/greedy_ratio"])
                    metrics.update(last_eval)
                tracker.log(metrics, step=ppo.global_step)
                if ppo.last_attention is not None:
                    tracker.log_attention(ppo.last_attention, agent.ptm_names, step=ppo.global_step)
                if ppo.iteration % ckpt_cfg.interval == 0 or last:
                    save_checkpoint(
                        {**ppo.state_dict(), "rng": rng_state(), "env_rng": env.generator.get_state()},
                        run_dir / "checkpoints" / "last.pt",
                    )
                bar.update(algo.batch_size)
                bar.set_postfix(
                    ret=f"{metrics.get('charts/episodic_return', float('nan')):.3f}",
                    greedy_ratio=f"{last_eval.get('eval/greedy_ratio', float('nan')):.3f}",
                    sps=f"{metrics['charts/SPS']:.0f}",
                )
    except BaseException as exc:
        tracker.finish({**summary, "status": "failed", "error": f"{type(exc).__name__}: {exc}", "global_step": ppo.global_step})
        raise
    summary.update(
        status="completed",
        global_step=ppo.global_step,
        iterations=ppo.iteration,
        wall_time_s=time.time() - start,
        best_greedy_ratio=best_ratio,
        **last_eval,
    )
    tracker.finish(summary)
    return summary
