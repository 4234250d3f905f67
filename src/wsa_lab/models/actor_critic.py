"""`ActorCritic` (actor + hybrid heads + critic) and `build_actor_critic`, the `_target_` of `conf/actor_critic/`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor, nn

from wsa_lab.envs import CoverageObs
from wsa_lab.models.actors import ActorFeatures, StandardActor, WSAEnhancedActor
from wsa_lab.models.encoders import StateEncoder
from wsa_lab.models.fusion import FusedFeatures, MultiPTMFeatureExtractor
from wsa_lab.models.gpu import GPUConfig, accelerated, autocast, prepare_cnn_bodies
from wsa_lab.models.heads import HybridAction, HybridActionHead, mlp
from wsa_lab.models.inputs import StateInputs
from wsa_lab.models.ptm import PreTrainedModelWrapper, PTMSpec
from wsa_lab.errors import ConfigError
from wsa_lab.schema import structured


@dataclass
class AttentionConfig:
    hidden_dim: int = 128
    dropout: float = 0.1


@dataclass
class WSALoggingConfig:
    log_attention_weights: bool = True
    log_features: bool = True


@dataclass
class WSAConfig:
    enabled: bool = True
    fusion: str = "wsa"
    pretrained_models: list = field(default_factory=list)
    attention: dict = field(default_factory=dict)
    logging: dict = field(default_factory=dict)


@dataclass
class StandardConfig:
    model_type: str = "resnet18"
    weights: str = "imagenet"
    freeze_backbone: bool = False
    weights_path: Optional[str] = None


class PolicyStep(NamedTuple):
    action: HybridAction
    log_prob: Tensor  # (B,)
    entropy: Tensor  # (B,)
    value: Tensor  # (B,)
    features: ActorFeatures


class ActorCritic(nn.Module):
    """An actor (Standard or WSA-Enhanced), the hybrid action head and a critic on the same features.

    Interface follows CleanRL: `get_value(obs)` and `get_action_and_value(obs, action=None)`; both take
    optional `cached_features` from :meth:`frozen_features` (the frozen-feature cache, used by PPO when
    `frozen_feature_cache` is true; its rollout calls :meth:`rollout_step`, which returns both). `gpu` holds
    the CUDA-only options (see :mod:`wsa_lab.models.gpu`), applied by :meth:`to` when the model moves to a
    GPU and by the forward passes there.
    """

    def __init__(
        self,
        actor: nn.Module,
        head_hidden_dim: int = 64,
        init_log_std: float = math.log(0.2),
        frozen_feature_cache: bool = True,
        gpu: Optional[GPUConfig] = None,
    ) -> None:
        super().__init__()
        self.actor = actor
        self.head = HybridActionHead(actor.encoder.out_dim, actor.global_dim, head_hidden_dim, init_log_std)
        self.critic = mlp(actor.global_dim, head_hidden_dim, 1)
        self.frozen_feature_cache = frozen_feature_cache
        self.gpu = gpu or GPUConfig()

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

    def _inputs(self, obs: CoverageObs, cached_features: Optional[dict[int, Tensor]] = None) -> StateInputs:
        channels_last = self.gpu.nhwc and accelerated(obs.image.device)
        return StateInputs.from_obs(obs, cached_features, channels_last)

    def features(self, obs: CoverageObs, cached_features: Optional[dict[int, Tensor]] = None) -> ActorFeatures:
        """The actor's features in float32 (computed under bf16 autocast on a GPU with `gpu.amp`)."""
        return self._features(self._inputs(obs, cached_features))

    def _features(self, inputs: StateInputs) -> ActorFeatures:
        with autocast(self.gpu, inputs.image.device):
            out = self.actor(inputs)
        if out.global_feat.dtype == torch.float32:
            return out
        fusion = out.fusion
        if fusion is not None:
            fusion = FusedFeatures(*(t.float() if t is not None else None for t in fusion))
        return ActorFeatures(out.node_emb.float(), out.global_feat.float(), fusion)

    def frozen_features(self, obs: CoverageObs) -> dict[int, Tensor]:
        """Backbone outputs of the frozen PTMs, ``{ptm index: (B, D)}`` (empty for the Standard Actor).

        A frozen backbone is a fixed function of the state (no gradients, eval mode), so the rollout
        computes this once per env step and the PPO epochs pass it back as `cached_features`.
        """
        return self._frozen_features(self._inputs(obs))

    @torch.no_grad()
    def _frozen_features(self, inputs: StateInputs) -> dict[int, Tensor]:
        if not self.uses_wsa:
            return {}
        with autocast(self.gpu, inputs.image.device):
            return self.actor.extractor.frozen_features(inputs)

    def get_value(self, obs: CoverageObs, cached_features: Optional[dict[int, Tensor]] = None) -> Tensor:
        return self.critic(self.features(obs, cached_features).global_feat).squeeze(-1)

    def get_action_and_value(
        self,
        obs: CoverageObs,
        action: Optional[HybridAction] = None,
        deterministic: bool = False,
        cached_features: Optional[dict[int, Tensor]] = None,
    ) -> PolicyStep:
        return self._policy_step(self._inputs(obs, cached_features), action, deterministic)

    def rollout_step(self, obs: CoverageObs) -> tuple[PolicyStep, dict[int, Tensor]]:
        """`get_action_and_value(obs)` plus the frozen PTMs' features for the cache (empty when it is off).

        One `StateInputs` (graph adjacency, image layout) serves both the frozen backbones and the actor.
        """
        inputs = self._inputs(obs)
        cached = self._frozen_features(inputs) if self.cacheable else {}
        return self._policy_step(inputs._replace(cached_features=cached or None)), cached

    def _policy_step(
        self, inputs: StateInputs, action: Optional[HybridAction] = None, deterministic: bool = False
    ) -> PolicyStep:
        features = self._features(inputs)
        out = self.head(features.node_emb, features.global_feat, inputs.action_mask, action, deterministic)
        value = self.critic(features.global_feat).squeeze(-1)
        return PolicyStep(out.action, out.log_prob, out.entropy, value, features)


def build_actor_critic(
    node_feature_dim: int,
    image_size: int,
    hidden_dim: int = 64,
    gnn_layers: int = 2,
    context_dim: int = 64,
    feature_dim: int = 128,
    graph_cnn_hidden_dim: int = 64,
    head_hidden_dim: int = 64,
    init_log_std: float = math.log(0.2),
    checkpoint_min_nodes: int = 500,
    weights_dir: Optional[str] = None,
    frozen_feature_cache: bool = True,
    gpu: Optional[dict[str, Any]] = None,
    standard: Optional[dict[str, Any]] = None,
    wsa: Optional[dict[str, Any]] = None,
) -> ActorCritic:
    """Build the actor-critic from the `actor_critic` config; `wsa.enabled` picks the actor."""
    wsa_cfg = structured(WSAConfig, wsa, "actor_critic.wsa")
    gpu_cfg = structured(GPUConfig, gpu, "actor_critic.gpu")
    encoder = StateEncoder(node_feature_dim, hidden_dim, gnn_layers, context_dim)
    if wsa_cfg.enabled:
        structured(WSALoggingConfig, wsa_cfg.logging, "actor_critic.wsa.logging")
        attention = structured(AttentionConfig, wsa_cfg.attention, "actor_critic.wsa.attention")
        specs = [
            structured(PTMSpec, entry, f"actor_critic.wsa.pretrained_models[{i}]")
            for i, entry in enumerate(wsa_cfg.pretrained_models)
        ]
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ConfigError(f"actor_critic.wsa.pretrained_models: PTM names must be unique, got {names}")
        ptms = [
            PreTrainedModelWrapper(s, feature_dim, node_feature_dim, graph_cnn_hidden_dim, weights_dir, checkpoint_min_nodes)
            for s in specs
        ]
        extractor = MultiPTMFeatureExtractor(
            ptms, context_dim, feature_dim, wsa_cfg.fusion, attention.hidden_dim, attention.dropout
        )
        actor: nn.Module = WSAEnhancedActor(encoder, extractor)
    else:
        std = structured(StandardConfig, standard, "actor_critic.standard")
        actor = StandardActor(
            encoder, image_size, feature_dim, std.model_type, std.weights, std.freeze_backbone,
            std.weights_path, weights_dir, checkpoint_min_nodes,
        )
    return ActorCritic(actor, head_hidden_dim, init_log_std, frozen_feature_cache, gpu_cfg)
