"""Frozen-feature cache: frozen PTM backbones run once per env step, and one PPO update is the same with or
without the cache (losses, gradients, weights); GPU-only options change nothing on the CPU."""

from __future__ import annotations

import pytest
import torch

from conftest import actor_critic_kwargs, coverage_specs, ppo_config
from wsa_lab.envs import CoverageEnv
from wsa_lab.models import StateInputs, build_actor_critic, gpu
from wsa_lab.rl import PPO

HYBRID = [  # phase3_hybrid: one frozen ImageNet ResNet18, a Graph-CNN and a trainable random ResNet18
    {"name": "resnet18_imagenet", "model_type": "resnet18", "weights": "imagenet", "freeze_backbone": True},
    {"name": "graph_cnn", "model_type": "graph_cnn", "weights": None, "freeze_backbone": False},
    {"name": "resnet18_random", "model_type": "resnet18", "weights": "random", "freeze_backbone": False},
]
ALL_FROZEN = [{**entry, "freeze_backbone": True} for entry in HYBRID]
STEPS, ENVS, MINIBATCHES, EPOCHS = 6, 4, 2, 2


def make_agent(ptms, cache: bool, **kwargs):
    torch.manual_seed(0)
    wsa = {"enabled": bool(ptms), "pretrained_models": ptms, "attention": {"hidden_dim": 16, "dropout": 0.1}}
    return build_actor_critic(*coverage_specs(image_size=32), **actor_critic_kwargs(
        hidden_dim=16, context_dim=16, feature_dim=16, graph_cnn_hidden_dim=16, head_hidden_dim=16,
        frozen_feature_cache=cache, wsa=wsa, **kwargs,
    ))


def count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def one_iteration(ptms, cache: bool, device: str = "cpu", minibatches: int = MINIBATCHES, epochs: int = EPOCHS, **kwargs):
    """A rollout and one update from the same seeds; what the update produced, and backbone call counts.
    `grads` are the last minibatch's (after `minibatches * epochs - 1` optimizer steps)."""
    agent = make_agent(ptms, cache, **kwargs).to(device)
    calls = [count_calls(p.backbone) for p in agent.actor.extractor.ptms] if agent.uses_wsa else []
    env = CoverageEnv(num_envs=ENVS, num_nodes=20, num_sites=3, knn_k=4, image_size=32, seed=0, device=device)
    cfg = ppo_config(total_timesteps=STEPS * ENVS, num_envs=ENVS, num_steps=STEPS, num_minibatches=minibatches,
                    update_epochs=epochs)
    ppo = PPO(agent, env, cfg)
    torch.manual_seed(1)
    ppo.collect_rollout()
    rollout = {"logprobs": ppo.logprobs.clone(), "values": ppo.values.clone(), "nodes": ppo.nodes.clone()}
    torch.manual_seed(2)
    losses = ppo.update()
    grads = {n: p.grad.clone() for n, p in agent.named_parameters() if p.grad is not None}
    return {"rollout": rollout, "losses": losses, "grads": grads, "weights": agent.state_dict(),
            "calls": [c[0] for c in calls], "cached": sorted(agent.rollout.cached_features(torch.arange(1)) or {})}


def assert_same_update(on: dict, off: dict, rtol: float = 1e-4, atol: float = 1e-6) -> None:
    """Two `one_iteration` results agree: rollout, losses, gradients and updated weights."""
    for key in on["rollout"]:
        torch.testing.assert_close(on["rollout"][key], off["rollout"][key], rtol=rtol, atol=atol)
    assert on["losses"].keys() == off["losses"].keys()
    for key, value in on["losses"].items():
        assert value == pytest.approx(off["losses"][key], rel=rtol, abs=atol), key
    assert on["grads"].keys() == off["grads"].keys() and on["grads"]
    for name, grad in on["grads"].items():
        torch.testing.assert_close(grad, off["grads"][name], rtol=rtol, atol=atol, msg=name)
    for name, value in on["weights"].items():
        torch.testing.assert_close(value, off["weights"][name], rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("ptms", [HYBRID, ALL_FROZEN], ids=["hybrid", "all_frozen"])
def test_cache_gives_the_same_update(ptms):
    on, off = one_iteration(ptms, cache=True), one_iteration(ptms, cache=False)
    frozen = [i for i, p in enumerate(ptms) if p["freeze_backbone"]]
    assert on["cached"] == frozen and off["cached"] == []
    assert_same_update(on, off)
    # frozen backbones: once per env step + the update's bootstrap value, never in the epochs
    minibatches = EPOCHS * MINIBATCHES
    for i, p in enumerate(ptms):
        expected_on = STEPS + 1 if p["freeze_backbone"] else STEPS + 1 + minibatches
        assert on["calls"][i] == expected_on, (p["name"], on["calls"])
        assert off["calls"][i] == STEPS + 1 + minibatches, (p["name"], off["calls"])


def test_standard_actor_has_nothing_to_cache():
    agent = make_agent([], cache=True)
    assert not agent.cacheable and agent.cnn_bodies() == [agent.actor.cnn]
    result = one_iteration([], cache=True)
    assert result["cached"] == [] and result["grads"]


def test_cached_features_are_refused_for_a_trainable_ptm():
    agent = make_agent(HYBRID, cache=True)
    env = CoverageEnv(num_envs=2, num_nodes=20, num_sites=3, knn_k=4, image_size=32)
    inputs = StateInputs.from_batch(env.reset())
    trainable = agent.actor.extractor.ptms[2]
    with pytest.raises(ValueError, match="only frozen backbone features can be cached"):
        trainable(inputs, cached=torch.zeros(2, 512))


def test_gpu_options_are_no_ops_on_cpu():
    agent = make_agent(HYBRID, cache=True, gpu={"amp": "bf16", "channels_last": True, "compile": True})
    plain = make_agent(HYBRID, cache=True, gpu={"amp": None, "channels_last": False, "compile": False})
    agent.to("cpu")
    body = agent.actor.extractor.ptms[0].backbone
    assert body.conv1.weight.is_contiguous() and getattr(body, "_compiled_call_impl", None) is None
    obs = CoverageEnv(num_envs=3, num_nodes=20, num_sites=3, knn_k=4, image_size=32).reset()
    agent.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(agent.get_value(obs), plain.get_value(obs), rtol=0, atol=0)


def test_gpu_code_paths_run_when_forced_on_cpu(monkeypatch: pytest.MonkeyPatch):
    """bf16 autocast + channels_last, exercised on the CPU (no GPU here): outputs float32, close to fp32."""
    monkeypatch.setattr(gpu, "ACCELERATED_DEVICE_TYPES", ("cuda", "cpu"))
    for ptms in (HYBRID, []):
        fast = make_agent(ptms, cache=True, gpu={"amp": "bf16", "channels_last": True}).to("cpu")
        ref = make_agent(ptms, cache=True, gpu={"amp": None, "channels_last": False}).to("cpu")
        body = fast.cnn_bodies()[0]
        assert body.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        obs = CoverageEnv(num_envs=3, num_nodes=20, num_sites=3, knn_k=4, image_size=32).reset()
        fast.eval(), ref.eval()
        out = fast.get_action_and_value(obs, deterministic=True)
        assert out.log_prob.dtype == torch.float32 and out.value.dtype == torch.float32
        assert out.features.global_feat.dtype == torch.float32
        out.log_prob.sum().backward()  # gradients flow through the autocast region
        with torch.no_grad():
            torch.testing.assert_close(fast.get_value(obs), ref.get_value(obs), rtol=0.05, atol=0.05)
        if ptms:
            fast.rollout_step(obs, 0)
            cached = fast.rollout.cached_features(torch.arange(obs.num_graphs))
            assert list(cached) == [0] and cached[0].dtype == torch.bfloat16


def test_compile_leaves_the_memory_layout_to_inductor(monkeypatch: pytest.MonkeyPatch):
    """channels_last + compile broke compiled backward passes on a GPU: under compile, no NHWC conversion."""
    monkeypatch.setattr(gpu, "ACCELERATED_DEVICE_TYPES", ("cuda", "cpu"))
    obs = CoverageEnv(num_envs=3, num_nodes=20, num_sites=3, knn_k=4, image_size=32).reset()
    nhwc = torch.channels_last
    for compile_, expect_nhwc in ((False, True), (True, False)):
        agent = make_agent(HYBRID, cache=True, gpu={"amp": None, "channels_last": True, "compile": compile_}).to("cpu")
        body = agent.cnn_bodies()[0]
        assert (getattr(body, "_compiled_call_impl", None) is not None) == compile_
        assert body.conv1.weight.is_contiguous(memory_format=nhwc) == expect_nhwc
        assert agent._inputs(obs).image.is_contiguous(memory_format=nhwc) == expect_nhwc


@pytest.mark.parametrize(
    "gpu_cfg,match",
    [({"amp": "fp16"}, "gpu.amp must be null or one of"), ({"amp_dtype": "bf16"}, "unknown key 'amp_dtype'"),
     ({"compile": "yes"}, "expected bool")],
)
def test_bad_gpu_options_are_config_errors(gpu_cfg, match):
    from wsa_lab.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        make_agent(HYBRID, cache=True, gpu=gpu_cfg)
