"""PPO pieces: GAE against a hand computation, truncation bootstrap, one update moves the policy."""

from __future__ import annotations

import pytest
import torch

from conftest import actor_critic_kwargs, coverage_specs, ppo_config
from wsa_lab.envs import CoverageEnv
from wsa_lab.errors import ConfigError
from wsa_lab.models import build_actor_critic
from wsa_lab.rl import PPO, compute_gae


def test_gae_matches_hand_computation():
    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    values = torch.full((3, 1), 0.5)
    dones = torch.tensor([[0.0], [0.0], [1.0]])  # a new episode starts at t=2
    adv, ret = compute_gae(rewards, values, dones, torch.tensor([2.0]), torch.tensor([0.0]), gamma=0.9, lam=0.8)
    # t=2: 3 + 0.9*2 - 0.5 = 4.3; t=1: episode ends -> 2 - 0.5 = 1.5; t=0: 0.95 + 0.9*0.8*1.5 = 2.03
    torch.testing.assert_close(adv, torch.tensor([[2.03], [1.5], [4.3]]))
    torch.testing.assert_close(ret, adv + values)


def small_agent():
    torch.manual_seed(0)
    ptms = [{"name": "g", "model_type": "graph_cnn", "weights": None, "freeze_backbone": False}]
    return build_actor_critic(*coverage_specs(image_size=16), **actor_critic_kwargs(wsa={"enabled": True, "pretrained_models": ptms}))


@pytest.mark.parametrize("max_episode_steps", [None, 2])
def test_truncated_episodes_bootstrap_the_value(max_episode_steps):
    env = CoverageEnv(num_envs=4, num_nodes=20, num_sites=5, knn_k=4, image_size=16, max_episode_steps=max_episode_steps)
    agent = small_agent()
    final = agent.critic[-1]
    torch.nn.init.zeros_(final.weight)
    torch.nn.init.constant_(final.bias, 5.0)  # V(s) = 5 everywhere
    ppo = PPO(agent, env, ppo_config(total_timesteps=24, num_envs=4, num_steps=6, num_minibatches=2))
    ppo.collect_rollout()
    bootstrapped = ppo.rewards > 4.0  # env rewards are <= 1; 0.99 * 5 only comes from bootstrapping
    if max_episode_steps is None:
        assert not bootstrapped.any()  # K steps end an episode by termination: nothing to bootstrap
    else:
        # truncation after 2 steps: steps 1, 3, 5 of every env end a truncated episode
        assert bootstrapped[[1, 3, 5]].all() and not bootstrapped[[0, 2, 4]].any()


def test_one_update_changes_trainable_weights_only():
    env = CoverageEnv(num_envs=4, num_nodes=20, num_sites=3, knn_k=4, image_size=16)
    agent = small_agent()
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    ppo = PPO(agent, env, ppo_config(total_timesteps=32, num_envs=4, num_steps=8, num_minibatches=2, update_epochs=2))
    metrics = ppo.iterate()
    assert ppo.global_step == 32 and ppo.iteration == 1
    for key in ("losses/value_loss", "losses/policy_loss", "losses/entropy", "losses/approx_kl", "losses/clipfrac",
                "charts/SPS", "charts/episodic_return", "wsa/attention_weights_0", "wsa/feature_norms_0"):
        assert key in metrics, key
    changed = [k for k, v in agent.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("head.") for k in changed) and any(k.startswith("critic.") for k in changed)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"learning_rate": -1.0}, "learning_rate must be > 0"),
        ({"num_envs": 2, "num_steps": 2, "num_minibatches": 8}, "exceeds the batch"),
        ({"total_timesteps": 10}, "less than one rollout"),
        ({"gamma": 1.5}, "gamma must be >= 0.0 and <= 1.0"),
    ],
)
def test_ppo_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ppo_config(**kwargs)


def test_non_finite_loss_stops_training_with_the_step_and_quantity():
    from wsa_lab.errors import TrainingDivergedError

    env = CoverageEnv(num_envs=4, num_nodes=20, num_sites=3, knn_k=4, image_size=16)
    agent = small_agent()
    ppo = PPO(agent, env, ppo_config(total_timesteps=32, num_envs=4, num_steps=8, num_minibatches=2))
    with torch.no_grad():
        agent.critic[-1].bias.fill_(float("nan"))  # the value (and so the loss) becomes NaN
    with pytest.raises(TrainingDivergedError, match=r"non-finite loss at global_step 32 \(iteration 1"):
        ppo.iterate()


def test_a_nan_policy_output_stops_before_the_env_gets_the_action():
    """A diverged actor (finite weights, NaN output) stops with one TrainingDivergedError, not torch's
    `Normal(loc=nan)` ValueError, and the env never receives the NaN action."""
    from wsa_lab.errors import TrainingDivergedError

    env = CoverageEnv(num_envs=4, num_nodes=20, num_sites=3, knn_k=4, image_size=16)
    agent = small_agent()
    ppo = PPO(agent, env, ppo_config(total_timesteps=32, num_envs=4, num_steps=8, num_minibatches=2))
    with torch.no_grad():
        agent.head.continuous_mean[-1].bias.fill_(float("nan"))
    steps = []
    env.step = lambda *a: steps.append(a)  # type: ignore[method-assign]
    with pytest.raises(TrainingDivergedError, match=r"non-finite policy output at global_step 4 \(iteration 1"):
        ppo.iterate()
    assert steps == []


def test_non_finite_parameter_is_named():
    from wsa_lab.errors import TrainingDivergedError

    env = CoverageEnv(num_envs=4, num_nodes=20, num_sites=3, knn_k=4, image_size=16)
    ppo = PPO(small_agent(), env, ppo_config(total_timesteps=32, num_envs=4, num_steps=8, num_minibatches=2))
    with torch.no_grad():
        ppo.agent.head.log_std.fill_(float("inf"))
    with pytest.raises(TrainingDivergedError, match="non-finite"):
        ppo._check_parameters()


def test_divergence_is_one_line_and_its_advice_works(tmp_path, monkeypatch):
    """algo.learning_rate=1e6: one TrainingDivergedError (never torch's `Normal(loc=nan)` ValueError from the next
    forward), saying whether a checkpoint is kept; resuming with a lower learning rate is accepted and recorded."""
    import json

    from conftest import compose_config
    from test_resume import crash_after_logging
    from test_train import TINY
    from wsa_lab.errors import TrainingDivergedError
    from wsa_lab.train import train

    run = tmp_path / "run"
    base = [*TINY, "ptm=[graph_cnn]", "algo.total_timesteps=128"]
    with pytest.raises(TrainingDivergedError) as info:
        train(compose_config([*base, "algo.learning_rate=1e6"], tmp_path / "fresh"))
    assert "no checkpoint was written before it" in str(info.value) and "\n" not in str(info.value)
    with monkeypatch.context() as m:  # a run that stopped after its checkpoint at step 64
        crash_after_logging(m, at_step=96)
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(compose_config([*base, "checkpoint.interval=2"], run))
    with pytest.raises(ConfigError, match="another config"):  # anything else that differs is still refused
        train(compose_config([*base, "checkpoint.interval=2", "algo.gamma=0.5"], run))
    lower = ["checkpoint.interval=2", "algo.learning_rate=1e-4", "algo.max_grad_norm=0.1"]
    summary = train(compose_config([*base, *lower], run))
    assert summary["status"] == "completed" and summary["resumed_from_steps"] == [64]
    default = ppo_config()  # conf/algo/ppo.yaml's values, the run's before the resume
    assert summary["resume_changes"] == [f"algo.learning_rate: {default.learning_rate} -> 0.0001",
                                         f"algo.max_grad_norm: {default.max_grad_norm} -> 0.1"]
    assert json.loads((run / "summary.json").read_text())["resume_changes"] == summary["resume_changes"]
