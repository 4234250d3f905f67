"""`MultiPTMFeatureExtractor`: runs every PTM and fuses their features (WSA, or an ablation mode)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, NamedTuple, Optional

import torch
from torch import Tensor, nn

from wsa_lab.errors import ConfigError
from wsa_lab.models.attention import FusionAttention, renormalise_without
from wsa_lab.models.inputs import StateInputs
from wsa_lab.models.ptm import PreTrainedModelWrapper, make_adapter

FUSION_MODES = ("wsa", "mean", "concat")
#: `actor_critic.wsa.context`: where the attention's state context comes from (else: a PTM's name).
STATE_ENCODER = "state_encoder"


#: `Ablation.mode`: "remove" (its attention weight 0, the others renormalised) or "mean" (its feature replaced by a
#: fixed vector, e.g. its mean over held-out states: what it says about *this* state is gone, its scale stays).
ABLATION_MODES = ("remove", "mean")


class Ablation(NamedTuple):
    """One PTM taken out of the fusion (see :meth:`MultiPTMFeatureExtractor.ablated`)."""

    ptm: int  # the PTM's index in the extractor's order
    mode: str  # one of ABLATION_MODES
    feature: Optional[Tensor] = None  # (F,) the adapted feature that replaces the PTM's own ("mean" only)


class FusedFeatures(NamedTuple):
    fused: Tensor  # (B, out_dim)
    features: Tensor  # (B, P, F): each PTM's adapted feature, for feature-norm and similarity logging
    weights: Optional[Tensor]  # (B, P) attention weights (uniform for `mean`, None for `concat`)


class MultiPTMFeatureExtractor(nn.Module):
    r"""Holds the PTMs and fuses their features.

    Fusion modes (for ablations):
        - ``wsa``: `attention` (a :mod:`~wsa_lab.models.attention` variant) weights conditioned on a state
          context (default).
        - ``mean``: uniform average, the "ensemble" baseline; weights are reported as :math:`1/P`.
        - ``concat``: concatenation, no weights; `out_dim` = P x F.

    The attention's context is the StateEncoder's (trained GNN) context, or, with `context_ptm` set, that PTM's
    backbone output (detached: the attention does not train its context encoder) through a trainable
    `context_adapter`: the WSA paper's "frozen encoder as the query".

    Frozen PTMs whose backbone output is in ``inputs.cached_features`` only run their adapter.

    **Ablation** (:meth:`ablated`, for evaluation: how much does the policy need each PTM): ``remove`` sets one
    PTM's weight to 0 and renormalises the others (:func:`~wsa_lab.models.attention.renormalise_without`), the
    fused feature recomputed from those weights; ``mean`` replaces its adapted feature by a fixed vector before
    the attention scores it. The attention's context (the StateEncoder's, or a context PTM's backbone output)
    is left as it is.

    Shapes:
        - input: :class:`StateInputs` of B states, context :math:`(B, C)`
        - output: :class:`FusedFeatures`
    """

    def __init__(
        self,
        ptms: list[PreTrainedModelWrapper],
        context_dim: int,
        feature_dim: int,
        fusion: str,
        attention: Optional[FusionAttention],
        context_ptm: Optional[int],
        adapter: str,
    ) -> None:
        super().__init__()
        if not ptms:
            raise ConfigError("WSA is enabled but no PTMs are configured; choose some with ptm=[...]")
        if fusion not in FUSION_MODES:
            raise ConfigError(f"actor_critic.wsa.fusion must be one of {list(FUSION_MODES)}, got {fusion!r}")
        if (fusion == "wsa") != (attention is not None):
            raise ValueError("fusion 'wsa' needs an attention module, and only it")
        self.ptms = nn.ModuleList(ptms)
        self.fusion = fusion
        self.names = [p.spec.name for p in ptms]
        self.attention = attention
        self.context_ptm = context_ptm
        self.context_adapter = (
            make_adapter(ptms[context_ptm].out_dim, context_dim, adapter) if context_ptm is not None else None
        )
        self.feature_dim = feature_dim
        self.out_dim = feature_dim * len(ptms) if fusion == "concat" else feature_dim
        self.ablation: Optional[Ablation] = None  # set only inside `ablated()`; never saved

    @contextmanager
    def ablated(self, ablation: Ablation) -> Iterator[None]:
        """Forward passes inside the block run with `ablation` applied; the extractor is restored on exit."""
        self._check_ablation(ablation)
        previous, self.ablation = self.ablation, ablation
        try:
            yield
        finally:
            self.ablation = previous

    def _check_ablation(self, ablation: Ablation) -> None:
        p = len(self.ptms)
        if ablation.mode not in ABLATION_MODES:
            raise ValueError(f"ablation mode must be one of {ABLATION_MODES}, got {ablation.mode!r}")
        if not 0 <= ablation.ptm < p:
            raise ValueError(f"ablation PTM index {ablation.ptm} out of range for {p} PTMs")
        if self.fusion == "concat" or (ablation.mode == "remove" and p < 2):
            raise ConfigError(
                f"PTM ablation needs attention weights over >= 2 PTMs; this agent has fusion {self.fusion!r} over {p}"
            )
        if ablation.mode == "mean" and (ablation.feature is None or ablation.feature.shape != (self.feature_dim,)):
            raise ValueError("a 'mean' ablation needs the replacing feature, shape (feature_dim,)")

    @property
    def frozen_indices(self) -> list[int]:
        """Indices of the PTMs whose backbone is frozen (their backbone output can be cached)."""
        return [i for i, ptm in enumerate(self.ptms) if ptm.frozen]

    def frozen_features(self, inputs: StateInputs) -> dict[int, Tensor]:
        """Backbone outputs of the frozen PTMs, ``{index: (B, D_backbone)}``, for the frozen-feature cache."""
        with torch.no_grad():
            return {i: self.ptms[i].backbone_features(inputs) for i in self.frozen_indices}

    def forward(self, inputs: StateInputs, context: Tensor) -> FusedFeatures:
        cached = inputs.cached_features or {}  # frozen PTMs found here skip their backbone
        raw = [ptm.backbone_output(inputs, cached.get(i)) for i, ptm in enumerate(self.ptms)]
        features = torch.stack([ptm.adapter(r) for ptm, r in zip(self.ptms, raw)], dim=1)  # (B, P, F)
        ablation = self.ablation
        if ablation is not None and ablation.mode == "mean":
            features = features.clone()
            features[:, ablation.ptm] = ablation.feature.to(features)
        if self.fusion == "wsa":
            if self.context_adapter is not None:
                context = self.context_adapter(raw[self.context_ptm].detach())
            fused, weights = self.attention(context, features)
        elif self.fusion == "mean":
            fused = features.mean(dim=1)
            weights = torch.full(features.shape[:2], 1.0 / features.shape[1], device=features.device)
        else:
            fused, weights = features.flatten(1), None
        if ablation is not None and ablation.mode == "remove":
            weights = renormalise_without(weights, ablation.ptm)
            fused = torch.einsum("bp,bpf->bf", weights, features)
        return FusedFeatures(fused, features, weights)
