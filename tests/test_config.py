"""Hydra composition: every experiment composes and instantiates; bad configs are one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf, open_dict

from conftest import compose_config, experiment_names
from wsa_lab.config.validate import validate
from wsa_lab.errors import ConfigError
from wsa_lab.build import make_agent, make_env

SUMMARY_PHASES = {  # the WSA design summary's twelve ablation arms (phases 1-4)
    "phase1_baseline", "phase1_wsa3", "phase2_all_imagenet", "phase2_all_random", "phase2_mixed",
    "phase3_same_arch", "phase3_mixed_resnets", "phase3_hybrid", "phase4_wsa2", "phase4_wsa3", "phase4_wsa4",
    "phase4_count",
}
EXPECTED_EXPERIMENTS = SUMMARY_PHASES | {  # phase 5: fusion variants; pre-trained vs random PTMs; phase 6: a grown pool
    "phase5_fusion", "phase5_fusion_mean", "phase5_fusion_concat", "phase5_pretrained", "phase5_random", "phase5_imagenet",
    "phase6_grow",
}
#: experiments that start from a trained run: composed with an init_from (it is read only when training starts)
NEEDS_INIT_FROM = {"phase6_grow"}

# The WSA design summary's "Recommended Configuration", as written there.
SEED_YAML = """
actor_critic:
  wsa:
    enabled: true
    pretrained_models:
      - name: resnet18_imagenet
        model_type: resnet18
        weights: imagenet
        freeze_backbone: true  # Freeze pre-trained

      - name: graph_cnn
        model_type: graph_cnn
        weights: null
        freeze_backbone: false  # Train from scratch

      - name: resnet18_random
        model_type: resnet18
        weights: random
        freeze_backbone: false  # Train from scratch
    attention:
      hidden_dim: 128
      dropout: 0.1
    logging:
      log_attention_weights: true
      log_features: true
"""


def build(cfg):
    settings = validate(cfg)
    env = make_env(cfg, num_envs=2, seed=cfg.seed)
    agent = make_agent(cfg, env)
    return settings, env, agent


def test_all_seed_phases_exist():
    assert set(experiment_names()) == EXPECTED_EXPERIMENTS


@pytest.mark.parametrize("experiment", sorted(EXPECTED_EXPERIMENTS))
def test_every_experiment_composes_instantiates_and_acts(experiment: str, tmp_path: Path, pretrained_dir: Path):
    init_from = [f"init_from={tmp_path}"] if experiment in NEEDS_INIT_FROM else []
    cfg = compose_config([f"experiment={experiment}", f"paths.pretrained_dir={pretrained_dir}", *init_from], tmp_path)
    named = experiment if experiment in SUMMARY_PHASES | NEEDS_INIT_FROM else "phase5_"
    assert cfg.name.startswith(named) and cfg.phase == experiment[:6]
    _, env, agent = build(cfg)
    with torch.no_grad():
        out = agent.get_action_and_value(env.reset())
    assert out.action.node.shape == (2,)
    if experiment == "phase1_baseline":
        assert not agent.uses_wsa
    else:
        expected = [p["name"] for p in cfg.actor_critic.wsa.pretrained_models]
        assert agent.ptm_names == expected and len(expected) >= 2
        if cfg.actor_critic.wsa.fusion == "concat":  # no weights to report
            assert out.features.fusion.weights is None
        else:
            assert out.features.fusion.weights.shape == (2, len(expected))


def test_phase_arms_differ_in_what_they_claim(tmp_path: Path):
    def ptms(experiment):
        cfg = compose_config([f"experiment={experiment}"], tmp_path)
        return [(p["model_type"], p["weights"], p["freeze_backbone"]) for p in cfg.actor_critic.wsa.pretrained_models]

    assert ptms("phase3_hybrid") == [("resnet18", "imagenet", True), ("graph_cnn", None, False), ("resnet18", "random", False)]
    assert ptms("phase1_wsa3") == ptms("phase3_hybrid") == ptms("phase4_wsa3")
    assert {w for _, w, _ in ptms("phase2_all_imagenet")} == {"imagenet"}
    assert {w for _, w, _ in ptms("phase2_all_random")} == {"random"}
    # phase 2 holds architecture and freezing fixed; only the weights change
    assert [(m, f) for m, _, f in ptms("phase2_all_random")] == [(m, f) for m, _, f in ptms("phase2_all_imagenet")]
    assert {m for m, _, _ in ptms("phase3_same_arch")} == {"resnet18"}
    assert [len(ptms(f"phase4_wsa{k}")) for k in (2, 3, 4)] == [2, 3, 4]


@pytest.mark.parametrize("count", [2, 3, 4])
def test_ptm_count_keeps_the_first_k_of_the_pool(count: int, tmp_path: Path):
    cfg = compose_config(["experiment=phase4_count", f"ptm_count={count}"], tmp_path)
    names = [p["name"] for p in cfg.actor_critic.wsa.pretrained_models]
    assert names == ["resnet18_imagenet", "graph_cnn", "resnet18_random", "resnet34_imagenet"][:count]
    assert cfg.name == f"phase4_count_k{count}"


def test_ptm_set_from_the_cli(tmp_path: Path):
    cfg = compose_config(["ptm=[graph_cnn,resnet18_random]"], tmp_path)
    assert [p["name"] for p in cfg.actor_critic.wsa.pretrained_models] == ["graph_cnn", "resnet18_random"]


def test_a_ptm_whose_weights_are_overridden_carries_them_in_its_name(tmp_path: Path):
    """`ptm.resnet18_imagenet.weights=random` (the README's way to train offline) must not be reported as ImageNet."""
    from wsa_lab.tracking.identity import run_identity

    cfg = compose_config(["experiment=phase3_hybrid", "ptm.resnet18_imagenet.weights=random"], tmp_path)
    names = [p["name"] for p in cfg.actor_critic.wsa.pretrained_models]
    assert names == ["resnet18_imagenet@random", "graph_cnn", "resnet18_random"]
    assert "resnet18_imagenet@random" in run_identity(cfg).tags  # W&B tags; summary.json and the report read the same
    plain = compose_config(["experiment=phase3_hybrid"], tmp_path / "plain")
    assert [p["name"] for p in plain.actor_critic.wsa.pretrained_models][0] == "resnet18_imagenet"


def test_seed_yaml_block_is_accepted_as_written(tmp_path: Path):
    cfg = compose_config(["ptm=[]"], tmp_path)
    cfg = OmegaConf.merge(cfg, OmegaConf.create(SEED_YAML))
    _, _, agent = build(cfg)
    assert agent.ptm_names == ["resnet18_imagenet", "graph_cnn", "resnet18_random"]
    frozen = agent.actor.extractor.ptms[0]
    assert frozen.frozen and not any(p.requires_grad for p in frozen.backbone.parameters())


def test_seed_toggle_off_gives_the_standard_actor(tmp_path: Path):
    _, _, agent = build(compose_config(["actor_critic.wsa.enabled=false"], tmp_path))
    assert not agent.uses_wsa


def invalid(tmp_path: Path, overrides: list[str], patch: dict | None = None) -> str:
    cfg = compose_config(overrides, tmp_path)
    if patch:
        OmegaConf.set_struct(cfg, False)
        cfg = OmegaConf.merge(cfg, OmegaConf.create(patch))
    with pytest.raises(ConfigError) as info:
        build(cfg)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_typo_in_a_yaml_file_is_caught(tmp_path: Path):
    assert "did you mean 'learning_rate'" in invalid(tmp_path, [], {"algo": {"learning_rte": 0.1}})
    assert "did you mean 'num_nodes'" in invalid(tmp_path, [], {"env": {"num_nodez": 10}})
    assert "did you mean 'hidden_dim'" in invalid(tmp_path, [], {"actor_critic": {"hiden_dim": 3}})
    assert "config: unknown key 'sed' (did you mean 'seed'?)" in invalid(tmp_path, [], {"sed": 3})
    assert "did you mean 'interval'" in invalid(tmp_path, [], {"evaluation": {"intervall": 3}})


def test_typo_on_the_cli_is_caught_by_hydra(tmp_path: Path):
    with pytest.raises(ConfigCompositionException, match="learning_rte"):
        compose_config(["algo.learning_rte=0.1"], tmp_path)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["ptm_count=5", "experiment=phase4_count"], "between 1 and the pool size 4"),
        (["env.num_sites=60"], "num_sites"),
        (["env.r_min=0.5", "env.r_max=0.1"], "r_min"),
        (["algo.learning_rate=0"], "learning_rate must be > 0"),
        (["algo.num_minibatches=1000"], "exceeds the batch"),
        (["algo.num_envs=lots"], "expected int"),
        (["device=cuda:7"] if not torch.cuda.is_available() else ["device=nonsense"], "device"),
        (["seed=-1"], "seed must be an integer in [0, 2**32 - 1]"),
        (["deterministic=maybe"], "deterministic must be true or false"),
        (["actor_critic.wsa.fusion=sum"], "fusion must be one of"),
        (["ptm=[]"], "no PTMs"),
        (["env.image_size=16"], "env.image_size=16) is too small for PTM 'resnet18_imagenet' (resnet18)"),
        (["experiment=phase1_baseline", "env.image_size=16"], "raster_size=16 (default: env.image_size) is too small"),
        (["actor_critic.standard.weights=imagnet", "experiment=phase1_baseline"], "weights must be one of"),
        (["~actor_critic.hidden_dim"], "actor_critic: missing required key 'hidden_dim'"),
    ],
)
def test_invalid_values_are_one_line_errors(overrides: list[str], match: str, tmp_path: Path):
    assert match in invalid(tmp_path, overrides)


def test_deterministic_kernels_only_touch_cuda_runs():
    from wsa_lab.seeding import deterministic_kernels

    before = torch.are_deterministic_algorithms_enabled()
    deterministic_kernels(torch.device("cpu"), True)  # CPU kernels are deterministic already: nothing to switch
    assert torch.are_deterministic_algorithms_enabled() == before


def test_graph_only_runs_may_use_small_images(tmp_path: Path):
    settings, env, agent = build(compose_config(["ptm=[graph_cnn]", "env.image_size=16"], tmp_path))
    assert env.image_size == 16 and agent.ptm_names == ["graph_cnn"]


def test_unwritable_output_folder_is_a_clear_error(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cfg = compose_config([], blocker / "run")
    with pytest.raises(ConfigError, match="cannot create or write the output folder .*is not a folder"):
        validate(cfg)


def test_explicit_list_and_ptm_group_together_is_an_error(tmp_path: Path):
    cfg = compose_config([], tmp_path)  # the default ptm pool is set ...
    with open_dict(cfg):
        cfg.actor_critic.wsa.pretrained_models = [{"name": "g", "model_type": "graph_cnn"}]  # ... and a list too
    with pytest.raises(ConfigError, match="use one"):
        build(cfg)


@pytest.mark.parametrize("file", ["env/coverage.yaml", "env/gym.yaml"])
def test_an_env_configs_values_are_its_classes_defaults(file: str):
    """An env class's constructor defaults are its config file's values (CoverageEnv reads them from the file): a
    default written again in code would drift apart from the documented one."""
    import inspect

    from hydra.utils import get_object

    from wsa_lab.conf_files import config_dir, yaml_defaults

    target = get_object(OmegaConf.load(config_dir() / file)._target_)
    params = inspect.signature(target).parameters
    for key, value in yaml_defaults(file).items():
        if value == "???":  # a required key (env.id)
            assert params[key].default is inspect.Parameter.empty
        else:
            default = params[key].default
            assert ({} if default is None and value == {} else default) == value, key  # kwargs: None means {}


def test_envs_built_without_hydra_take_the_config_files_values():
    """`CoverageEnv(num_envs=...)` and `gymnasium.make("wsa_lab/Coverage-v0")` (no Hydra) get conf/env/coverage.yaml's
    values, the one place they are written."""
    import gymnasium

    from wsa_lab.conf_files import yaml_defaults
    from wsa_lab.envs import GYM_ENV_ID, CoverageEnv

    values = yaml_defaults("env/coverage.yaml")
    assert values["num_nodes"] == 50 and values["knn_k"] == 8  # the file's values, unchanged by this refactor
    gym_env = gymnasium.make(GYM_ENV_ID)
    try:
        for env in (CoverageEnv(num_envs=1), gym_env.unwrapped.env):
            assert {key: getattr(env, key) for key in values} == values
        assert gym_env.observation_space["positions"].shape == (values["num_nodes"], 2)
    finally:
        gym_env.close()


def test_secrets_are_recognised_by_name_by_value_and_in_the_jobs_environment():
    from omegaconf import OmegaConf

    from wsa_lab.run.startup import secret_keys

    cfg = OmegaConf.create({
        "logger": {"wandb": {"api_key": "x", "key": "y"}},
        "env": {"kwargs": {"access_token": "a", "sim_apikey": "b", "max_tokens": 5, "db_password": "c",
                           "note": "ghp_" + "a" * 36, "wb": "local-" + "0" * 40, "aws": "AKIA" + "A" * 16,
                           "num_nodes": 50, "weights": "IMAGENET1K_V1"}},
        "hydra": {"job": {"env_set": {"WANDB_API_KEY": "z", "OMP_NUM_THREADS": "1"}}, "run": {"dir": "runs/x"}},
    })
    assert sorted(secret_keys(cfg)) == sorted([
        "logger.wandb.api_key", "logger.wandb.key", "env.kwargs.access_token", "env.kwargs.sim_apikey",
        "env.kwargs.db_password", "env.kwargs.note", "env.kwargs.wb", "env.kwargs.aws", "hydra.job.env_set.WANDB_API_KEY",
    ])
