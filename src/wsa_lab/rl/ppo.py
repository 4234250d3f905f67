"""PPO for the hybrid (node, continuous) action, after CleanRL's `ppo.py`: rollout, GAE, clipped update.

One `PPO.iterate()` = one rollout of `num_steps` x `num_envs` steps + `update_epochs` epochs of
minibatch updates. Metrics use CleanRL's names and are keyed by `global_step` (env steps). The env is any
:class:`~wsa_lab.contract.VectorGraphEnv`; observations are :class:`~wsa_lab.contract.GraphBatch`es (graphs of
any sizes), stored one per rollout step and joined for the update. The agent is driven through CleanRL's
`get_value` / `get_action_and_value`, plus `rollout_step` in the rollout: the agent records what it needs of the
rollout there (the frozen-feature cache the update reads back, and the WSA diagnostics).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from wsa_lab.contract import GraphBatch, VectorGraphEnv, env_label
from wsa_lab.errors import EnvError, TrainingDivergedError
from wsa_lab.models import ActorCritic, HybridAction
from wsa_lab.config.schema import PPOConfig


def compute_gae(
    rewards: Tensor, values: Tensor, dones: Tensor, next_value: Tensor, next_done: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation over a (T, B) rollout; `dones[t]` = episode ended before step t."""
    num_steps = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    for t in reversed(range(num_steps)):
        if t == num_steps - 1:
            not_done, next_values = 1.0 - next_done, next_value
        else:
            not_done, next_values = 1.0 - dones[t + 1], values[t + 1]
        delta = rewards[t] + gamma * next_values * not_done - values[t]
        last = delta + gamma * lam * not_done * last
        advantages[t] = last
    return advantages, advantages + values


class PPO:
    """Owns the optimiser, the rollout buffers and the env's running state."""

    def __init__(self, agent: ActorCritic, env: VectorGraphEnv, cfg: PPOConfig, reset_seed: int | None = None) -> None:
        self.agent, self.env, self.cfg = agent, env, cfg
        self.device = env.device
        # parameter groups: the attention's own learning rate (actor_critic.wsa.attention.lr_scale)
        self.optimizer = torch.optim.Adam(agent.param_groups(cfg.learning_rate), lr=cfg.learning_rate, eps=1e-5)
        self.global_step = 0
        self.iteration = 0
        self.next_obs: GraphBatch = env.reset(seed=reset_seed)
        self.next_done = torch.zeros(env.num_envs, device=self.device)
        T, B, d = cfg.num_steps, env.num_envs, agent.action_spec.continuous_dim
        self.obs: list[GraphBatch | None] = [None] * T  # one batch of B graphs per rollout step
        self.nodes = torch.zeros(T, B, dtype=torch.long, device=self.device)
        self.continuous = torch.zeros(T, B, d, device=self.device)
        self.logprobs = torch.zeros(T, B, device=self.device)
        self.rewards = torch.zeros(T, B, device=self.device)
        self.dones = torch.zeros(T, B, device=self.device)
        self.values = torch.zeros(T, B, device=self.device)
        self.start_time = time.time()
        self.start_step = 0

    # ------------------------------------------------------------------ rollout
    @torch.no_grad()
    def collect_rollout(self) -> dict[str, float]:
        """Step the env `num_steps` times with the current policy; fill the buffers."""
        # Act in train mode, like the update: trainable BatchNorm then normalises with batch statistics in
        # both, so the log-probabilities of the rollout match those recomputed in the first epoch.
        self.agent.train()
        episode_returns: list[float] = []
        episode_lengths: list[float] = []
        spec = self.agent.action_spec
        for step in range(self.cfg.num_steps):
            self.global_step += self.env.num_envs
            self.obs[step] = self.next_obs
            self.dones[step] = self.next_done
            out = self.agent.rollout_step(self.next_obs, step)  # frozen PTMs run here, once per env step
            self.values[step] = out.value
            self.nodes[step], self.continuous[step] = out.action.node, out.action.continuous
            self.logprobs[step] = out.log_prob
            if not bool(torch.isfinite(out.log_prob).all()):  # a NaN action must not reach the env
                self._diverged("policy output", log_prob=out.log_prob.sum().item())
            try:
                obs, reward, terminated, truncated, info = self.env.step(
                    out.action.node, spec.policy_to_env(out.action.continuous)
                )
            except EnvError as exc:
                raise EnvError(f"{exc} (training global_step {self.global_step})") from exc
            if not bool(torch.isfinite(reward).all()):
                bad = int((~torch.isfinite(reward)).nonzero()[0])
                raise EnvError(
                    f"env {env_label(self.env)} returned reward {reward[bad].item()} (env {bad}) at global_step "
                    f"{self.global_step}; check the env's settings"
                )
            if truncated.any():  # bootstrap the value of truncated (not terminated) episodes
                cut = truncated.nonzero().squeeze(1)
                final_value = self.agent.get_value(info["final_obs"].select(cut))
                reward = reward.index_add(0, cut, self.cfg.gamma * final_value)
            done = terminated | truncated
            self.rewards[step] = reward
            self.next_obs, self.next_done = obs, done.float()
            if done.any():
                episode_returns += info["episode_return"][done].tolist()
                episode_lengths += info["episode_length"][done].float().tolist()
        stats: dict[str, float] = {}
        if episode_returns:
            stats["charts/episodic_return"] = float(np.mean(episode_returns))
            stats["charts/episodic_length"] = float(np.mean(episode_lengths))
        stats.update(self.agent.rollout.metrics())
        return stats

    # ------------------------------------------------------------------ update
    def update(self) -> dict[str, float]:
        """GAE + `update_epochs` epochs of clipped-objective minibatch updates."""
        cfg = self.cfg
        with torch.no_grad():
            next_value = self.agent.get_value(self.next_obs)
        advantages, returns = compute_gae(
            self.rewards, self.values, self.dones, next_value, self.next_done, cfg.gamma, cfg.gae_lambda
        )
        b_obs = GraphBatch.cat(self.obs)  # step-major: sample t * B + b, as reshape(-1) of the (T, B) buffers
        b_nodes, b_continuous = self.nodes.reshape(-1), self.continuous.flatten(0, 1)
        b_logprobs, b_adv = self.logprobs.reshape(-1), advantages.reshape(-1)
        b_returns, b_values = returns.reshape(-1), self.values.reshape(-1)

        self.agent.train()
        clipfracs: list[float] = []
        for _epoch in range(cfg.update_epochs):
            perm = torch.randperm(cfg.batch_size, device=self.device)
            for start in range(0, cfg.batch_size, cfg.minibatch_size):
                mb = perm[start : start + cfg.minibatch_size]
                out = self.agent.get_action_and_value(
                    b_obs.select(mb), HybridAction(b_nodes[mb], b_continuous[mb]),
                    cached_features=self.agent.rollout.cached_features(mb),
                )
                logratio = out.log_prob - b_logprobs[mb]
                ratio = logratio.exp()
                with torch.no_grad():
                    old_approx_kl = (-logratio).mean()
                    approx_kl = ((ratio - 1) - logratio).mean()
                    clipfracs.append(((ratio - 1.0).abs() > cfg.clip_coef).float().mean().item())
                mb_adv = b_adv[mb]
                if cfg.norm_adv and len(mb) > 1:
                    mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                pg_loss = torch.max(
                    -mb_adv * ratio, -mb_adv * torch.clamp(ratio, 1 - cfg.clip_coef, 1 + cfg.clip_coef)
                ).mean()
                if cfg.clip_vloss:
                    v_unclipped = (out.value - b_returns[mb]) ** 2
                    v_clipped = b_values[mb] + torch.clamp(out.value - b_values[mb], -cfg.clip_coef, cfg.clip_coef)
                    v_loss = 0.5 * torch.max(v_unclipped, (v_clipped - b_returns[mb]) ** 2).mean()
                else:
                    v_loss = 0.5 * ((out.value - b_returns[mb]) ** 2).mean()
                entropy_loss = out.entropy.mean()
                loss = pg_loss - cfg.ent_coef * entropy_loss + v_loss * cfg.vf_coef

                self.optimizer.zero_grad(set_to_none=True)
                if not torch.isfinite(loss):
                    self._diverged("loss", pg_loss=pg_loss.item(), v_loss=v_loss.item(), entropy=entropy_loss.item())
                loss.backward()
                grad_norm = nn.utils.clip_grad_norm_(self.agent.parameters(), cfg.max_grad_norm)
                if not torch.isfinite(grad_norm):
                    self._diverged("gradient norm", grad_norm=grad_norm.item())
                self.optimizer.step()
                self._check_parameters()  # before the next minibatch's forward reads a non-finite weight
            if cfg.target_kl is not None and approx_kl.item() > cfg.target_kl:
                break

        y_pred, y_true = b_values.cpu().numpy(), b_returns.cpu().numpy()
        var_y = np.var(y_true)
        explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y
        return {
            "losses/value_loss": v_loss.item(),
            "losses/policy_loss": pg_loss.item(),
            "losses/entropy": entropy_loss.item(),
            "losses/old_approx_kl": old_approx_kl.item(),
            "losses/approx_kl": approx_kl.item(),
            "losses/clipfrac": float(np.mean(clipfracs)),
            "losses/explained_variance": float(explained_var),
        }

    # ------------------------------------------------------------------ one iteration
    def _diverged(self, quantity: str, **values: float) -> None:
        """Stop before a non-finite step is applied or checkpointed (the last good checkpoint stays)."""
        detail = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        raise TrainingDivergedError(
            f"non-finite {quantity} at global_step {self.global_step} (iteration {self.iteration + 1}; {detail}); "
            "lower algo.learning_rate or algo.max_grad_norm (a resume may change them)"
        )

    def _check_parameters(self) -> None:
        params = list(self.agent.parameters())
        # one synchronising check per step (a non-finite entry makes its tensor's sum non-finite); names on failure
        if params and bool(torch.isfinite(torch.stack([p.detach().sum() for p in params])).all()):
            return
        for name, param in self.agent.named_parameters():
            if not torch.isfinite(param).all():
                self._diverged(f"parameter {name}")

    def iterate(self) -> dict[str, float]:
        """Anneal the learning rate, collect one rollout, update; return this iteration's metrics."""
        cfg = self.cfg
        if cfg.anneal_lr:
            frac = 1.0 - self.iteration / cfg.num_iterations
            for group in self.optimizer.param_groups:
                group["lr"] = frac * group["base_lr"]
        # equal-weight warm-up: attention held at exactly 1/P for the first uniform_warmup_steps env steps
        self.agent.hold_uniform(self.global_step < self.agent.uniform_warmup_steps)
        metrics = self.collect_rollout()
        metrics.update(self.update())
        self.iteration += 1
        metrics["charts/learning_rate"] = self.optimizer.param_groups[0]["lr"]
        elapsed = max(time.time() - self.start_time, 1e-9)
        metrics["charts/SPS"] = (self.global_step - self.start_step) / elapsed
        return metrics

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Everything the next `iterate()` reads: weights, optimiser, counters and the pending observation.

        The env's own state (episodes in flight) is `env.state_dict()`; the global RNGs are the caller's.
        """
        return {
            "agent": self.agent.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "global_step": self.global_step,
            "iteration": self.iteration,
            "next_obs": self.next_obs.state_dict(),
            "next_done": self.next_done,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.agent.load_state_dict(state["agent"])
        # the learning rates are this run's (a resume after divergence may lower algo.learning_rate); the rest of the
        # optimiser's state (moments, step counts) is the checkpoint's
        rates = [(group["lr"], group["base_lr"]) for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, (lr, base_lr) in zip(self.optimizer.param_groups, rates):
            group["lr"], group["base_lr"] = lr, base_lr
        self.global_step = int(state["global_step"])
        self.iteration = int(state["iteration"])
        if "next_obs" in state:  # else keep the observation of the env's current state
            self.next_obs = GraphBatch.from_state_dict(state["next_obs"], self.device)
            self.next_done = state["next_done"].to(self.device)
        self.start_step = self.global_step
        self.start_time = time.time()
