"""A memory estimate at start-up: a run whose buffers cannot fit fails before it allocates them.

How it is computed (bytes, float32 = 4 B; within 1.5x of the measured peak from 50 to 20,000 nodes, see
`python benchmarks/bench.py --only memory` and BENCHMARKS.md):

- one observation: the env's own estimate when its class has one (``memory_estimate``: the coverage env's is
  exact for its tensors), else measured on one env of it (reset once, the GraphBatch's tensors counted);
- the rollout buffer: ``algo.num_steps x algo.num_envs`` observations, twice (the update joins them into one
  batch), plus the frozen PTMs' cached features;
- the envs: the training env (``algo.num_envs``) and the evaluation env (``evaluation.num_instances``): their
  state and what building them needs at once (the coverage env: one block of kNN distances, at most 2^24
  floats: whole ``N x N`` matrices of a few instances, or rows of one large graph);
- the update: one minibatch's activations: per node, the GNN widths over its layers; per image of a trainable
  CNN, about 150 floats per pixel (ResNet18's saved activations, more for larger models);
- the model: parameters (+ gradients and Adam's two moments for trainable ones), from torchvision's weights
  metadata for CNNs.

It is compared with the memory available now (``MemAvailable``, or the cgroup's limit if lower; on CUDA the
device's free memory, where buffers and model live). Too large: one ConfigError naming the biggest parts and the
keys that drive them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from wsa_lab.build import close_env, make_env
from wsa_lab.config.validate import env_target
from wsa_lab.errors import ConfigError

#: Floats saved per input pixel by a trainable ResNet18's forward pass (rough: conv/bn/relu outputs per stage).
CNN_FLOATS_PER_PIXEL = {"resnet18": 150, "resnet34": 260, "resnet50": 560}
DEFAULT_CNN_FLOATS_PER_PIXEL = 300
PARAMS = {"graph_cnn": 30_000}


@dataclass
class Part:
    what: str  # e.g. "rollout buffer"
    bytes: int
    keys: str  # the config keys that drive it


@dataclass
class Estimate:
    parts: list[Part] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(p.bytes for p in self.parts)

    def add(self, what: str, size: float, keys: str) -> None:
        self.parts.append(Part(what, int(size), keys))


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"


def available_bytes(device: torch.device) -> int:
    """Memory this process may still use: the CUDA device's free memory, else MemAvailable / the cgroup limit."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    candidates = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                candidates.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    for limit in (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")):
        try:
            text = limit.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            usage = Path(str(limit).replace("memory.max", "memory.current").replace("limit_in_bytes", "usage_in_bytes"))
            try:
                candidates.append(int(text) - int(usage.read_text().strip()))
            except (OSError, ValueError):
                candidates.append(int(text))
    if not candidates:
        pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else 0
        candidates.append(int(pages) * os.sysconf("SC_PAGE_SIZE") if pages else 2**62)
    return min(candidates)


def batch_bytes(obs: Any) -> int:
    """Bytes of a GraphBatch's tensors."""
    total = 0
    for name in ("x", "edge_index", "ptr", "edge_ptr", "action_mask", "edge_attr", "positions", "image"):
        t = getattr(obs, name, None)
        if t is not None:
            total += t.numel() * t.element_size()
    return total


def _env_profile(cfg: DictConfig, target: Any, num_envs: int) -> dict[str, float]:
    """Per env: observation bytes, state bytes, nodes per graph; plus transient bytes when building `num_envs`."""
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg.env, resolve=True).items() if k != "_target_"}
    estimate = getattr(target, "memory_estimate", None)
    if callable(estimate):
        return estimate(num_envs=num_envs, **kwargs)
    env = make_env(cfg, num_envs=1, seed=0, device="cpu")  # a user's env: measure one
    try:
        obs = env.reset(seed=0)
        size = batch_bytes(obs)
        return {"observation": size, "state": size, "nodes": obs.num_nodes, "transient": 0.0,
                "image_pixels": 0 if obs.image is None else obs.image[0, 0].numel()}
    finally:
        close_env(env)


def _ptm_params(entry: dict[str, Any]) -> int:
    model = str(entry.get("model_type", ""))
    if model in PARAMS:
        return PARAMS[model]
    try:
        from torchvision.models import get_model_weights

        return int(get_model_weights(model).DEFAULT.meta["num_params"])
    except Exception:  # noqa: BLE001 - a PyG or custom module: small next to CNNs
        return 100_000


def estimate_memory(cfg: DictConfig, settings: Any) -> Estimate:
    """The run's memory estimate (see the module docstring) of a config `validate` passed (every key present)."""
    algo, ev = settings.algo, settings.evaluation
    est = Estimate()
    target = env_target(cfg.env)
    train_env = _env_profile(cfg, target, algo.num_envs)
    eval_env = _env_profile(cfg, target, ev.num_instances)
    obs = train_env["observation"]
    samples = algo.num_steps * algo.num_envs
    est.add("rollout buffer", 2 * samples * obs, "algo.num_steps x algo.num_envs x one observation")
    est.add("envs", (algo.num_envs * train_env["state"] + ev.num_instances * eval_env["state"])
            + max(train_env["transient"], eval_env["transient"]), "algo.num_envs, evaluation.num_instances, env size")
    ac = cfg.actor_critic
    wsa = ac.get("wsa") or {}
    entries = list(wsa.get("pretrained_models") or []) if wsa.get("enabled", True) else []
    minibatch = max(1, samples // algo.num_minibatches)
    nodes = train_env["nodes"]
    gnn_floats = int(ac.hidden_dim) * (int(ac.gnn_layers) + 1) * 3
    graph_ptms = sum(1 for e in entries if not _reads_image(e))
    gnn_floats += graph_ptms * int(ac.graph_cnn_hidden_dim) * 4 * 3
    pixels = train_env.get("image_pixels") or int(ac.raster_size) ** 2
    cnn_floats = 0
    params = 0
    trainable = 0
    if entries:
        for e in entries:
            n = _ptm_params(e)
            params += n
            if not e.get("freeze_backbone", False):
                trainable += n
                if _reads_image(e):
                    cnn_floats += CNN_FLOATS_PER_PIXEL.get(str(e.get("model_type")), DEFAULT_CNN_FLOATS_PER_PIXEL)
    else:
        std = ac.get("standard") or {}
        n = _ptm_params(std)
        params, trainable = n, 0 if std.get("freeze_backbone") else n
        cnn_floats = CNN_FLOATS_PER_PIXEL.get(str(std.get("model_type")), DEFAULT_CNN_FLOATS_PER_PIXEL)
    est.add("update activations", 4 * minibatch * (nodes * gnn_floats + pixels * cnn_floats),
            "algo.num_envs x algo.num_steps / algo.num_minibatches, graph and image sizes")
    est.add("model", 4 * params + 12 * trainable, "the PTMs (actor_critic.wsa.pretrained_models)")
    return est


def _reads_image(entry: dict[str, Any]) -> bool:
    model = str(entry.get("model_type", ""))
    if model == "custom":
        return entry.get("input") == "image"
    return not (model == "graph_cnn" or model.startswith("pyg:"))


def check_memory(cfg: DictConfig, settings: Any) -> Optional[Estimate]:
    """Refuse a run whose estimate exceeds the memory available (one line); return the estimate."""
    est = estimate_memory(cfg, settings)
    free = available_bytes(settings.device)
    if est.total > free:
        parts = sorted(est.parts, key=lambda p: -p.bytes)[:2]
        detail = "; ".join(f"{p.what} {gib(p.bytes)} ({p.keys})" for p in parts)
        where = f"free on {settings.device}" if settings.device.type == "cuda" else "available"
        raise ConfigError(
            f"this run needs about {gib(est.total)} of memory but {gib(free)} is {where}: {detail}; lower those "
            "settings (e.g. algo.num_envs, algo.num_steps, env sizes) or use a bigger machine"
        )
    return est


def human(est: Estimate) -> str:
    return ", ".join(f"{p.what} {gib(p.bytes)}" for p in est.parts)

