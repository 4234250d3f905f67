"""Fusion attention variants (`wsa_lab.models.attention`): hand computations, invariances, knobs, diagnostics."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import Tensor, nn

from wsa_lab.conf_files import yaml_defaults
from wsa_lab.errors import ConfigError
from wsa_lab.models.attention import (
    ATTENTION_KINDS,
    DotProductAttention,
    FusionAttention,
    ReluSoftmaxAttention,
    ReluSumAttention,
    WeightSharingAttention,
    build_attention,
    feature_norm_imbalance,
    feature_similarity,
    set_hold_uniform,
)

SOFTMAX_KINDS = ("additive", "relu_softmax", "dot_product")
#: the `attention` group's values (conf/attention/additive.yaml holds their defaults)
ATTENTION = yaml_defaults("attention/additive.yaml")
NEUTRAL = {"temperature": 1.0, "uniform_init": False}  # the non-additive classes built by hand below


def options(**overrides) -> dict:
    """build_attention's keyword arguments: the YAML's values, updated with `overrides`."""
    keys = ("hidden_dim", "dropout", "temperature", "uniform_init")
    return {**{k: ATTENTION[k] for k in keys}, **overrides}


class _LegacyWSA(nn.Module):
    """Verbatim copy of `WeightSharingAttention` before the variants existed: the numbers to keep."""

    def __init__(self, context_dim: int, feature_dim: int, hidden_dim: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        self.score = nn.Sequential(
            nn.Linear(context_dim + feature_dim, hidden_dim),
            nn.Tanh(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, 1, bias=False),
        )

    def forward(self, context: Tensor, features: Tensor) -> tuple[Tensor, Tensor]:
        num_ptms = features.shape[1]
        pairs = torch.cat([context.unsqueeze(1).expand(-1, num_ptms, -1), features], dim=-1)
        weights = torch.softmax(self.score(pairs).squeeze(-1), dim=-1)
        fused = torch.einsum("bp,bpf->bf", weights, features)
        return fused, weights


def _inputs(
    batch: int = 5, ptms: int = 4, context_dim: int = 6, feature_dim: int = 3, seed: int = 1, scale: float = 1.0
) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    context = scale * torch.randn(batch, context_dim, generator=g)
    features = scale * torch.randn(batch, ptms, feature_dim, generator=g)
    return context, features


def _build(kind: str, context_dim: int = 6, feature_dim: int = 3, **kwargs) -> FusionAttention:
    module = build_attention(kind, context_dim, feature_dim, **options(hidden_dim=8, **kwargs)).eval()
    if kind in ("relu_softmax", "relu_sum"):
        with torch.no_grad():  # every ReLU on, so scores are non-uniform and gradients flow
            module.score.bias.fill_(5.0)
    return module


def _pairs(context: Tensor, features: Tensor) -> Tensor:
    return torch.cat([context[:, None, :].expand(-1, features.shape[1], -1), features], dim=-1)


def _weighted(weights: Tensor, features: Tensor) -> Tensor:
    return (weights[:, :, None] * features).sum(dim=1)


def _entropy(weights: Tensor) -> Tensor:
    return -(weights * weights.log()).sum(dim=-1)


def _pufferlib_relu_sum(scores: Tensor) -> Tensor:
    """EliaPiccoli/PufferLib `WSA.forward_model`'s normalisation, on (B, P) ReLU scores."""
    ww = scores / scores.sum(dim=1, keepdim=True).clamp_(min=1e-8)
    return torch.nan_to_num(ww, nan=0.0, posinf=0.0, neginf=0.0)


# -- hand computations --------------------------------------------------------------------------------

CONTEXT = torch.tensor([[1.0, -2.0], [0.5, 0.0]])  # (B=2, C=2)
FEATURES = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, -1.0]], [[0.5, 0.5], [-1.0, 2.0], [0.0, 0.0]]])  # (2, 3, 2)


def test_additive_matches_hand_computation() -> None:
    m = WeightSharingAttention(2, 2, hidden_dim=3, dropout=0.5, **NEUTRAL).eval()
    W = torch.tensor([[0.1, -0.2, 0.3, 0.4], [0.0, 0.5, -0.5, 0.2], [-0.3, 0.1, 0.2, -0.1]])
    b = torch.tensor([0.05, -0.1, 0.2])
    v = torch.tensor([[1.0, -2.0, 0.5]])
    with torch.no_grad():
        m.score[0].weight.copy_(W)
        m.score[0].bias.copy_(b)
        m.score[3].weight.copy_(v)
    e = torch.tanh(_pairs(CONTEXT, FEATURES) @ W.T + b) @ v[0]  # (2, 3)
    for tau in (1.0, 2.5):
        m.temperature = tau
        fused, weights = m(CONTEXT, FEATURES)
        expected = torch.exp(e / tau) / torch.exp(e / tau).sum(dim=1, keepdim=True)
        torch.testing.assert_close(weights, expected)
        torch.testing.assert_close(fused, _weighted(expected, FEATURES))


def test_relu_softmax_matches_hand_computation_with_context_dim_not_feature_dim() -> None:
    context = torch.tensor([[1.0, -1.0, 2.0], [0.0, 3.0, -1.0]])  # C=3 != F=2: Linear(C+F, 1)
    m = ReluSoftmaxAttention(3, 2, **NEUTRAL)
    w = torch.tensor([[0.2, 0.1, -0.1, 1.0, -1.0]])
    with torch.no_grad():
        m.score.weight.copy_(w)
        m.score.bias.fill_(0.1)
    pre = _pairs(context, FEATURES) @ w[0] + 0.1
    assert (pre < 0).any() and (pre > 0).any()  # the ReLU matters in this example
    scores = pre.clamp_min(0)
    expected = torch.exp(scores) / torch.exp(scores).sum(dim=1, keepdim=True)
    fused, weights = m(context, FEATURES)
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(fused, _weighted(expected, FEATURES))


def test_relu_sum_matches_hand_computation_and_pufferlib_when_scores_are_positive() -> None:
    m = ReluSumAttention(2, 2, **NEUTRAL)
    w = torch.tensor([[0.5, 0.25, 1.0, -0.5]])
    with torch.no_grad():
        m.score.weight.copy_(w)
        m.score.bias.fill_(1.0)
    scores = (_pairs(CONTEXT, FEATURES) @ w[0] + 1.0).clamp_min(0)
    assert (scores == 0).any() and (scores.sum(dim=1) > 0).all()  # one PTM switched off, rows alive
    expected = scores / scores.sum(dim=1, keepdim=True)
    fused, weights = m(CONTEXT, FEATURES)
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(weights, _pufferlib_relu_sum(scores))
    torch.testing.assert_close(fused, _weighted(expected, FEATURES))


def test_dot_product_matches_hand_computation() -> None:
    m = DotProductAttention(2, 2, **NEUTRAL)
    Wq = torch.tensor([[1.0, 0.5], [-0.5, 2.0]])
    bq = torch.tensor([0.1, -0.2])
    with torch.no_grad():
        m.query.weight.copy_(Wq)
        m.query.bias.copy_(bq)
    q = CONTEXT @ Wq.T + bq  # (2, F)
    for tau in (1.0, 0.5):
        m.temperature = tau
        scores = (q[:, None, :] * FEATURES).sum(-1) / math.sqrt(2) / tau
        expected = torch.exp(scores) / torch.exp(scores).sum(dim=1, keepdim=True)
        fused, weights = m(CONTEXT, FEATURES)
        torch.testing.assert_close(weights, expected)
        torch.testing.assert_close(fused, _weighted(expected, FEATURES))
        assert fused.shape == (2, 2)  # values are the raw features: feature space


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
@pytest.mark.parametrize("default_init", [True, False])
def test_weights_are_a_distribution(kind: str, default_init: bool) -> None:
    torch.manual_seed(3)
    m = build_attention(kind, 6, 3, **options(hidden_dim=8)).eval() if default_init else _build(kind)
    context, features = _inputs(batch=64, scale=3.0)
    fused, weights = m(context, features)
    assert weights.shape == (64, 4) and fused.shape == (64, 3)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(64))


# -- relu_sum's all-zero rows ---------------------------------------------------------------------------


def test_relu_sum_all_zero_row_is_uniform_where_pufferlib_gives_zeros() -> None:
    m = ReluSumAttention(2, 2, **NEUTRAL)
    with torch.no_grad():
        m.score.weight.copy_(torch.tensor([[0.0, 0.0, 1.0, 0.0]]))  # score = ReLU(f_0 + b)
        m.score.bias.fill_(-1.0)
    features = torch.tensor([[[3.0, 1.0], [2.0, 0.0], [0.5, 4.0]], [[0.2, 1.0], [-1.0, 2.0], [0.9, 3.0]]])
    features.requires_grad_(True)
    fused, weights = m(CONTEXT, features)  # row 0 alive (3-1, 2-1 > 0); row 1: every f_0 - 1 <= 0
    torch.testing.assert_close(weights[0], torch.tensor([2.0, 1.0, 0.0]) / 3)
    assert torch.equal(weights[1], torch.full((3,), 1 / 3))
    torch.testing.assert_close(fused[1], features[1].mean(dim=0))
    scores = (features[:, :, 0] - 1.0).clamp_min(0).detach()
    assert torch.equal(_pufferlib_relu_sum(scores)[1], torch.zeros(3))  # the original drops every PTM

    fused[1].sum().backward()  # a dead row still trains the features (uniformly), not the scorer
    assert torch.equal(features.grad[1], torch.full((3, 2), 1 / 3))
    assert torch.equal(m.score.weight.grad, torch.zeros_like(m.score.weight))
    assert not torch.isnan(m.score.bias.grad).any()


def test_relu_sum_tiny_positive_sum_still_sums_to_one() -> None:
    m = ReluSumAttention(2, 2, **NEUTRAL)
    with torch.no_grad():
        m.score.weight.zero_()
        m.score.weight[0, 2] = 1e-10  # scores = 1e-10 * ReLU(f_0): sum << the original's 1e-8 clamp
        m.score.bias.zero_()
    features = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [0.0, 0.0]]])
    _, weights = m(CONTEXT[:1], features)
    torch.testing.assert_close(weights, torch.tensor([[0.25, 0.75, 0.0]]))
    scores = 1e-10 * features[:, :, 0]
    assert _pufferlib_relu_sum(scores).sum() < 0.1  # there, the weights no longer sum to 1


# -- invariances and gradients --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_permuting_ptms_permutes_weights(kind: str) -> None:
    torch.manual_seed(0)
    m = _build(kind)
    context, features = _inputs(batch=7, ptms=5)
    perm = torch.tensor([3, 0, 4, 1, 2])
    fused, weights = m(context, features)
    fused_p, weights_p = m(context, features[:, perm])
    torch.testing.assert_close(weights_p, weights[:, perm])
    torch.testing.assert_close(fused_p, fused)
    assert not torch.allclose(weights, weights[:, perm])  # the test would catch a PTM-order dependence


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_gradients_reach_scorer_and_features(kind: str) -> None:
    torch.manual_seed(0)
    m = _build(kind)
    context, features = _inputs()
    features.requires_grad_(True)
    fused, _ = m(context, features)
    (fused * torch.randn_like(fused)).sum().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        if kind == "relu_softmax" and name == "score.bias":
            continue  # a shared shift of active ReLU scores cancels in the softmax: zero gradient by design
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_hold_uniform_gives_mean_and_no_scorer_gradient(kind: str) -> None:
    torch.manual_seed(0)
    m = _build(kind).train()
    m.set_hold_uniform(True)
    context, features = _inputs(ptms=3)
    features.requires_grad_(True)
    fused, weights = m(context, features)
    assert torch.equal(weights, torch.full((5, 3), 1 / 3))
    assert torch.equal(fused, features.mean(dim=1))
    g = torch.randn_like(fused)
    (fused * g).sum().backward()
    assert all(p.grad is None for p in m.parameters())  # skipped, not zeroed: Adam leaves them alone
    torch.testing.assert_close(features.grad, g[:, None, :].expand(-1, 3, -1) / 3)
    assert sum(p.numel() for p in m.parameters()) > 0  # the scorer still exists

    m.set_hold_uniform(False)
    _, released = m(context, features)
    assert not torch.allclose(released, weights)


def test_set_hold_uniform_walks_a_model() -> None:
    model = nn.ModuleList([build_attention("additive", 2, 2, **options()), nn.Linear(2, 2), build_attention("relu_sum", 2, 2, **options())])
    assert set_hold_uniform(model, True) == 2
    assert model[0].hold_uniform and model[2].hold_uniform
    assert set_hold_uniform(model, False) == 2 and not model[0].hold_uniform


# -- uniform_init ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_uniform_init_is_exactly_uniform_and_can_learn(kind: str) -> None:
    torch.manual_seed(0)
    m = build_attention(kind, 6, 3, **options(hidden_dim=8, uniform_init=True)).train()  # dropout on: still exact
    for ptms, scale in ((2, 1.0), (3, 10.0), (5, 1e3), (7, 1e-3)):
        context, features = _inputs(batch=32, ptms=ptms, seed=ptms, scale=scale)
        fused, weights = m(context, features)
        assert torch.equal(weights, torch.full((32, ptms), 1.0 / ptms)), (ptms, scale)

    # not a dead end: one SGD step moves the weights off uniform
    context, features = _inputs(batch=32, ptms=4)
    fused, _ = m(context, features)
    (fused * torch.randn_like(fused)).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    with torch.no_grad():
        for p in m.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
    _, weights = m.eval()(context, features)
    assert not torch.allclose(weights, torch.full_like(weights, 0.25))


# -- temperature ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", SOFTMAX_KINDS)
def test_higher_temperature_gives_higher_entropy(kind: str) -> None:
    context, features = _inputs(batch=16)
    entropies = []
    for tau in (0.5, 1.0, 3.0):
        torch.manual_seed(0)  # the same parameters at every temperature
        _, weights = _build(kind, temperature=tau)(context, features)
        entropies.append(_entropy(weights))
    assert (entropies[0] < entropies[1]).all() and (entropies[1] < entropies[2]).all()
    assert (entropies[2] <= math.log(4) + 1e-6).all()


def test_bad_temperatures_are_config_errors() -> None:
    for kind in ATTENTION_KINDS:
        for tau in (0.0, -1.0, math.inf, math.nan):
            with pytest.raises(ConfigError, match="temperature"):
                build_attention(kind, 2, 2, **options(temperature=tau))
    with pytest.raises(ConfigError, match="scale-invariant"):
        build_attention("relu_sum", 2, 2, **options(temperature=2.0))


# -- compatibility with today's module, factory, checkpoints ---------------------------------------------


def test_additive_reproduces_todays_numbers_for_the_same_seed() -> None:
    torch.manual_seed(0)
    legacy = _LegacyWSA(6, 3, 16, 0.1)
    torch.manual_seed(0)
    current = WeightSharingAttention(6, 3, 16, 0.1, **NEUTRAL)
    torch.manual_seed(0)
    built = build_attention("additive", 6, 3, **options(hidden_dim=16, dropout=0.1, **NEUTRAL))
    context, features = _inputs()
    for mode in (True, False):  # train (dropout drawn from the same seed) and eval
        outs = []
        for m in (legacy, current, built):
            torch.manual_seed(7)
            outs.append(m.train(mode)(context, features))
        for fused, weights in outs[1:]:
            assert torch.equal(fused, outs[0][0]) and torch.equal(weights, outs[0][1])


def test_todays_state_dict_loads_strictly_and_means_not_held() -> None:
    torch.manual_seed(0)
    legacy = _LegacyWSA(6, 3, 16, 0.1).eval()
    current = WeightSharingAttention(6, 3, 16, 0.1, **NEUTRAL).eval()
    current.set_hold_uniform(True)
    current.load_state_dict(legacy.state_dict(), strict=True)
    assert current.hold_uniform is False
    context, features = _inputs()
    assert torch.equal(current(context, features)[1], legacy(context, features)[1])
    assert set(current.state_dict()) == set(legacy.state_dict()) | {"_extra_state"}


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_hold_uniform_survives_a_checkpoint(kind: str) -> None:
    source = nn.Sequential(build_attention(kind, 4, 3, **options()))
    source[0].set_hold_uniform(True)
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # how wsa_lab loads checkpoints
    assert all(isinstance(v, Tensor) for v in state.values())
    target = nn.Sequential(build_attention(kind, 4, 3, **options()))
    target.load_state_dict(state, strict=True)
    assert target[0].hold_uniform is True


def test_build_attention_kinds_and_unknown_kind() -> None:
    expected = {
        "additive": WeightSharingAttention,
        "relu_softmax": ReluSoftmaxAttention,
        "relu_sum": ReluSumAttention,
        "dot_product": DotProductAttention,
    }
    assert ATTENTION_KINDS == tuple(expected)
    for kind, cls in expected.items():
        m = build_attention(kind, 5, 3, **options())
        assert type(m) is cls and m.kind == kind
    with pytest.raises(ConfigError) as info:
        build_attention("multihead", 5, 3, **options())
    message = str(info.value)
    assert "\n" not in message and "'multihead'" in message
    assert all(kind in message for kind in ATTENTION_KINDS)


def test_wrong_shapes_are_refused() -> None:
    m = build_attention("dot_product", 4, 3, **options())
    with pytest.raises(ValueError, match="context"):
        m(torch.randn(2, 5), torch.randn(2, 3, 3))
    with pytest.raises(ValueError, match="features"):
        m(torch.randn(2, 4), torch.randn(2, 3, 4))


# -- feature diagnostics --------------------------------------------------------------------------------


def _random_orthogonal(n: int, seed: int) -> Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def _hand_cka(x: Tensor, y: Tensor) -> Tensor:
    x, y = x - x.mean(0), y - y.mean(0)
    return (y.T @ x).pow(2).sum() / ((x.T @ x).pow(2).sum().sqrt() * (y.T @ y).pow(2).sum().sqrt())


def test_identical_features_have_cosine_and_cka_one() -> None:
    base = torch.randn(20, 1, 5, dtype=torch.float64)
    sim = feature_similarity(base.expand(-1, 3, -1))
    assert sim.cosine.shape == sim.cka.shape == (3, 3)
    torch.testing.assert_close(sim.cosine, torch.ones(3, 3, dtype=torch.float64))
    torch.testing.assert_close(sim.cka, torch.ones(3, 3, dtype=torch.float64))


def test_orthogonal_features_have_cosine_zero() -> None:
    a = torch.randn(30, 4)
    features = torch.zeros(30, 2, 8)
    features[:, 0, :4] = a  # PTM 0 lives in coordinates 0-3, PTM 1 in 4-7
    features[:, 1, 4:] = torch.randn(30, 4)
    cosine = feature_similarity(features).cosine
    assert cosine[0, 1] == 0 and cosine[1, 0] == 0
    torch.testing.assert_close(cosine.diagonal(), torch.ones(2))


@pytest.mark.parametrize("num_states", [6, 50])  # Gram path (S <= F) and cross-covariance path (S > F)
def test_cka_matches_definition_and_its_invariances(num_states: int) -> None:
    g = torch.Generator().manual_seed(num_states)
    x = torch.randn(num_states, 8, generator=g, dtype=torch.float64)
    y = torch.randn(num_states, 8, generator=g, dtype=torch.float64) + 0.5 * x
    transformed = 3.7 * x @ _random_orthogonal(8, 1) + 2.0  # rotation, isotropic scale, translation
    sim = feature_similarity(torch.stack([x, y, transformed], dim=1))
    torch.testing.assert_close(sim.cka[0, 1], _hand_cka(x, y))
    torch.testing.assert_close(sim.cka, sim.cka.T)
    torch.testing.assert_close(sim.cka[0, 2], torch.tensor(1.0, dtype=torch.float64))  # same geometry
    torch.testing.assert_close(sim.cka[1, 2], sim.cka[0, 1])  # CKA(y, aXQ + b) = CKA(y, x)
    assert sim.cka[0, 1] < 0.99 and (sim.cka >= 0).all() and (sim.cka <= 1 + 1e-12).all()
    assert sim.cosine[0, 2] < 0.99  # cosine is not rotation-invariant: the two checks differ


def test_constant_feature_has_undefined_cka() -> None:
    features = torch.randn(10, 2, 3)
    features[:, 1] = torch.tensor([1.0, 2.0, 3.0])
    cka = feature_similarity(features).cka
    assert torch.isnan(cka[1]).all() and torch.isnan(cka[:, 1]).all()
    assert cka[0, 0] == pytest.approx(1.0)


def test_feature_norm_imbalance() -> None:
    features = torch.zeros(4, 3, 2)
    features[:, 0, 0] = 1.0
    features[:, 1, 1] = -4.0
    features[:, 2] = torch.tensor([3.0, 4.0]) / 2.5  # norm 2
    assert feature_norm_imbalance(features) == pytest.approx(4.0)
    features[:, 0] = 0.0
    assert feature_norm_imbalance(features) == math.inf
    assert feature_norm_imbalance(torch.ones(5, 2, 3)) == 1.0
