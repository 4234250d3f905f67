"""`pretrain(cfg)`: collect random-play states, train a PTM backbone self-supervised, write it out.

Outputs in `paths.pretrained_dir` (default `pretrained/`, relative to the working directory):
- `<name>.pt`: the backbone's state dict, exactly the module training builds for that PTM (loaded strictly);
- `ptm/<name>.yaml`: a PTM config naming it (frozen), usable with `--config-dir <pretrained_dir>`;
- `<name>.json`: what made it (env, objective, budget, seed, losses).
Work in progress lives in `.<name>/` next to them: `checkpoints/{last,prev}.pt` (atomic, written after every
epoch and on SIGTERM/SIGINT), so a killed job resumes where it stopped: the states are collected again from the
same seed (cheaper than storing them), then training continues from the checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from tqdm import tqdm

from wsa_lab.build import close_env, make_env  # the env exactly as training makes it
from wsa_lab.config.validate import resolve_device
from wsa_lab.contract import GraphBatch, specs
from wsa_lab.errors import ConfigError
from wsa_lab.models.inputs import StateInputs
from wsa_lab.models.ptm import PreTrainedModelWrapper, PTMSpec
from wsa_lab.pretrain.collect import collect_states, images_of
from wsa_lab.pretrain.objectives import OBJECTIVES, GraphInfomax, ImageAutoencoder
from wsa_lab.config.strict import structured
from wsa_lab.run.atomic import write_text_atomic
from wsa_lab.run.checkpoint import save_checkpoint, save_rotating
from wsa_lab.run.folder import RunFolder
from wsa_lab.run.signals import StopSignals
from wsa_lab.run.startup import check_name
from wsa_lab.seeding import seed_everything

log = logging.getLogger(__name__)

@dataclass
class PretrainBudget:
    """`pretrain` (conf/pretrain_scale/<scale>.yaml; each key is documented there)."""

    collect_steps: int
    num_envs: int
    epochs: int
    batch_size: int
    learning_rate: float

    def __post_init__(self) -> None:
        for key in ("collect_steps", "num_envs", "epochs", "batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or value < 1:
                raise ConfigError(f"pretrain.{key} must be an integer >= 1, got {value!r}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ConfigError(f"pretrain.learning_rate must be a finite number > 0, got {self.learning_rate}")


def _ptm_spec(cfg: DictConfig) -> PTMSpec:
    """The one `ptm` entry to pre-train, renamed `name` and frozen; it must start from random weights."""
    pool = OmegaConf.to_container(cfg.ptm, resolve=True) if cfg.get("ptm") else {}
    if len(pool) != 1:
        raise ConfigError(f"pre-train one PTM at a time: ptm=<one conf/ptm entry>, got {list(pool) or 'none'}")
    (entry,) = pool.values()
    spec = structured(PTMSpec, {**entry, "name": str(cfg.name), "freeze_backbone": True}, f"ptm.{next(iter(pool))}")
    if spec.weights not in (None, "random") or spec.weights_path:
        raise ConfigError(
            f"pre-training starts from a random initialisation: ptm={next(iter(pool))} has weights: {spec.weights}"
            f"{' and a weights_path' if spec.weights_path else ''}; choose a PTM with weights: random or null "
            "(e.g. ptm=resnet18_random, ptm=graph_cnn)"
        )
    return spec


def _snapshot(cfg: DictConfig) -> dict[str, Any]:
    keep = ("name", "objective", "seed", "env", "ptm", "pretrain")
    return {k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg[k], DictConfig) else cfg[k] for k in keep}


def pretrain(cfg: DictConfig) -> dict[str, Any]:
    """Pre-train the configured PTM on the env's random-play states; return what was written (see module doc).

    One job per name at a time: `<pretrained_dir>/.<name>/` is locked like a run folder, so a second job of the same
    name is refused at once instead of overwriting the first one's outputs.
    """
    check_name(cfg.name)
    job_dir = Path(str(cfg.paths.pretrained_dir)).expanduser() / f".{cfg.name}"
    with RunFolder(job_dir, hint=f"choose another name than {cfg.name!r}") as folder:
        return _pretrain(cfg, folder)


def _pretrain(cfg: DictConfig, folder: RunFolder) -> dict[str, Any]:
    if cfg.objective not in OBJECTIVES:
        raise ConfigError(f"objective={cfg.objective!r}: choose one of {list(OBJECTIVES)}")
    budget = structured(PretrainBudget, cfg.pretrain, "pretrain")
    spec = _ptm_spec(cfg)
    device = resolve_device(str(cfg.device))
    out_dir = Path(str(cfg.paths.pretrained_dir)).expanduser()
    job_dir = out_dir / f".{cfg.name}"
    snapshot = _snapshot(cfg)
    found = folder.accept_resume(snapshot, cfg.get("resume", True), what="a pre-training checkpoint", other="name")

    seed_everything(cfg.seed)
    env = make_env(cfg, num_envs=budget.num_envs, seed=cfg.seed, device=device)
    try:
        obs_spec, act_spec = specs(env)
        image_side = obs_spec.image_shape[1] if obs_spec.has_image else int(cfg.actor_critic.raster_size)
        image_channels = obs_spec.image_shape[0] if obs_spec.has_image else obs_spec.node_feature_dim
        ptm = PreTrainedModelWrapper(
            spec, int(cfg.actor_critic.feature_dim), obs_spec.node_feature_dim, int(cfg.actor_critic.graph_cnn_hidden_dim),
            None, 10**9, image_channels, image_side, obs_spec.edge_feature_dim, str(cfg.actor_critic.wsa.adapter),
        ).to(device)
        ptm.backbone.requires_grad_(True)  # frozen where it is used; trained here
        raster = None
        if ptm.is_image:
            if not (obs_spec.has_image or obs_spec.has_positions):
                raise ConfigError(f"PTM {spec.name!r} reads an image, but the env gives neither an image nor node positions")
            raster = None if obs_spec.has_image else image_side
        shuffle = torch.Generator().manual_seed(cfg.seed + 1)
        if cfg.objective == "autoencoder":
            objective: torch.nn.Module = ImageAutoencoder(ptm, (image_channels, image_side, image_side))
        else:
            objective = GraphInfomax(ptm, torch.Generator().manual_seed(cfg.seed + 2))
        objective.to(device)
        keep = (lambda obs: images_of(obs, raster)) if ptm.is_image else (lambda obs: obs.to("cpu"))
        states = collect_states(env, act_spec, budget.collect_steps, cfg.seed, keep, cfg.get("progress_bar", True))
    finally:
        close_env(env)
    data: Tensor | GraphBatch = torch.cat(states) if ptm.is_image else GraphBatch.cat(states)
    count = data.shape[0] if ptm.is_image else data.num_graphs
    log.info("collected %d states from env %s", count, cfg.env.get("id") or cfg.env._target_)
    return _train(cfg, budget, ptm, objective, data, count, shuffle, device, out_dir, job_dir, snapshot, found)


def _batch(data: Tensor | GraphBatch, index: Tensor, device: torch.device) -> StateInputs:
    if isinstance(data, Tensor):
        return StateInputs.of_images(data[index].to(device, torch.float32))
    return StateInputs.from_batch(data.select(index).to(device))


def _train(
    cfg: DictConfig, budget: PretrainBudget, ptm: PreTrainedModelWrapper, objective: torch.nn.Module,
    data: Tensor | GraphBatch, count: int, shuffle: torch.Generator, device: torch.device, out_dir: Path,
    job_dir: Path, snapshot: dict[str, Any], found: Optional[tuple[dict[str, Any], Path]],
) -> dict[str, Any]:
    optimizer = torch.optim.Adam(objective.parameters(), lr=budget.learning_rate)
    per_epoch = math.ceil(count / budget.batch_size)
    epoch, start_batch, losses = 0, 0, []
    epoch_rng = shuffle.get_state()
    if found is not None:
        state, path = found
        objective.load_state_dict(state["objective"])
        optimizer.load_state_dict(state["optimizer"])
        epoch, start_batch, losses = int(state["epoch"]), int(state["batch"]), list(state["losses"])
        epoch_rng = state["epoch_rng"]
        torch.set_rng_state(state["torch_rng"])
        if "objective_rng" in state:  # e.g. DGI's corruption shuffles
            objective.generator.set_state(state["objective_rng"])
        log.info("resuming pre-training from %s at epoch %d, batch %d", path, epoch, start_batch)

    def checkpoint(next_batch: int) -> None:
        save_rotating({
            "objective": objective.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "batch": next_batch,
            "losses": losses, "epoch_rng": epoch_rng, "torch_rng": torch.get_rng_state(), "config": snapshot,
            **({"objective_rng": objective.generator.get_state()} if hasattr(objective, "generator") else {}),
        }, job_dir / "checkpoints")

    objective.train()
    start = time.time()
    with StopSignals() as signals, tqdm(
        total=budget.epochs * per_epoch, initial=epoch * per_epoch + start_batch, unit="batch", desc="pre-training",
        disable=not cfg.get("progress_bar", True), dynamic_ncols=True,
    ) as bar:
        while epoch < budget.epochs:
            shuffle.set_state(epoch_rng)
            order = torch.randperm(count, generator=shuffle)
            total, seen = 0.0, 0
            for b in range(start_batch, per_epoch):
                index = order[b * budget.batch_size : (b + 1) * budget.batch_size]
                loss = objective(_batch(data, index, device))
                if not torch.isfinite(loss):
                    raise ConfigError(
                        f"pre-training loss became {loss.item()} at epoch {epoch + 1}, batch {b + 1}; lower "
                        "pretrain.learning_rate (the last checkpoint is kept)"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total, seen = total + loss.item() * len(index), seen + len(index)
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
                if signals.requested:
                    checkpoint(b + 1)
                    signals.stop()
            losses.append(total / max(seen, 1) if seen else float("nan"))
            epoch, start_batch, epoch_rng = epoch + 1, 0, shuffle.get_state()
            checkpoint(0)
    return _write_outputs(cfg, budget, ptm, out_dir, count, losses, time.time() - start)


def _made_by(cfg: DictConfig, budget: PretrainBudget) -> str:
    """The command that makes this PTM again: its name and objective, the seed and the whole budget, and (from the
    CLI) every other override it was given (env settings, scale)."""
    fixed = {"ptm": next(iter(cfg.ptm)), "objective": cfg.objective, "name": cfg.name, "seed": cfg.seed,
             **{f"pretrain.{k}": v for k, v in budget.__dict__.items()}}
    given: list[str] = []
    if HydraConfig.initialized():
        given = [o for o in HydraConfig.get().overrides.task if o.split("=", 1)[0].lstrip("+~") not in fixed]
    return " ".join(["python -m wsa_lab.pretrain", *(f"{k}={v}" for k, v in fixed.items()), *given])


def _write_outputs(
    cfg: DictConfig, budget: PretrainBudget, ptm: PreTrainedModelWrapper, out_dir: Path, count: int,
    losses: list[float], seconds: float,
) -> dict[str, Any]:
    name = str(cfg.name)
    weights = (out_dir / f"{name}.pt").resolve()
    save_checkpoint({k: v.detach().cpu() for k, v in ptm.backbone.state_dict().items()}, weights)
    entry = {
        k: v for k, v in OmegaConf.to_container(cfg.ptm, resolve=True)[next(iter(cfg.ptm))].items()
        if k not in ("name", "weights_path", "freeze_backbone", "made_by")
    }
    made_by = _made_by(cfg, budget)
    ptm_yaml = {name: {"name": name, **entry, "freeze_backbone": True, "weights_path": str(weights), "made_by": made_by}}
    env_label = str(cfg.env.get("id") or cfg.env._target_)
    header = (
        f"# Pre-trained by `python -m wsa_lab.pretrain` ({cfg.objective} on {count} random-play states of {env_label}, "
        f"seed {cfg.seed}). Use: python -m wsa_lab --config-dir {out_dir} ptm=[{name},...]\n"
    )
    (out_dir / "ptm").mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "ptm" / f"{name}.yaml", header + OmegaConf.to_yaml(OmegaConf.create(ptm_yaml)))
    record = {
        "name": name, "objective": cfg.objective, "env": env_label, "ptm": next(iter(cfg.ptm)),
        "model_type": ptm.spec.model_type, "states": count, "seed": cfg.seed, "budget": budget.__dict__,
        "epoch_losses": losses, "seconds": seconds, "weights_path": str(weights),
    }
    write_text_atomic(out_dir / f"{name}.json", json.dumps(record, indent=2) + "\n")
    log.info("wrote %s and %s (final loss %.4f)", weights, out_dir / "ptm" / f"{name}.yaml", losses[-1] if losses else float("nan"))
    return record
