"""`ActorCritic` (actor + hybrid heads + critic) and `build_actor_critic`, the `_target_` of `conf/actor_critic/`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional

from torch import Tensor, nn

from wsa_lab.envs import CoverageObs
from wsa_lab.models.actors import ActorFeatures, StandardActor, WSAEnhancedActor
from wsa_lab.models.encoders import StateEncoder
from wsa_lab.models.fusion import MultiPTMFeatureExtractor
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

    Interface follows CleanRL: `get_value(obs)` and `get_action_and_value(obs, action=None)`.
    """

    def __init__(self, actor: nn.Module, head_hidden_dim: int = 64, init_log_std: float = math.log(0.2)) -> None:
        super().__init__()
        self.actor = actor
        self.head = HybridActionHead(actor.encoder.out_dim, actor.global_dim, head_hidden_dim, init_log_std)
        self.critic = mlp(actor.global_dim, head_hidden_dim, 1)

    @property
    def uses_wsa(self) -> bool:
        return isinstance(self.actor, WSAEnhancedActor)

    @property
    def ptm_names(self) -> list[str]:
        return list(self.actor.extractor.names) if self.uses_wsa else []

    def get_value(self, obs: CoverageObs) -> Tensor:
        return self.critic(self.actor(StateInputs.from_obs(obs)).global_feat).squeeze(-1)

    def get_action_and_value(
        self, obs: CoverageObs, action: Optional[HybridAction] = None, deterministic: bool = False
    ) -> PolicyStep:
        features = self.actor(StateInputs.from_obs(obs))
        out = self.head(features.node_emb, features.global_feat, obs.action_mask, action, deterministic)
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
    standard: Optional[dict[str, Any]] = None,
    wsa: Optional[dict[str, Any]] = None,
) -> ActorCritic:
    """Build the actor-critic from the `actor_critic` config; `wsa.enabled` picks the actor."""
    wsa_cfg = structured(WSAConfig, wsa, "actor_critic.wsa")
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
    return ActorCritic(actor, head_hidden_dim, init_log_std)
