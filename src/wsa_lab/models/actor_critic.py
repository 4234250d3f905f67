"""`ActorCritic` (actor + hybrid heads + critic) and `build_actor_critic`, the `_target_` of `conf/actor_critic/`."""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple, Optional

import torch
from torch import Tensor, nn

from wsa_lab.contract import ActionSpec, GraphBatch, ObservationSpec
from wsa_lab.models.actors import ActorFeatures, StandardActor, WSAEnhancedActor
from wsa_lab.models.encoders import StateEncoder
from wsa_lab.models.attention import build_attention
from wsa_lab.models.fusion import STATE_ENCODER, Ablation, FusedFeatures, MultiPTMFeatureExtractor
from wsa_lab.models.gpu import GPUConfig, accelerated, autocast, prepare_cnn_bodies
from wsa_lab.models.heads import HybridAction, HybridActionHead, mlp
from wsa_lab.models.inputs import StateInputs
from wsa_lab.models.ptm import PreTrainedModelWrapper, PTMSpec
from wsa_lab.models.rollout_record import RolloutRecord
from wsa_lab.errors import ConfigError
from wsa_lab.config.strict import check_range, structured


@dataclass
class AttentionConfig:
    """`actor_critic.wsa.attention` (the `attention` config group; every key is documented in its YAML)."""

    kind: str
    hidden_dim: int
    dropout: float
    temperature: float
    uniform_init: bool
    uniform_warmup_steps: int
    lr_scale: float

    def __post_init__(self) -> None:
        if isinstance(self.hidden_dim, bool) or self.hidden_dim < 1:
            raise ConfigError(f"actor_critic.wsa.attention.hidden_dim must be >= 1, got {self.hidden_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"actor_critic.wsa.attention.dropout must be in [0, 1), got {self.dropout}")
        if self.uniform_warmup_steps < 0:
            raise ConfigError(f"actor_critic.wsa.attention.uniform_warmup_steps must be >= 0, got {self.uniform_warmup_steps}")
        if not (math.isfinite(self.lr_scale) and self.lr_scale > 0):
            raise ConfigError(f"actor_critic.wsa.attention.lr_scale must be a finite number > 0, got {self.lr_scale}")


@dataclass
class WSALoggingConfig:
    log_attention_weights: bool
    log_features: bool


@dataclass
class WSAConfig:
    enabled: bool
    fusion: str
    adapter: str
    context: str
    pretrained_models: list
    attention: dict
    logging: dict


@dataclass
class StandardConfig:
    model_type: str
    weights: str
    freeze_backbone: bool
    weights_path: Optional[str]


class PolicyStep(NamedTuple):
    action: HybridAction
    log_prob: Tensor  # (B,)
    entropy: Tensor  # (B,)
    value: Tensor  # (B,)
    features: ActorFeatures


class ActorCritic(nn.Module):
    """An actor (Standard or WSA-Enhanced), the hybrid action head and a critic on the same features.

    Interface follows CleanRL: `get_value(obs)` and `get_action_and_value(obs, action=None)`, on a
    :class:`~wsa_lab.contract.GraphBatch`, plus :meth:`rollout_step` for PPO's rollout, which fills
    :attr:`rollout` (:class:`~wsa_lab.models.rollout_record.RolloutRecord`): the frozen PTMs' backbone outputs
    (the frozen-feature cache, when `frozen_feature_cache` is true), which the update epochs pass back as
    `cached_features`, and the WSA diagnostics (`log_attention`, `log_features`). `gpu` holds the CUDA-only
    options (see :mod:`wsa_lab.models.gpu`), applied by :meth:`to` when the model moves to a GPU and by the
    forward passes there.
    """

    def __init__(
        self,
        actor: nn.Module,
        action_spec: ActionSpec,
        head_hidden_dim: int,
        init_log_std: float,
        frozen_feature_cache: bool,
        gpu: GPUConfig,
        raster_size: Optional[int] = None,
        attention_lr_scale: float = 1.0,
        uniform_warmup_steps: int = 0,
        log_attention: bool = True,
        log_features: bool = True,
    ) -> None:
        super().__init__()
        self.actor = actor
        self.action_spec = action_spec
        self.head = HybridActionHead(
            actor.encoder.out_dim, actor.global_dim, head_hidden_dim, init_log_std,
            action_spec.continuous_dim, torch.as_tensor(action_spec.bounded),
        )
        self.critic = mlp(actor.global_dim, head_hidden_dim, 1)
        self.frozen_feature_cache = frozen_feature_cache
        self.gpu = gpu
        self.raster_size = raster_size  # set: image PTMs read node features rasterised to this side (no env image)
        # the WSA attention knobs (uniform start, warm-up, own learning rate), applied by the trainer (param_groups, hold_uniform)
        self.attention_lr_scale = attention_lr_scale
        self.uniform_warmup_steps = uniform_warmup_steps
        self.rollout = RolloutRecord(self.ptm_names, log_attention, log_features)

    @property
    def uses_wsa(self) -> bool:
        return isinstance(self.actor, WSAEnhancedActor)

    @property
    def ptm_names(self) -> list[str]:
        return list(self.actor.extractor.names) if self.uses_wsa else []

    @property
    def cacheable(self) -> bool:
        """True when the frozen-feature cache is on and some PTM is frozen (else it has nothing to do)."""
        return self.frozen_feature_cache and self.uses_wsa and bool(self.actor.extractor.frozen_indices)

    @property
    def attention(self) -> Optional[nn.Module]:
        """The Weight Sharing Attention module (None for the Standard Actor and `mean`/`concat` fusion)."""
        return self.actor.extractor.attention if self.uses_wsa else None

    def param_groups(self, learning_rate: float) -> list[dict[str, Any]]:
        """Optimiser parameter groups: the attention's parameters at `learning_rate * attention_lr_scale` (the
        attention's own learning rate), everything else at `learning_rate`. Each group keeps its
        `base_lr`, which learning-rate annealing scales."""
        attention = {id(p) for p in self.attention.parameters()} if self.attention is not None else set()
        rest = [p for p in self.parameters() if id(p) not in attention]
        groups = [{"params": rest, "lr": learning_rate, "base_lr": learning_rate, "name": "model"}]
        if attention:
            lr = learning_rate * self.attention_lr_scale
            params = [p for p in self.attention.parameters()]
            groups.append({"params": params, "lr": lr, "base_lr": lr, "name": "attention"})
        return groups

    def hold_uniform(self, hold: bool) -> None:
        """Hold the attention weights at exactly 1/P (the warm-up of `uniform_warmup_steps`), or release them."""
        if self.attention is not None:
            self.attention.set_hold_uniform(hold)

    @contextmanager
    def ablated(self, ablation: Ablation) -> Iterator[None]:
        """Every forward pass inside the block runs with one PTM ablated (see
        :meth:`~wsa_lab.models.fusion.MultiPTMFeatureExtractor.ablated`); nothing is changed after it."""
        if not self.uses_wsa:
            raise ConfigError("PTM ablation needs a WSA agent; this one is the Standard Actor (no PTMs, no attention)")
        with self.actor.extractor.ablated(ablation):
            yield

    def cnn_bodies(self) -> list[nn.Module]:
        """The ResNet bodies (where `channels_last` and `compile` apply)."""
        if self.uses_wsa:
            return [p.backbone for p in self.actor.extractor.ptms if p.is_image]
        return [self.actor.cnn]

    def to(self, *args: Any, **kwargs: Any) -> "ActorCritic":
        """`nn.Module.to`, then the `gpu` layout/compile options when the model landed on a GPU."""
        super().to(*args, **kwargs)
        device = next(self.parameters()).device
        if accelerated(device):
            prepare_cnn_bodies(self.cnn_bodies(), self.gpu, device)
            if isinstance(self.actor, StandardActor):
                self.actor.channels_last = self.gpu.nhwc
        return self

    def _inputs(self, obs: GraphBatch, cached_features: Optional[dict[int, Tensor]] = None) -> StateInputs:
        channels_last = self.gpu.nhwc and accelerated(obs.device)
        return StateInputs.from_batch(obs, cached_features, channels_last, self.raster_size)

    def _features(self, inputs: StateInputs) -> ActorFeatures:
        """The actor's features in float32 (computed under bf16 autocast on a GPU with `gpu.amp`)."""
        with autocast(self.gpu, inputs.x.device):
            out = self.actor(inputs)
        if out.global_feat.dtype == torch.float32:
            return out
        fusion = out.fusion
        if fusion is not None:
            fusion = FusedFeatures(*(t.float() if t is not None else None for t in fusion))
        return ActorFeatures(out.node_emb.float(), out.global_feat.float(), fusion)

    @torch.no_grad()
    def _frozen_features(self, inputs: StateInputs) -> dict[int, Tensor]:
        """Backbone outputs of the frozen PTMs, ``{ptm index: (G, D)}`` (empty for the Standard Actor).

        A frozen backbone is a fixed function of the state (no gradients, eval mode), so the rollout
        computes this once per env step and the PPO epochs pass it back as `cached_features`.
        """
        if not self.uses_wsa:
            return {}
        with autocast(self.gpu, inputs.x.device):
            return self.actor.extractor.frozen_features(inputs)

    def get_value(self, obs: GraphBatch, cached_features: Optional[dict[int, Tensor]] = None) -> Tensor:
        return self.critic(self._features(self._inputs(obs, cached_features)).global_feat).squeeze(-1)

    def get_action_and_value(
        self,
        obs: GraphBatch,
        action: Optional[HybridAction] = None,
        deterministic: bool = False,
        cached_features: Optional[dict[int, Tensor]] = None,
    ) -> PolicyStep:
        return self._policy_step(self._inputs(obs, cached_features), action, deterministic)

    def rollout_step(self, obs: GraphBatch, step: int) -> PolicyStep:
        """`get_action_and_value(obs)` at step `step` of a PPO rollout, recorded in :attr:`rollout` (step 0
        starts a new record): the frozen PTMs' features for the cache, the fusion's output for the diagnostics.

        One `StateInputs` (graph adjacency, image layout) serves both the frozen backbones and the actor.
        """
        if step == 0:
            self.rollout.start()
        inputs = self._inputs(obs)
        cached = self._frozen_features(inputs) if self.cacheable else {}
        out = self._policy_step(inputs._replace(cached_features=cached or None))
        self.rollout.add(cached, out.features.fusion)
        return out

    def _policy_step(
        self, inputs: StateInputs, action: Optional[HybridAction] = None, deterministic: bool = False
    ) -> PolicyStep:
        features = self._features(inputs)
        out = self.head(
            features.node_emb, features.global_feat, inputs.action_mask, inputs.batch, inputs.ptr, action, deterministic
        )
        value = self.critic(features.global_feat).squeeze(-1)
        return PolicyStep(out.action, out.log_prob, out.entropy, value, features)


def build_actor_critic(
    observation_spec: ObservationSpec,
    action_spec: ActionSpec,
    *,
    hidden_dim: int,
    gnn_layers: int,
    context_dim: int,
    feature_dim: int,
    graph_cnn_hidden_dim: int,
    head_hidden_dim: int,
    init_log_std: float,
    checkpoint_min_nodes: int,
    raster_size: int,
    weights_dir: Optional[str],
    frozen_feature_cache: bool,
    gpu: dict[str, Any],
    standard: dict[str, Any],
    wsa: dict[str, Any],
) -> ActorCritic:
    """Build the actor-critic from the `actor_critic` config, sized from the env's spaces; `wsa.enabled` picks the actor.

    Every argument is a key of `conf/actor_critic/default.yaml` (its defaults live there, documented).
    """
    for key, value in (("hidden_dim", hidden_dim), ("gnn_layers", gnn_layers), ("context_dim", context_dim),
                       ("feature_dim", feature_dim), ("graph_cnn_hidden_dim", graph_cnn_hidden_dim),
                       ("head_hidden_dim", head_hidden_dim), ("raster_size", raster_size)):
        check_range(f"actor_critic.{key}", value, ge=1)
    check_range("actor_critic.checkpoint_min_nodes", checkpoint_min_nodes, ge=0)
    check_range("actor_critic.init_log_std", init_log_std, ge=-20, le=5)  # std between 2e-9 and 148
    wsa_cfg = structured(WSAConfig, wsa, "actor_critic.wsa")
    gpu_cfg = structured(GPUConfig, gpu, "actor_critic.gpu")
    obs = observation_spec
    node_dim = obs.node_feature_dim
    encoder = StateEncoder(node_dim, hidden_dim, gnn_layers, context_dim)
    # What image PTMs read: the env's image, else node features rasterised at the node positions.
    image_channels, image_side = (obs.image_shape[0], obs.image_shape[1]) if obs.has_image else (node_dim, raster_size)
    rasterise = False
    if wsa_cfg.enabled:
        logging = structured(WSALoggingConfig, wsa_cfg.logging, "actor_critic.wsa.logging")
        attention = structured(AttentionConfig, wsa_cfg.attention, "actor_critic.wsa.attention")
        specs = [
            structured(PTMSpec, entry, f"actor_critic.wsa.pretrained_models[{i}]")
            for i, entry in enumerate(wsa_cfg.pretrained_models)
        ]
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ConfigError(f"actor_critic.wsa.pretrained_models: PTM names must be unique, got {names}")
        for spec in specs:
            if spec.reads_image:
                _check_image_input(obs, f"PTM {spec.name!r} ({spec.model_type})", image_side, spec.min_image_side)
                rasterise = not obs.has_image
        ptms = [
            PreTrainedModelWrapper(
                s, feature_dim, node_dim, graph_cnn_hidden_dim, weights_dir, checkpoint_min_nodes, image_channels,
                image_side, obs.edge_feature_dim, wsa_cfg.adapter,
            )
            for s in specs
        ]
        context_ptm = None
        if wsa_cfg.context != STATE_ENCODER:
            if wsa_cfg.context not in names:
                raise ConfigError(
                    f"actor_critic.wsa.context={wsa_cfg.context!r} must be {STATE_ENCODER!r} (the trained GNN) or the "
                    f"name of one of the run's PTMs: {names}"
                )
            context_ptm = names.index(wsa_cfg.context)
        module = None
        if wsa_cfg.fusion == "wsa":
            module = build_attention(
                attention.kind, context_dim, feature_dim, attention.hidden_dim, attention.dropout, attention.temperature,
                attention.uniform_init,
            )
        extractor = MultiPTMFeatureExtractor(
            ptms, context_dim, feature_dim, wsa_cfg.fusion, module, context_ptm, wsa_cfg.adapter
        )
        actor: nn.Module = WSAEnhancedActor(encoder, extractor)
    else:
        std = structured(StandardConfig, standard, "actor_critic.standard")
        if not obs.has_positions:
            raise ConfigError(
                "the Standard Actor rasterises node embeddings at the node positions, but the env gives no "
                "'positions'; add them to its observation or use a WSA arm with graph PTMs (ptm=[graph_cnn])"
            )
        _check_min_image(f"the Standard Actor's {std.model_type}", raster_size, f"actor_critic.raster_size={raster_size} (default: env.image_size)")
        actor = StandardActor(
            encoder, raster_size, feature_dim, std.model_type, std.weights, std.freeze_backbone,
            std.weights_path, weights_dir, checkpoint_min_nodes,
        )
        return ActorCritic(actor, action_spec, head_hidden_dim, init_log_std, frozen_feature_cache, gpu_cfg, raster_size=None)
    return ActorCritic(
        actor, action_spec, head_hidden_dim, init_log_std, frozen_feature_cache, gpu_cfg,
        raster_size if rasterise else None, attention.lr_scale, attention.uniform_warmup_steps,
        logging.log_attention_weights, logging.log_features,
    )


MIN_RESNET_IMAGE = 32  # ResNets downsample 32x: below this the last stages see 1x1 padding, not the image


def _check_min_image(who: str, side: int, what: str, min_side: int = MIN_RESNET_IMAGE) -> None:
    if side < min_side:
        raise ConfigError(
            f"{what} is too small for {who} (ResNets downsample 32x): give it at least {min_side} pixels a side, "
            "or use only graph PTMs"
        )


def _check_image_input(obs: ObservationSpec, who: str, side: int, min_side: int = MIN_RESNET_IMAGE) -> None:
    """An image PTM needs the env's image, or node positions to rasterise the node features at; `min_side`: the
    smallest side it takes (1 for PTMs that resize their images or read any size)."""
    if obs.has_image:
        _check_min_image(who, side, f"the env's {side}x{side} image (coverage env: env.image_size={side})", min_side)
    elif obs.has_positions:
        _check_min_image(who, side, f"actor_critic.raster_size={side}", min_side)
    else:
        raise ConfigError(
            f"{who} reads an image, but the env gives neither an 'image' nor node 'positions' to rasterise its node "
            "features at; add one of them to the env's observation, or use graph PTMs only (e.g. ptm=[graph_cnn])"
        )
