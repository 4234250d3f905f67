"""Shared fixtures. Tests make their own data: ImageNet weight files are self-made state dicts placed
where torchvision's cache would hold them. Their SHA-256 does not match the prefix in their names, so every test
runs with the stand-in opt-out WSA_LAB_ALLOW_UNVERIFIED_WEIGHTS=1 (tests/test_weights.py checks both sides)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from wsa_lab.conf_files import config_dir
from wsa_lab.weights.checks import ALLOW_UNVERIFIED_ENV
from wsa_lab.weights.files import OFFLINE_ENV, weights_file_name
from wsa_lab.weights.names import RESNETS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def fake_torch_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TORCH_HOME whose hub cache holds a state dict for every ResNet's ImageNet file name.

    The tensors are a fixed-seed random init (not ImageNet): tests check loading, not accuracy.
    """
    home = tmp_path_factory.mktemp("torch_home")
    folder = home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    for model_type, entry in RESNETS.items():
        torch.manual_seed(123)
        torch.save(entry.builder(weights=None).state_dict(), folder / weights_file_name(model_type))
    return home


@pytest.fixture(autouse=True)
def _isolated_torch_home(fake_torch_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test sees the fake cache (and never the user's real one), may load its stand-in files, and never
    downloads a missing one (tests/test_weights.py serves files locally to test the download)."""
    monkeypatch.setenv("TORCH_HOME", str(fake_torch_home))
    monkeypatch.setenv(ALLOW_UNVERIFIED_ENV, "1")
    monkeypatch.setenv(OFFLINE_ENV, "1")
    # The coverage env's cached optima (wsa_lab.envs.coverage_optimum) go here, not to the user's ~/.cache.
    monkeypatch.setenv("WSA_LAB_OPTIMUM_CACHE", str(fake_torch_home.parent / "optimum_cache"))
    return fake_torch_home


@pytest.fixture(autouse=True)
def _offline_wandb(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """W&B never goes online from a test, whatever the developer's shell says, and keeps its files here."""
    home = tmp_path_factory.getbasetemp() / "wandb_home"
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(home / var.lower()))


def compose_config(overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose `conf/` like the CLI does (without running Hydra's app), with the run folder set."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("config", overrides=[*overrides, f"paths.output_dir={output_dir}"])


def experiment_names() -> list[str]:
    return sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))


def subprocess_env(torch_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["TORCH_HOME"] = str(torch_home)
    env["WANDB_MODE"] = "offline"
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def coverage_specs(num_nodes: int = 20, image_size: int = 32):
    """(ObservationSpec, ActionSpec) of the coverage env: what `build_actor_critic` is sized from."""
    from wsa_lab.contract import action_spec, observation_spec
    from wsa_lab.envs import coverage_spaces

    observation, action = coverage_spaces(num_nodes, image_size)
    return observation_spec(observation), action_spec(action)


@pytest.fixture(scope="session")
def pretrained_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`paths.pretrained_dir` holding stand-ins for the shipped env-pretrained PTMs (conf/ptm/coverage_*.yaml):
    their architectures' random init, saved the way `python -m wsa_lab.pretrain` saves them (tests/test_pretrain.py
    makes real ones)."""
    import dataclasses

    from omegaconf import OmegaConf

    from wsa_lab.models.ptm import PreTrainedModelWrapper, PTMSpec

    folder = tmp_path_factory.mktemp("pretrained")
    for file in sorted((REPO / "conf" / "ptm").glob("coverage_*.yaml")):
        (entry,) = OmegaConf.to_container(OmegaConf.load(file)).values()
        spec = dataclasses.replace(PTMSpec(**{**entry, "weights_path": None}), made_by=None)
        torch.manual_seed(0)
        node_dim = coverage_specs()[0].node_feature_dim  # the coverage env's node feature width
        wrapper = PreTrainedModelWrapper(spec, 128, node_dim, 64, None, 500, 3, 32, 1, "relu")
        torch.save(wrapper.backbone.state_dict(), folder / f"{entry['name']}.pt")
    return folder


def actor_critic_kwargs(**overrides) -> dict:
    """`build_actor_critic`'s keyword arguments: conf/actor_critic/default.yaml's values (where its defaults live)
    with the `attention` group's default, updated with `overrides` (nested dicts such as `wsa` are merged)."""
    from omegaconf import OmegaConf

    from wsa_lab.conf_files import yaml_defaults

    base = yaml_defaults("actor_critic/default.yaml")
    base.update(raster_size=32, weights_dir=None)  # interpolations in the file (env.image_size, paths.weights_dir)
    base["wsa"] = {**base["wsa"], "pretrained_models": [], "attention": yaml_defaults("attention/additive.yaml")}
    merged = OmegaConf.merge(OmegaConf.create(base), OmegaConf.create(overrides))
    return OmegaConf.to_container(merged)


def ppo_config(**overrides):
    """A PPOConfig: conf/algo/ppo.yaml's values (where its defaults live) updated with `overrides`."""
    from wsa_lab.conf_files import yaml_defaults
    from wsa_lab.config.schema import PPOConfig

    return PPOConfig(**{**yaml_defaults("algo/ppo.yaml"), **overrides})


def from_yaml(cls, relative: str, key: str | None = None, **overrides):
    """A config dataclass built from its conf/ file's values (where its defaults live), updated with `overrides`."""
    from wsa_lab.conf_files import yaml_defaults

    data = yaml_defaults(relative, key)
    data.pop("eval_env", None)
    return cls(**{**{k: v for k, v in data.items() if k in cls.__dataclass_fields__}, **overrides})
