"""The fusion variants and the design summary's attention knobs, inside the actor-critic and PPO: every variant
trains, the attention's own learning rate, the equal-weight start and warm-up, the feature-diversity metrics
and their health warnings, a PTM as the attention's context."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import actor_critic_kwargs, compose_config, coverage_specs, from_yaml, ppo_config
from test_train import TINY
from wsa_lab.envs import CoverageEnv
from wsa_lab.errors import ConfigError
from wsa_lab.models import build_actor_critic
from wsa_lab.models.attention import ATTENTION_KINDS
from wsa_lab.rl import PPO
from wsa_lab.tracking import read_metrics
from wsa_lab.config.schema import HealthConfig
from wsa_lab.tracking.health import FeatureHealth
from wsa_lab.train import train

GRAPH_PTMS = [
    {"name": "g1", "model_type": "graph_cnn", "weights": None, "freeze_backbone": False},
    {"name": "g2", "model_type": "graph_cnn", "weights": None, "freeze_backbone": False},
    {"name": "g3", "model_type": "graph_cnn", "weights": None, "freeze_backbone": True},
]


def agent(attention: dict | None = None, **wsa):
    torch.manual_seed(0)
    cfg = {"enabled": True, "pretrained_models": GRAPH_PTMS, "attention": {"hidden_dim": 16, **(attention or {})}, **wsa}
    return build_actor_critic(*coverage_specs(), **actor_critic_kwargs(hidden_dim=16, context_dim=16, feature_dim=16, wsa=cfg))


def ppo_for(model, steps: int = 4) -> PPO:
    env = CoverageEnv(num_envs=4, num_nodes=20, num_sites=3, knn_k=4, seed=0)
    return PPO(model, env, ppo_config(total_timesteps=10 * 4 * steps, num_envs=4, num_steps=steps, num_minibatches=1,
                                     update_epochs=1, anneal_lr=False))


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_every_variant_trains_from_the_config_group(tmp_path: Path, kind: str):
    summary = train(compose_config([*TINY, f"attention={kind}", "ptm=[graph_cnn,resnet18_random]"], tmp_path / kind))
    assert summary["status"] == "completed"
    last = read_metrics(tmp_path / kind)[-1]
    assert abs(last["wsa/attention_weights_0"] + last["wsa/attention_weights_1"] - 1) < 1e-5
    assert -1 <= last["wsa/feature_similarity/graph_cnn__resnet18_random"] <= 1
    assert "wsa/feature_cka/graph_cnn__resnet18_random" in last and last["wsa/feature_norm_imbalance"] >= 1


def test_the_attention_learning_rate_multiplier_changes_only_the_attentions_update():
    deltas = {}
    for scale in (1.0, 3.0):
        model = agent({"lr_scale": scale})
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        ppo = ppo_for(model)
        torch.manual_seed(1)
        ppo.collect_rollout()
        torch.manual_seed(2)
        ppo.update()
        deltas[scale] = {n: (p.detach() - before[n]) for n, p in model.named_parameters()}
        lr = ppo.cfg.learning_rate  # conf/algo/ppo.yaml's default
        groups = {g["name"]: g for g in ppo.optimizer.param_groups}
        assert groups["attention"]["lr"] == pytest.approx(lr * scale) and groups["model"]["lr"] == pytest.approx(lr)
        state = ppo.state_dict()["optimizer"]
        assert [g["base_lr"] for g in state["param_groups"]] == [pytest.approx(lr), pytest.approx(lr * scale)]
    for name, delta in deltas[1.0].items():
        if ".attention." in name:
            if delta.abs().sum() > 0:  # Adam's first step is lr-sized: 3x the learning rate, 3x the step
                torch.testing.assert_close(deltas[3.0][name], 3 * delta, rtol=1e-3, atol=1e-7)  # float32 rounding of p - p0
        else:
            torch.testing.assert_close(deltas[3.0][name], delta, rtol=0, atol=0, msg=name)


def test_uniform_start_and_warm_up_hold_the_weights_at_exactly_one_over_p():
    model = agent({"uniform_init": True, "uniform_warmup_steps": 32})
    ppo = ppo_for(model, steps=8)  # 32 env steps per iteration
    for iteration in range(3):
        metrics = ppo.iterate()
        weights = [metrics[f"wsa/attention_weights_{i}"] for i in range(3)]
        if iteration == 0:  # exactly uniform: the zero-initialised scorer, and the warm-up holds it anyway
            assert (model.rollout.last_attention == 1 / 3).all()  # every state's weights: exactly 1/3 (in float32)
            assert weights == pytest.approx([1 / 3] * 3, abs=1e-7)  # their rollout mean
            assert all(p.grad is None for p in model.attention.parameters())  # held: the scorer takes no step
    assert not (model.rollout.last_attention == 1 / 3).all()  # released after 32 env steps: the weights are learned


def test_warm_up_survives_a_checkpoint(tmp_path: Path):
    overrides = [*TINY, "ptm=[graph_cnn,resnet18_random]", "actor_critic.wsa.attention.uniform_warmup_steps=32"]
    train(compose_config(overrides, tmp_path / "run"))
    records = [r for r in read_metrics(tmp_path / "run") if "wsa/attention_weights_0" in r]
    assert records[0]["wsa/attention_weights_0"] == 0.5  # iteration 1 (steps 0-31): held
    assert records[1]["wsa/attention_weights_0"] != 0.5  # iteration 2: learned


def test_a_ptm_as_the_attentions_context():
    model = agent(context="g3")
    extractor = model.actor.extractor
    assert extractor.context_ptm == 2 and extractor.context_adapter is not None
    obs = CoverageEnv(num_envs=3, num_nodes=20, num_sites=3, knn_k=4, seed=0).reset()
    out = model.get_action_and_value(obs)
    out.features.fusion.weights.sum().backward()
    assert all(p.grad is not None for p in extractor.context_adapter.parameters())
    assert all(p.grad is None for p in model.actor.encoder.parameters())  # the GNN context no longer feeds the attention
    with pytest.raises(ConfigError, match="actor_critic.wsa.context='nope' must be 'state_encoder'"):
        agent(context="nope")


def test_layernorm_adapters():
    model = agent(adapter="layernorm")
    assert all(isinstance(p.adapter[1], torch.nn.LayerNorm) for p in model.actor.extractor.ptms)
    with pytest.raises(ConfigError, match="adapter must be one of"):
        agent(adapter="batchnorm")


@pytest.mark.parametrize(
    "attention,match",
    [({"kind": "softmax"}, "relu_softmax"), ({"lr_scale": 0}, "lr_scale must be"),
     ({"uniform_warmup_steps": -1}, "uniform_warmup_steps must be"), ({"kind": "relu_sum", "temperature": 2.0}, "temperature")],
)
def test_bad_attention_settings_are_one_line_errors(attention, match):
    with pytest.raises(ConfigError, match=match):
        agent(attention)


def test_feature_health_warns_once_per_finding(caplog: pytest.LogCaptureFixture):
    health = FeatureHealth(from_yaml(HealthConfig, "logger/health.yaml", "health"))
    diverse = {"wsa/feature_similarity/a__b": 0.4, "wsa/feature_norm_imbalance": 2.0}
    same = {"wsa/feature_similarity/a__b": 0.995, "wsa/feature_similarity/a__c": 0.2, "wsa/feature_norm_imbalance": 12.0}
    with caplog.at_level("WARNING"):
        health.update(diverse, 32)
        assert not caplog.records
        health.update(same, 64)
        health.update(same, 96)
    assert [r.getMessage().split(":")[1].strip()[:22] for r in caplog.records] == ["PTMs a and b produce n", "PTM feature norms are "]
    assert [(f["check"], f["step"]) for f in health.summary()["wsa/health/feature_findings"]] == [
        ("near_identical", 64), ("norm_imbalance", 64)]
