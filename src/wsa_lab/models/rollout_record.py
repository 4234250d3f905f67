"""What the actor-critic keeps of one PPO rollout besides CleanRL's buffers.

- The frozen-feature cache: the frozen PTMs' backbone outputs of every rollout state. A frozen backbone is a fixed
  function of the state, so the update epochs read them back (:meth:`RolloutRecord.cached_features`) instead of
  running the backbones again.
- The WSA diagnostics: the fusion's attention weights and adapted features of every rollout state, summarised
  once per rollout as the ``wsa/*`` metrics (:meth:`RolloutRecord.metrics`).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from wsa_lab.models.attention import feature_norm_imbalance, feature_similarity, state_dependence
from wsa_lab.models.fusion import FusedFeatures
from wsa_lab.models.gpu import to_host


class RolloutRecord:
    """Filled step by step by :meth:`~wsa_lab.models.ActorCritic.rollout_step`; read by the update and the logger.

    Args:
        ptm_names: the PTMs' names, in the extractor's order (unique), for the pairwise metrics.
        log_attention: report ``wsa/attention_weights_<i>``, ``wsa/attention_entropy`` and the state dependence
            (``wsa/attention_state_std``, ``wsa/attention_top_switch``).
        log_features: report the feature norms, similarities and norm imbalance.
    """

    def __init__(self, ptm_names: list[str], log_attention: bool = True, log_features: bool = True) -> None:
        self.ptm_names, self.log_attention, self.log_features = list(ptm_names), log_attention, log_features
        self.frozen: dict[int, list[Tensor]] = {}  # PTM index -> its (B, D) backbone output, one per rollout step
        self.attention: list[Tensor] = []  # (B, P) fusion weights per step
        self.features: list[Tensor] = []  # (B, P, F) adapted features per step
        self._joined: dict[int, Tensor] = {}  # self.frozen joined step-major at the update's first read
        self.last_attention: Optional[Tensor] = None  # (T*B, P) weights of the last rollout, on the CPU (histograms)

    def start(self) -> None:
        """Forget the previous rollout."""
        self.frozen, self.attention, self.features, self._joined = {}, [], [], {}

    def add(self, frozen: dict[int, Tensor], fusion: Optional[FusedFeatures]) -> None:
        """One rollout step: the frozen PTMs' features (empty: cache off) and the fusion's output (None: no WSA)."""
        for i, feat in frozen.items():
            self.frozen.setdefault(i, []).append(feat)
        if fusion is not None:
            if fusion.weights is not None:
                self.attention.append(fusion.weights)
            self.features.append(fusion.features)

    def cached_features(self, index: Tensor) -> Optional[dict[int, Tensor]]:
        """The frozen features of rollout samples `index` (sample t * B + b: step t, env b), or None (cache off)."""
        if self.frozen:  # the first read after the rollout: join its steps, keeping one copy
            self._joined, self.frozen = {i: torch.cat(steps) for i, steps in self.frozen.items()}, {}
        return {i: t[index] for i, t in self._joined.items()} or None

    def metrics(self) -> dict[str, float]:
        """The rollout's WSA monitoring metrics over its states (and :attr:`last_attention`); the per-state
        weights and features are dropped once summarised.

        ``wsa/attention_weights_<i>``, ``wsa/attention_entropy``, the state dependence next to the means
        (:func:`~wsa_lab.models.attention.state_dependence`: ``wsa/attention_state_std``, the mean over PTMs of each
        weight's std across the rollout's states, and ``wsa/attention_top_switch``, the share of states whose top PTM
        is not the rollout's), ``wsa/feature_norms_<i>``, and the
        troubleshooting checks: ``wsa/feature_similarity/<a>__<b>`` (mean cosine similarity of two PTMs' adapted
        features, state by state: "features are diverse"), ``wsa/feature_cka/<a>__<b>`` (linear CKA over the
        states) and ``wsa/feature_norm_imbalance`` (largest / smallest mean feature norm: "norms are balanced").
        """
        stats: dict[str, float] = {}
        if self.attention:
            weights = torch.cat(self.attention)  # (T*B, P)
            self.last_attention = to_host(weights)
            if self.log_attention:
                for i, w in enumerate(weights.mean(0).tolist()):
                    stats[f"wsa/attention_weights_{i}"] = w
                entropy = -(weights * weights.clamp_min(1e-12).log()).sum(-1)
                stats["wsa/attention_entropy"] = entropy.mean().item()
                spread = state_dependence(weights)
                stats["wsa/attention_state_std"] = spread.state_std
                stats["wsa/attention_top_switch"] = spread.top_switch
        if self.features and self.log_features:
            feats = torch.cat(self.features).float()  # (T*B, P, F)
            for i, n in enumerate(feats.norm(dim=-1).mean(0).tolist()):
                stats[f"wsa/feature_norms_{i}"] = n
            names = self.ptm_names
            if len(names) >= 2:
                similarity = feature_similarity(feats)
                for i in range(len(names)):
                    for j in range(i + 1, len(names)):
                        pair = f"{names[i]}__{names[j]}"
                        stats[f"wsa/feature_similarity/{pair}"] = similarity.cosine[i, j].item()
                        stats[f"wsa/feature_cka/{pair}"] = similarity.cka[i, j].item()
                stats["wsa/feature_norm_imbalance"] = feature_norm_imbalance(feats)
        self.attention, self.features = [], []
        return stats
