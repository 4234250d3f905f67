"""A run or study folder is data, not code: wsa_lab calls only what its schema allows at each place of a config,
checked before anything is called (see wsa_lab.trust). Every hostile config here would run a command, write a file or
un-pickle one if it were called: the tests check the one-line refusal AND that nothing happened."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config
from test_evaluate import FAST
from test_train import TINY
from wsa_lab.build import make_agent, make_env
from wsa_lab.errors import ConfigError
from wsa_lab.evaluate import evaluate_runs
from wsa_lab.train import train
from wsa_lab.trust import TRUST_ENV, UntrustedConfigError


class Boom:
    """What an un-pickled file could run: reaching __reduce__ on load writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def unsafe_factory(**kwargs):  # noqa: ANN201 - no nn.Module return annotation: never called
    raise TypeError("called")


def safe_factory(in_channels: int = 3) -> torch.nn.Sequential:
    """A factory a researcher writes: its return annotation says it makes a module."""
    return torch.nn.Sequential(torch.nn.Conv2d(in_channels, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())


def tiny(tmp_path: Path, *overrides: str):
    return compose_config([*TINY, "ptm=[graph_cnn]", *overrides], tmp_path / "run")


def test_an_env_target_that_is_not_an_env_class_is_refused_before_it_is_called(tmp_path: Path):
    marker = tmp_path / "pwned"
    cfg = tiny(tmp_path)
    cfg.env = OmegaConf.create({"_target_": "os.system", "command": f"touch {marker}"})
    with pytest.raises(UntrustedConfigError, match=r"env._target_='os.system': must name a Gymnasium env class") as info:
        make_env(cfg, num_envs=1, seed=0)
    assert not marker.exists() and "\n" not in str(info.value) and TRUST_ENV in str(info.value)


def test_a_target_at_any_other_key_is_refused_and_nothing_is_unpickled(tmp_path: Path):
    marker, notes = tmp_path / "unpickled", tmp_path / "notes.pkl"
    notes.write_bytes(pickle.dumps(Boom(marker)))
    cfg = tiny(tmp_path)
    OmegaConf.set_struct(cfg, False)
    cfg.env.pwn = {"_target_": "torch.load", "f": str(notes), "weights_only": False}
    with pytest.raises(UntrustedConfigError, match=r"env.pwn._target_='torch.load': a config may name a callable only"):
        make_env(cfg, num_envs=1, seed=0)
    cfg.env.pop("pwn")
    cfg.actor_critic.extra = {"_target_": "wsa_lab.run.atomic.write_text_atomic", "path": str(marker), "text": "x"}
    env = make_env(cfg, num_envs=1, seed=0)
    with pytest.raises(UntrustedConfigError, match=r"actor_critic.extra._target_='wsa_lab.run.atomic.write_text_atomic'"):
        make_agent(cfg, env)
    cfg.actor_critic.pop("extra")
    cfg.actor_critic._target_ = "wsa_lab.run.atomic.write_text_atomic"
    with pytest.raises(UntrustedConfigError, match=r"actor_critic._target_=.*must be wsa_lab.models.build_actor_critic"):
        make_agent(cfg, env)
    assert not marker.exists()


@pytest.mark.parametrize("target", ["os.system", f"{__name__}.unsafe_factory", "subprocess.Popen"])
def test_a_ptm_target_must_be_a_module_class_or_a_factory_annotated_to_make_one(tmp_path: Path, target: str):
    ptm = {"name": "mine", "model_type": "custom", "target": target, "input": "image", "weights": None,
           "freeze_backbone": False, "kwargs": {"command": f"touch {tmp_path / 'pwned'}"}}
    cfg = tiny(tmp_path, "ptm=[]")
    cfg.actor_critic.wsa.pretrained_models = [ptm]
    env = make_env(cfg, num_envs=1, seed=0)
    with pytest.raises(UntrustedConfigError, match=rf"PTM 'mine' \(custom {target}\): target={target!r}"):
        make_agent(cfg, env)
    assert not (tmp_path / "pwned").exists()


def test_an_annotated_factory_is_accepted_and_the_opt_in_trusts_the_rest(tmp_path: Path, monkeypatch):
    ptm = {"name": "mine", "model_type": "custom", "target": f"{__name__}.safe_factory", "input": "image",
           "weights": None, "freeze_backbone": False, "out_dim": 4}
    cfg = tiny(tmp_path, "ptm=[]")
    cfg.actor_critic.wsa.pretrained_models = [ptm]
    env = make_env(cfg, num_envs=1, seed=0)
    assert make_agent(cfg, env).ptm_names == ["mine"]
    cfg.actor_critic.wsa.pretrained_models = [{**ptm, "target": f"{__name__}.unsafe_factory"}]
    monkeypatch.setenv(TRUST_ENV, "1")
    with pytest.raises(ConfigError, match="called"):  # trusted: wsa_lab calls it (and it raises, as written)
        make_agent(cfg, env)


def test_evaluate_refuses_a_run_folder_whose_config_was_made_hostile(tmp_path: Path):
    """The first hostile case of the review: a shared run folder's resolved_config.yaml names a command."""
    run = tmp_path / "shared_run"
    train(compose_config([*TINY, "ptm=[graph_cnn]"], run))
    marker = tmp_path / "pwned"
    config = OmegaConf.load(run / "resolved_config.yaml")
    config.actor_critic.wsa.pretrained_models[0].update(
        {"model_type": "custom", "target": "os.system", "input": "graph", "kwargs": {"command": f"touch {marker}"}}
    )
    (run / "resolved_config.yaml").write_text(OmegaConf.to_yaml(config))
    with pytest.raises(UntrustedConfigError, match=r"target='os.system'"):
        evaluate_runs([run], ["eval_env=in_distribution", *FAST, "device=cpu"])
    assert not marker.exists()


def test_the_shipped_envs_and_configs_pass(tmp_path: Path):
    not_env = [o for o in TINY if not o.startswith("env.")]
    for name, env in {"coverage": ["env=coverage"], "gym": ["env=gym", "env.id=wsa_lab.envs:wsa_lab/Coverage-v0"]}.items():
        cfg = compose_config([*not_env, "ptm=[graph_cnn,resnet18_random]", *env], tmp_path / name)
        agent = make_agent(cfg, make_env(cfg, num_envs=1, seed=0))
        assert agent.ptm_names == ["graph_cnn", "resnet18_random"]
