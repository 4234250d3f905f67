"""Fuzz-style: random override sets (valid and invalid) either train or fail with a clear one-line error."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from conftest import compose_config
from test_train import TINY
from wsa_lab.errors import WsaLabError
from wsa_lab.train import train

# (override, is_valid): a case draws three valid overrides and, half the time, swaps one for an invalid one.
POOL = [
    ("env.num_nodes=24", True), ("env.num_nodes=3", False), ("env.num_sites=2", True), ("env.num_sites=99", False),
    ("env.knn_k=2", True), ("env.knn_k=0", False), ("env.r_min=0.3", True), ("env.r_max=0.01", False),
    ("env.cost=0.5", True), ("env.cost=-1", False), ("env.image_size=12", True), ("env.image_size=4", False),
    ("env.max_episode_steps=2", True), ("env.max_episode_steps=0", False), ("env.num_nodez=5", False),
    ("algo.learning_rate=0.001", True), ("algo.learning_rate=0", False), ("algo.num_minibatches=1", True),
    ("algo.num_minibatches=64", False), ("algo.update_epochs=2", True), ("algo.update_epochs=0", False),
    ("algo.gamma=0.9", True), ("algo.gamma=2", False), ("algo.target_kl=0.01", True), ("algo.num_envs=abc", False),
    ("actor_critic.wsa.fusion=mean", True), ("actor_critic.wsa.fusion=concat", True),
    ("actor_critic.wsa.fusion=max", False), ("actor_critic.hidden_dim=16", True), ("actor_critic.hiddn_dim=16", False),
    ("actor_critic.wsa.attention.dropout=0.0", True), ("seed=3", True), ("seed=-2", False), ("device=cpu", True),
    ("device=tpu", False), ("evaluation.interval=2", True), ("evaluation.intervall=2", False),
    ("ptm_count=1", True), ("ptm_count=9", False), ("ptm=[graph_cnn,graph_cnn_missing]", False),
    ("+unknown_root=1", False),
]
EXPECTED = (WsaLabError, OmegaConfBaseException, HydraException)


def _alarm(signum, frame):  # pragma: no cover - only on a hang
    raise TimeoutError("run hung")


@pytest.mark.parametrize("case", range(16))
def test_random_overrides_train_or_fail_clearly(case: int, tmp_path: Path):
    rng = random.Random(case)
    draws = rng.sample([p for p in POOL if p[1]], 3)
    if case % 2:
        draws[rng.randrange(3)] = rng.choice([p for p in POOL if not p[1]])
    # graph-only PTMs keep the cases fast and let small images be valid
    overrides = [*TINY, "ptm=[graph_cnn]", *(o for o, _ in draws)]
    valid = all(ok for _, ok in draws)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(120)
    try:
        cfg = compose_config(overrides, tmp_path / "run")
        summary = train(cfg)
    except EXPECTED as exc:
        assert not valid, f"valid overrides {draws} failed: {exc}"
        assert str(exc).strip(), "error without a message"
        if isinstance(exc, WsaLabError):
            assert "\n" not in str(exc), f"multi-line error: {exc}"
        return
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert valid, f"invalid overrides {draws} were accepted"
    assert summary["status"] == "completed"
