r"""Weight Sharing Attention (WSA) and its fusion variants: one shared scorer weighs every PTM's feature.

Every variant maps a state context :math:`c \in \mathbb{R}^C` and P PTM features :math:`f_1..f_P \in
\mathbb{R}^F` to weights :math:`\alpha \in \Delta^{P-1}` and the fused feature :math:`z = \sum_i \alpha_i f_i`
(so the output stays in feature space, size F). The scorer's parameters are shared by all PTMs, so the
module's size does not grow with P and permuting the PTMs permutes the weights.

================  ==============================================================  ========================
kind              score / normalisation                                           reference
================  ==============================================================  ========================
``additive``      :math:`v^\top\tanh(W[c;f_i]+b)`, softmax                        wsa_lab (Bahdanau-style)
``relu_softmax``  :math:`\mathrm{ReLU}(w^\top[c;f_i]+b)`, softmax                 Carfì's thesis code
``relu_sum``      :math:`\mathrm{ReLU}(w^\top[c;f_i]+b)`, :math:`e_i/\sum_j e_j`  WSA paper's code
``dot_product``   :math:`(W_q c + b_q)^\top f_i/\sqrt{F}`, softmax                thesis ablation "DPA"
================  ==============================================================  ========================

References read (stored copies of the public repositories):
    - Sopralapanca/rl-skilled-agent, ``feature_extractors.py``: ``WeightSharingAttentionExtractor``
      (``nn.Sequential(nn.Linear(2 * features_dim, 1), nn.ReLU())`` on ``cat([context, emb_i])``, then
      ``softmax`` over skills) and ``DotProductAttentionExtractor`` (query = the context adapter's output,
      key = value = the stacked adapted embeddings, ``softmax(q k^T / sqrt(d)) v``, dropout 0); the
      thesis ``thesis/chapters/methodology.tex`` (sections "Weight Sharing Attention", "DotProduct
      Attention Combination Module") says the same.
    - EliaPiccoli/PufferLib, ``pufferlib/models.py``: ``WSA`` (and ``WSAFT``): ``weight_network =
      Sequential(layer_init(Linear(emb_size * 2, 1), std=1), ReLU())``, then
      ``ww = ww / ww.sum(dim=1, keepdim=True).clamp_(min=1e-8)`` and
      ``ww = nan_to_num(ww, nan=0.0, posinf=0.0, neginf=0.0)``; ``layer_init`` (upstream
      PufferAI/PufferLib ``pufferlib/pytorch.py``) is ``orthogonal_(weight, std)`` and a zero bias.

Two knobs every variant has:
    - ``uniform_init=True`` ("pre-train attention with equal weights"): the module starts at exactly
      :math:`\alpha_i = 1/P` for every input (how, per variant, in each class's docstring).
    - ``hold_uniform`` (:meth:`FusionAttention.set_hold_uniform`): while held, :math:`\alpha_i = 1/P`
      and :math:`z` = the mean of the features, whatever the scorer says (the warm-up knob).

:func:`feature_similarity` and :func:`feature_norm_imbalance` are the "are the PTM features diverse /
balanced" checks; :func:`state_dependence` measures how much the weights differ between states (the design's
"meaningful" pattern); :func:`renormalise_without` is the weights of a PTM ablation (one PTM removed).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from wsa_lab.errors import ConfigError


def _check_temperature(temperature: float) -> float:
    if not (math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"attention temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def _pairs(context: Tensor, features: Tensor) -> Tensor:
    """:math:`[c; f_i]` for every PTM: (B, C), (B, P, F) -> (B, P, C+F)."""
    return torch.cat([context.unsqueeze(1).expand(-1, features.shape[1], -1), features], dim=-1)


def _constant_score_init(score: nn.Linear) -> None:
    """Score = ReLU(0 . x + 1) = 1 for every PTM -> exactly uniform weights, and the scorer can still learn.

    Not W = 0, b = 0: PyTorch's ReLU has gradient 0 at 0, so an all-zero pre-activation would give the
    scorer zero gradient forever (a dead unit that never leaves uniform). With b = 1 every pre-activation
    starts at 1 (ReLU active) and dL/dw = sum_i dL/de_i [c; f_i] is non-zero.
    """
    with torch.no_grad():
        score.weight.zero_()
        score.bias.fill_(1.0)


class FusionAttention(nn.Module):
    r"""Base of the fusion variants: the shared forward, the hold-uniform switch and its checkpointing.

    Subclasses implement :meth:`attention_weights`; :meth:`forward` turns them into

    .. math::
        z = \sum_{i=1}^{P} \alpha_i f_i

    **Hold uniform.** ``hold_uniform`` is a plain Python ``bool`` attribute, not a tensor buffer: reading
    it costs no host-device sync per forward (a CUDA buffer would need ``.item()``), and while it is
    ``True`` the scorer is skipped, so its parameters get **no** gradient (``.grad`` stays ``None``;
    Adam then leaves them untouched) while they keep existing. It is saved in the module's
    ``state_dict`` through :meth:`get_extra_state` (key ``<prefix>_extra_state``, a 0-d bool tensor,
    loadable with ``torch.load(weights_only=True)``), so a checkpoint taken during the warm-up restores
    it. A state dict written before this key existed (today's checkpoints) loads with ``strict=True``
    and means "not held".

    Args:
        context_dim: size C of the state context :math:`c`.
        feature_dim: size F of every PTM feature.
        temperature: softmax temperature :math:`\tau > 0` (scores are divided by it).

    Shapes:
        - input: context :math:`(B, C)`, features :math:`(B, P, F)`
        - output: fused :math:`(B, F)`, weights :math:`(B, P)` (non-negative, each row sums to 1)
    """

    kind: str = ""

    def __init__(self, context_dim: int, feature_dim: int, temperature: float) -> None:
        super().__init__()
        self.context_dim = context_dim
        self.feature_dim = feature_dim
        self.temperature = _check_temperature(temperature)
        self.hold_uniform = False

    def set_hold_uniform(self, hold: bool) -> None:
        """While held, weights are exactly 1/P and fused = features.mean(dim=1) (the trainer's warm-up)."""
        self.hold_uniform = bool(hold)

    def attention_weights(self, context: Tensor, features: Tensor) -> Tensor:
        """Weights :math:`(B, P)` from the scorer (ignores ``hold_uniform``)."""
        raise NotImplementedError

    def forward(self, context: Tensor, features: Tensor) -> tuple[Tensor, Tensor]:
        self._check_shapes(context, features)
        if self.hold_uniform:
            # same numbers as the `mean` fusion mode; 1/P as a float rounds exactly like softmax of ties
            uniform = features.new_full(features.shape[:2], 1.0 / features.shape[1])
            return features.mean(dim=1), uniform
        weights = self.attention_weights(context, features)
        fused = torch.einsum("bp,bpf->bf", weights, features)
        return fused, weights

    def _check_shapes(self, context: Tensor, features: Tensor) -> None:
        if features.dim() != 3 or features.shape[-1] != self.feature_dim or features.shape[1] == 0:
            raise ValueError(f"features must be (B, P>=1, {self.feature_dim}), got {tuple(features.shape)}")
        if context.dim() != 2 or context.shape != (features.shape[0], self.context_dim):
            raise ValueError(f"context must be ({features.shape[0]}, {self.context_dim}), got {tuple(context.shape)}")

    # -- checkpointing of `hold_uniform` ---------------------------------------------------------------
    def get_extra_state(self) -> Tensor:
        return torch.tensor(self.hold_uniform)  # a tensor keeps every state-dict value a tensor

    def set_extra_state(self, state: Any) -> None:
        self.hold_uniform = bool(state)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        key = prefix + "_extra_state"
        if key not in state_dict:  # written before hold_uniform was saved: those runs never held
            state_dict[key] = torch.tensor(False)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return f"context_dim={self.context_dim}, feature_dim={self.feature_dim}, temperature={self.temperature}"


class WeightSharingAttention(FusionAttention):
    r"""``additive``: Bahdanau-style attention over P PTM features, with ONE scoring MLP shared by all PTMs.

    .. math::
        e_i = v^\top \tanh\big(W [c; f_i] + b\big), \qquad
        \alpha = \mathrm{softmax}(e / \tau), \qquad
        z = \sum_i \alpha_i f_i

    The same :math:`W, b, v` score every PTM ("weight sharing"), so the module's size does not grow with
    P and the weights :math:`\alpha` are comparable across PTMs: they say how much each PTM contributes
    in this state. Dropout acts on the hidden layer of the scoring MLP. :math:`C \ne F` is fine (W takes
    C+F inputs). With :math:`\tau = 1` the numbers are those of the original wsa_lab module
    for the same seed (same parameters, created in the same order).

    ``uniform_init=True`` zeroes :math:`v`, so :math:`e_i = 0` and :math:`\alpha_i = 1/P` exactly for every
    input; :math:`v` gets a gradient at once (the hidden layer is non-zero), :math:`W, b` from the next
    step on (their gradient goes through :math:`v`).

    Args:
        context_dim: size C of the state context :math:`c`.
        feature_dim: size F of every PTM feature.
        hidden_dim: width of the scoring MLP's hidden layer.
        dropout: dropout probability on that hidden layer.
        temperature: softmax temperature :math:`\tau > 0`.
        uniform_init: start with exactly uniform weights (zero :math:`v`).

    Shapes:
        - input: context :math:`(B, C)`, features :math:`(B, P, F)`
        - output: fused :math:`(B, F)`, weights :math:`(B, P)` (each row sums to 1)
    """

    kind = "additive"

    def __init__(
        self,
        context_dim: int,
        feature_dim: int,
        hidden_dim: int,
        dropout: float,
        temperature: float,
        uniform_init: bool,
    ) -> None:
        super().__init__(context_dim, feature_dim, temperature)
        self.score = nn.Sequential(
            nn.Linear(context_dim + feature_dim, hidden_dim),
            nn.Tanh(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, 1, bias=False),  # v; a bias would cancel in the softmax
        )
        if uniform_init:
            nn.init.zeros_(self.score[-1].weight)

    def attention_weights(self, context: Tensor, features: Tensor) -> Tensor:
        return torch.softmax(self.score(_pairs(context, features)).squeeze(-1) / self.temperature, dim=-1)


AdditiveAttention = WeightSharingAttention  # the name the kind table uses


class ReluSoftmaxAttention(FusionAttention):
    r"""``relu_softmax``: the thesis's WSA, one shared ReLU unit scores [context; embedding], then softmax.

    .. math::
        e_i = \mathrm{ReLU}\big(w^\top [c; f_i] + b\big), \qquad
        \alpha = \mathrm{softmax}(e / \tau), \qquad
        z = \sum_i \alpha_i f_i

    Follows Sopralapanca/rl-skilled-agent ``feature_extractors.py``, ``WeightSharingAttentionExtractor``
    (``nn.Sequential(nn.Linear(2 * features_dim, 1), nn.ReLU())``, PyTorch's default Linear init, softmax
    over the skills, weighted sum). There :math:`C = F = d`, because the context adapter maps the state
    encoder's output to d. Here :math:`C \ne F` is allowed and handled by scoring :math:`[c; f_i]` with
    ``Linear(C + F, 1)`` directly: a linear projection :math:`P c` in front of a linear scorer would be
    absorbed by it (:math:`w_c^\top P c = (P^\top w_c)^\top c`), so it would add parameters, not
    expressiveness. For :math:`C = F` this is exactly the thesis's ``Linear(2d, 1)``.

    Note the context term :math:`w_c^\top c` is the same for all PTMs of a state: without the ReLU it would
    cancel in the softmax; it acts only by moving PTMs across the ReLU's threshold.

    ``uniform_init=True`` sets :math:`w = 0, b = 1`: every :math:`e_i = 1`, so :math:`\alpha_i = 1/P`
    exactly; not :math:`b = 0`, because ReLU's gradient at 0 is 0 and the scorer would never learn.

    Args:
        context_dim: size C of the state context :math:`c`.
        feature_dim: size F of every PTM feature.
        temperature: softmax temperature :math:`\tau > 0`.
        uniform_init: start with exactly uniform weights.

    Shapes:
        - input: context :math:`(B, C)`, features :math:`(B, P, F)`
        - output: fused :math:`(B, F)`, weights :math:`(B, P)` (each row sums to 1)
    """

    kind = "relu_softmax"

    def __init__(
        self, context_dim: int, feature_dim: int, temperature: float, uniform_init: bool
    ) -> None:
        super().__init__(context_dim, feature_dim, temperature)
        self.score = nn.Linear(context_dim + feature_dim, 1)
        if uniform_init:
            _constant_score_init(self.score)

    def attention_weights(self, context: Tensor, features: Tensor) -> Tensor:
        scores = torch.relu(self.score(_pairs(context, features)).squeeze(-1))
        return torch.softmax(scores / self.temperature, dim=-1)


class ReluSumAttention(FusionAttention):
    r"""``relu_sum``: the WSA paper's code, the same ReLU score, normalised by its sum instead of softmax.

    .. math::
        e_i = \mathrm{ReLU}\big(w^\top [c; f_i] + b\big), \qquad
        \alpha_i = \begin{cases} e_i / \sum_j e_j & \text{if } \sum_j e_j > 0 \\
                                 1/P & \text{if } e = 0 \end{cases}, \qquad
        z = \sum_i \alpha_i f_i

    Follows EliaPiccoli/PufferLib ``pufferlib/models.py``, class ``WSA``: ``Sequential(layer_init(
    Linear(2 * emb_size, 1), std=1), ReLU())`` (orthogonal weight of gain 1, i.e. a random unit vector,
    zero bias; done the same here), then ``ww / ww.sum(1, keepdim=True).clamp_(min=1e-8)`` and
    ``nan_to_num(ww, nan=0, posinf=0, neginf=0)``. :math:`C \ne F` is handled as in
    :class:`ReluSoftmaxAttention` (``Linear(C + F, 1)`` on :math:`[c; f_i]`).

    Differences from the original, on purpose:
        - **All-zero row** (every ReLU off): the original divides 0 by the clamp 1e-8, so its weights are
          all 0 and the fused feature is the zero vector (every PTM dropped, no gradient to anything for
          that state). Here such a row gets uniform weights :math:`1/P` (fused = mean of the features, so
          the features and adapters still learn); the scorer gets no gradient from it in both versions.
        - **Tiny positive sums** :math:`0 < \sum_j e_j < 10^{-8}`: the original's clamp makes its weights
          sum to :math:`\sum_j e_j / 10^{-8} < 1`; here they always sum to 1 (exact division; safe since
          :math:`0 \le e_i \le \sum_j e_j`).
        - **NaN / Inf**: the original maps them to weight 0; here they propagate, so the trainer's
          divergence check sees them instead of a silently zeroed PTM.

    No temperature: :math:`e_i / \sum_j e_j` is invariant to scaling the scores, so :math:`\tau` would do
    nothing; anything but 1 is refused.

    ``uniform_init=True`` sets :math:`w = 0, b = 1`: every :math:`e_i = 1`, so :math:`\alpha_i = 1/(P \cdot 1)
    = 1/P` exactly (and were all scores 0, the all-zero rule also gives exactly :math:`1/P`); not
    :math:`b = 0`, which would be the all-zero row with a dead ReLU that never learns.

    Args:
        context_dim: size C of the state context :math:`c`.
        feature_dim: size F of every PTM feature.
        temperature: must be 1 (see above).
        uniform_init: start with exactly uniform weights.

    Shapes:
        - input: context :math:`(B, C)`, features :math:`(B, P, F)`
        - output: fused :math:`(B, F)`, weights :math:`(B, P)` (each row sums to 1)
    """

    kind = "relu_sum"

    def __init__(
        self, context_dim: int, feature_dim: int, temperature: float, uniform_init: bool
    ) -> None:
        if _check_temperature(temperature) != 1.0:
            raise ConfigError(
                f"attention temperature has no effect on relu_sum (w / sum(w) is scale-invariant); "
                f"leave it at 1.0, got {temperature!r}"
            )
        super().__init__(context_dim, feature_dim, temperature)
        self.score = nn.Linear(context_dim + feature_dim, 1)
        if uniform_init:
            _constant_score_init(self.score)
        else:  # PufferLib's layer_init(..., std=1)
            nn.init.orthogonal_(self.score.weight, 1.0)
            nn.init.zeros_(self.score.bias)

    def attention_weights(self, context: Tensor, features: Tensor) -> Tensor:
        scores = torch.relu(self.score(_pairs(context, features)).squeeze(-1))  # (B, P), >= 0
        total = scores.sum(dim=-1, keepdim=True)
        alive = total > 0  # scores >= 0, so total == 0 iff the whole row is 0
        # divide by 1 in dead rows so neither branch of `where` makes a 0/0 (its NaN would reach backward)
        normalised = scores / torch.where(alive, total, torch.ones_like(total))
        return torch.where(alive, normalised, scores.new_full(scores.shape, 1.0 / scores.shape[-1]))


class DotProductAttention(FusionAttention):
    r"""``dot_product`` (DPA): scaled dot-product attention, the context as query, the PTM features as keys
    and values.

    .. math::
        q = W_q c + b_q \in \mathbb{R}^F, \qquad
        \alpha = \mathrm{softmax}\Big(\frac{q^\top f_i}{\sqrt{F}\,\tau}\Big), \qquad
        z = \sum_i \alpha_i f_i

    Follows the thesis's ablation, Sopralapanca/rl-skilled-agent ``feature_extractors.py``,
    ``DotProductAttentionExtractor``: key = value = the adapted PTM embeddings themselves (no
    :math:`W_k, W_v`), query = the context through an adapter to size d, ``softmax(q k^T / sqrt(d)) v``,
    dropout 0. Here the query projection :math:`W_q` (``Linear(C, F)``, default init) plays that adapter's
    role without its ReLU (the context encoder upstream already is the nonlinearity; a ReLU would also
    kill the zero init below). A key projection would add nothing for a single query:
    :math:`(W_q c)^\top (W_k f) = c^\top (W_q^\top W_k) f`, the same bilinear family as :math:`W_q` alone.
    Values are the raw features, so the output stays in feature space, size F.

    ``uniform_init=True`` zeroes :math:`W_q, b_q`: :math:`q = 0`, every score is 0 and
    :math:`\alpha_i = 1/P` exactly; :math:`W_q` gets a gradient at once (:math:`\partial s_i/\partial W_q =
    f_i c^\top/\sqrt{F}`).

    Args:
        context_dim: size C of the state context :math:`c`.
        feature_dim: size F of every PTM feature (the query's size too).
        temperature: softmax temperature :math:`\tau > 0`, on top of the :math:`\sqrt{F}` scaling.
        uniform_init: start with exactly uniform weights.

    Shapes:
        - input: context :math:`(B, C)`, features :math:`(B, P, F)`
        - output: fused :math:`(B, F)`, weights :math:`(B, P)` (each row sums to 1)
    """

    kind = "dot_product"

    def __init__(
        self, context_dim: int, feature_dim: int, temperature: float, uniform_init: bool
    ) -> None:
        super().__init__(context_dim, feature_dim, temperature)
        self.query = nn.Linear(context_dim, feature_dim)
        if uniform_init:
            nn.init.zeros_(self.query.weight)
            nn.init.zeros_(self.query.bias)

    def attention_weights(self, context: Tensor, features: Tensor) -> Tensor:
        q = self.query(context)  # (B, F)
        scores = torch.einsum("bf,bpf->bp", q, features) / (math.sqrt(self.feature_dim) * self.temperature)
        return torch.softmax(scores, dim=-1)


_CLASSES: dict[str, type[FusionAttention]] = {
    "additive": WeightSharingAttention,
    "relu_softmax": ReluSoftmaxAttention,
    "relu_sum": ReluSumAttention,
    "dot_product": DotProductAttention,
}
ATTENTION_KINDS: tuple[str, ...] = tuple(_CLASSES)  # ("additive", "relu_softmax", "relu_sum", "dot_product")


def build_attention(
    kind: str,
    context_dim: int,
    feature_dim: int,
    hidden_dim: int,
    dropout: float,
    temperature: float,
    uniform_init: bool,
) -> FusionAttention:
    """The fusion attention of `kind` (one of :data:`ATTENTION_KINDS`), from the keys of the `attention` config
    group (conf/attention/*.yaml, where their defaults live).

    ``hidden_dim`` and ``dropout`` are used by ``additive`` only (the other variants have no hidden
    layer, and their references use no dropout on the weights, which would break "rows sum to 1").
    ``temperature`` must stay 1 for ``relu_sum``. Raises :class:`~wsa_lab.errors.ConfigError` for an
    unknown kind or a bad temperature.
    """
    if kind not in _CLASSES:
        raise ConfigError(f"attention kind must be one of {list(ATTENTION_KINDS)}, got {kind!r}")
    if kind == "additive":
        return WeightSharingAttention(context_dim, feature_dim, hidden_dim, dropout, temperature, uniform_init)
    return _CLASSES[kind](context_dim, feature_dim, temperature=temperature, uniform_init=uniform_init)


def set_hold_uniform(model: nn.Module, hold: bool) -> int:
    """Set ``hold_uniform`` on every :class:`FusionAttention` inside `model`; returns how many were set."""
    found = [m for m in model.modules() if isinstance(m, FusionAttention)]
    for m in found:
        m.set_hold_uniform(hold)
    return len(found)


# -- feature diagnostics ------------------------------------------------------------------------------


class FeatureSimilarity(NamedTuple):
    cosine: Tensor  # (P, P) mean cosine similarity over states
    cka: Tensor  # (P, P) linear CKA over states


def feature_similarity(features: Tensor, eps: float = 1e-8) -> FeatureSimilarity:
    r"""How alike the PTMs' features are over S states ("Check: features are diverse").

    For PTMs :math:`p, q` with feature matrices :math:`X_p, X_q \in \mathbb{R}^{S \times F}` (row s = the
    feature of state s):

    .. math::
        \mathrm{cos}_{pq} = \frac{1}{S} \sum_{s} \frac{\langle x_{sp}, x_{sq} \rangle}
            {\max(\lVert x_{sp} \rVert, \epsilon)\, \max(\lVert x_{sq} \rVert, \epsilon)}, \qquad
        \mathrm{CKA}_{pq} = \frac{\lVert \tilde X_q^\top \tilde X_p \rVert_F^2}
            {\lVert \tilde X_p^\top \tilde X_p \rVert_F\, \lVert \tilde X_q^\top \tilde X_q \rVert_F}

    with :math:`\tilde X = X - \mathbf{1}\bar x^\top` centred over the states (linear CKA, Kornblith et
    al. 2019, "Similarity of Neural Network Representations Revisited", eq. for the linear kernel).

    - cosine compares the two features state by state (same feature coordinates required): identical
      features give 1, orthogonal ones 0, a zero feature 0 (the :math:`\epsilon` clamp).
    - CKA compares the two representations' geometry over the states: 1 for identical features, and
      invariant to an orthogonal transform :math:`X Q`, isotropic scaling :math:`a X` and (through the
      centring) translation of either PTM; in [0, 1]. It is NaN where a PTM's feature is constant over
      the states (no variance: undefined, and neither "same" nor "different").

    Computed in float64; returned in the input's floating dtype.

    Args:
        features: the PTM features of S states.
        eps: norm clamp of the cosine.

    Shapes:
        - input: features :math:`(S, P, F)`, :math:`S \ge 2`
        - output: :class:`FeatureSimilarity` of two :math:`(P, P)` symmetric tensors
    """
    if features.dim() != 3 or features.shape[0] < 2:
        raise ValueError(f"features must be (S>=2, P, F), got {tuple(features.shape)}")
    out_dtype = features.dtype if features.is_floating_point() else torch.get_default_dtype()
    x = features.detach().to(torch.float64)
    num_states, _, num_features = x.shape

    unit = x / x.norm(dim=-1, keepdim=True).clamp_min(eps)
    cosine = torch.einsum("spf,sqf->pq", unit, unit) / num_states

    xc = x - x.mean(dim=0, keepdim=True)
    if num_states <= num_features:  # via (S, S) Gram matrices: <K_p, K_q>_F = ||X_q^T X_p||_F^2
        gram = torch.einsum("spf,tpf->pst", xc, xc)  # (P, S, S)
        hsic = torch.einsum("pst,qst->pq", gram, gram)
    else:  # via (F, F) cross-covariances
        cross = torch.einsum("spf,sqg->pqfg", xc, xc)  # (P, P, F, F)
        hsic = cross.pow(2).sum(dim=(-2, -1))
    self_norm = hsic.diagonal().sqrt()
    cka = hsic / (self_norm[:, None] * self_norm[None, :])  # 0/0 -> NaN for a constant feature
    return FeatureSimilarity(cosine.to(out_dtype), cka.to(out_dtype))


def feature_norm_imbalance(features: Tensor) -> float:
    r"""Largest over smallest mean L2 norm of the PTMs' features: 1 = balanced; ``inf`` if one (not all) is zero.

    .. math::
        \frac{\max_p \bar n_p}{\min_p \bar n_p}, \qquad \bar n_p = \operatorname{mean}_s \lVert x_{sp} \rVert_2

    A large ratio means the fused feature's scale is set by one PTM whatever the weights say (and
    ``dot_product`` scores, which grow with the norm, favour it).

    Shapes:
        - input: features :math:`(S, P, F)` (or :math:`(B, P, F)`)
        - output: a Python float
    """
    if features.dim() != 3:
        raise ValueError(f"features must be (S, P, F), got {tuple(features.shape)}")
    norms = features.detach().to(torch.float64).norm(dim=-1).mean(dim=0)  # (P,)
    low, high = norms.min().item(), norms.max().item()
    if low == 0.0:
        return math.inf if high > 0.0 else 1.0
    return high / low


# -- state dependence and ablation ----------------------------------------------------------------------


class StateDependence(NamedTuple):
    state_std: float  # mean over PTMs of each weight's std across the states
    top_switch: float  # share of states whose largest weight is not the PTM with the largest mean weight


def state_dependence(weights: Tensor) -> StateDependence:
    r"""How much the attention differs between S states ("Meaningful: different states -> different attention").

    .. math::
        \mathrm{state\_std} = \frac{1}{P} \sum_i \operatorname{std}_s w_{si}, \qquad
        \mathrm{top\_switch} = \frac{1}{S} \big|\{ s : \arg\max_i w_{si} \ne \arg\max_i \bar w_i \}\big|

    (population std; ties go to the lowest index, as ``torch.argmax``). A state-blind attention (the same
    weights in every state) gives 0 and 0; one that routes states to different PTMs gives both > 0.
    ``top_switch`` alone is not a verdict: near-uniform weights with tiny jitter switch their argmax at random.

    Shapes:
        - input: weights :math:`(S, P)`
        - output: two Python floats (0 for a single state)
    """
    if weights.dim() != 2:
        raise ValueError(f"weights must be (S, P), got {tuple(weights.shape)}")
    w = weights.detach().to(torch.float64)
    if w.shape[0] < 2:
        return StateDependence(0.0, 0.0)
    std = w.std(dim=0, unbiased=False).mean().item()
    top = w.mean(dim=0).argmax()
    return StateDependence(std, (w.argmax(dim=1) != top).to(torch.float64).mean().item())


def renormalise_without(weights: Tensor, index: int) -> Tensor:
    r"""Attention weights with PTM `index` removed: :math:`w_i = 0`, the others rescaled to sum to 1,
    :math:`w'_j = w_j / \sum_{k \ne i} w_k`. A row whose other weights are all 0 gets them uniform (the removed
    PTM held all the attention: nothing says how to share it).

    Shapes:
        - input: weights :math:`(B, P)`, :math:`P \ge 2`
        - output: :math:`(B, P)`
    """
    if weights.dim() != 2 or weights.shape[1] < 2 or not 0 <= index < weights.shape[1]:
        raise ValueError(f"need (B, P>=2) weights and 0 <= index < P; got {tuple(weights.shape)}, index {index}")
    keep = torch.ones(weights.shape[1], dtype=weights.dtype, device=weights.device)
    keep[index] = 0.0
    kept = weights * keep
    total = kept.sum(dim=-1, keepdim=True)
    uniform = keep / (weights.shape[1] - 1)
    return torch.where(total > 0, kept / torch.where(total > 0, total, torch.ones_like(total)), uniform.expand_as(kept))
