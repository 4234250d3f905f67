"""The PTM registry: torchvision models by name, PyG's model zoo, a researcher's own modules (examples/custom_ptm).

Each kind builds, runs forward + backward inside an agent, keeps the PTM contract (adapter, freeze_backbone,
frozen-feature cache, BatchNorm statistics fixed) and rebuilds from a checkpoint without its weight file.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from conftest import REPO, actor_critic_kwargs, coverage_specs, subprocess_env
from wsa_lab.conf_files import config_dir
from wsa_lab.envs import CoverageEnv
from wsa_lab.errors import ConfigError, WeightsNotFoundError
from wsa_lab.models import build_actor_critic
from wsa_lab.weights.checks import (
    ALLOW_UNVERIFIED_ENV,
    file_sha256,
    forget_weight_checks,
    loaded_weight_files,
    unverified_weight_files,
)
from wsa_lab.weights.files import weights_file_name
from wsa_lab.weights.load import weights_from_checkpoint

EXAMPLE = REPO / "examples" / "custom_ptm"
MNV3 = {"name": "mnv3", "model_type": "mobilenet_v3_small", "weights": "DEFAULT", "freeze_backbone": False}
TINY_CNN = {"name": "tiny_cnn", "model_type": "custom", "target": "my_encoders.TinyCNN", "input": "image",
            "out_dim": 64, "kwargs": {"width": 8, "features": 64}}
MEAN_GNN = {"name": "mean_gnn", "model_type": "custom", "target": "my_encoders.MeanMessageGNN", "input": "graph",
            "kwargs": {"hidden": 16}}


@pytest.fixture(scope="module")
def obs():
    return CoverageEnv(num_envs=2, num_nodes=20, num_sites=3, knn_k=4, seed=0).reset()


@pytest.fixture
def my_encoders(monkeypatch: pytest.MonkeyPatch):
    """The example's user package on the path (as PYTHONPATH=examples/custom_ptm would put it)."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    import my_encoders

    return my_encoders


@pytest.fixture(scope="module")
def mnv3_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TORCH_HOME holding a self-made mobilenet_v3_small state dict under its enum's file name."""
    from torchvision import models as tvm

    home = tmp_path_factory.mktemp("mnv3_home")
    folder = home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.manual_seed(7)
    torch.save(tvm.mobilenet_v3_small().state_dict(), folder / weights_file_name("mobilenet_v3_small", "DEFAULT"))
    return home


def agent_of(ptms, **kwargs):
    torch.manual_seed(0)
    sizes = dict(hidden_dim=16, context_dim=16, feature_dim=16, graph_cnn_hidden_dim=16, head_hidden_dim=16)
    wsa = {"pretrained_models": ptms, "attention": {"hidden_dim": 16, "dropout": 0.0}}
    return build_actor_critic(*coverage_specs(), **actor_critic_kwargs(**{**sizes, **kwargs}, wsa=wsa))


def step(agent, obs):
    """One policy evaluation and its backward pass."""
    out = agent.get_action_and_value(obs)
    (out.log_prob.sum() + out.value.sum()).backward()
    assert torch.isfinite(out.log_prob).all()
    return out


def backbone_grads(ptm) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in ptm.backbone.parameters())


def batchnorms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


# ---------------------------------------------------------------------------------------------- torchvision
def test_torchvision_model_by_name_loads_its_file_and_trains_with_bn_fixed(obs, mnv3_home, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_HOME", str(mnv3_home))
    forget_weight_checks()
    path = mnv3_home / "hub" / "checkpoints" / "mobilenet_v3_small-047dcff4.pth"
    with caplog.at_level(logging.WARNING, logger="wsa_lab.weights.checks"):
        agent = agent_of([MNV3, {"name": "graph_cnn", "model_type": "graph_cnn"}])
    ptm = agent.actor.extractor.ptms[0]
    state = torch.load(path, weights_only=True)
    torch.testing.assert_close(ptm.backbone.features[0][0].weight, state["features.0.0.weight"])
    # classifier = Linear(576, 1024), Hardswish, Dropout, Linear(1024, 1000): only the last Linear is removed
    assert ptm.out_dim == 1024 and isinstance(ptm.backbone.classifier[3], nn.Identity)
    assert isinstance(ptm.backbone.classifier[0], nn.Linear) and ptm.adapter[0].in_features == 1024
    # the stand-in file does not match its name's hash: loaded under the opt-out, loudly, and recorded
    assert unverified_weight_files() == [str(path.resolve())]
    assert [r.levelno for r in caplog.records if "UNVERIFIED" in r.getMessage()] == [logging.WARNING]
    agent.train()
    assert batchnorms(ptm.backbone) and not any(bn.training for bn in batchnorms(ptm.backbone))
    before = [bn.running_mean.clone() for bn in batchnorms(ptm.backbone)]
    step(agent, obs)
    assert backbone_grads(ptm)  # trainable: fine-tuned
    for bn, mean in zip(batchnorms(ptm.backbone), before):
        torch.testing.assert_close(bn.running_mean, mean)  # ImageNet statistics untouched


def test_weights_path_named_by_its_own_sha256_is_verified_without_the_opt_out(obs, tmp_path, monkeypatch):
    from torchvision import models as tvm

    monkeypatch.delenv(ALLOW_UNVERIFIED_ENV)
    forget_weight_checks()
    raw = tmp_path / "mine.pth"
    torch.manual_seed(3)
    torch.save(tvm.mobilenet_v3_small().state_dict(), raw)
    path = raw.rename(tmp_path / f"mobilenet_v3_small_mine-{file_sha256(raw)[:8]}.pth")
    agent = agent_of([{**MNV3, "weights_path": str(path), "freeze_backbone": True}])
    assert loaded_weight_files() == {str(path.resolve()): "verified"} and unverified_weight_files() == []
    ptm = agent.actor.extractor.ptms[0]
    step(agent, obs)
    assert all(p.grad is None and not p.requires_grad for p in ptm.backbone.parameters())  # frozen
    assert all(p.grad is not None for p in ptm.adapter.parameters())
    agent.rollout_step(obs, 0)
    cached = agent.rollout.cached_features(torch.arange(obs.num_graphs))  # the frozen-feature cache
    assert set(cached) == {0} and cached[0].shape == (obs.num_graphs, 1024)
    with torch.no_grad():
        agent.eval()
        plain = agent.get_action_and_value(obs, deterministic=True)
        reused = agent.get_action_and_value(obs, deterministic=True, cached_features=cached)
    torch.testing.assert_close(plain.value, reused.value)


def test_random_weights_groupnorm_for_resnets_frozen_batchnorm_for_others(obs):
    agent = agent_of([
        {"name": "r18", "model_type": "resnet18", "weights": "random"},
        {"name": "mn", "model_type": "mobilenet_v3_small", "weights": "random"},
    ])
    resnet, mobilenet = agent.actor.extractor.ptms
    assert not batchnorms(resnet.backbone) and any(isinstance(m, nn.GroupNorm) for m in resnet.backbone.modules())
    agent.train()
    assert batchnorms(mobilenet.backbone) and not any(bn.training for bn in batchnorms(mobilenet.backbone))
    step(agent, obs)
    assert backbone_grads(resnet) and backbone_grads(mobilenet)
    assert all(torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean)) for bn in batchnorms(mobilenet.backbone))


def test_fixed_size_model_gets_resized_images_and_says_so_once(obs, my_encoders, caplog):
    vit = {"name": "vit", "model_type": "vit_b_32", "weights": "random", "freeze_backbone": True,
           "kwargs": {"image_size": 64}}  # a ViT for 64x64 images; the env renders 32x32
    with caplog.at_level(logging.INFO, logger="wsa_lab.models.backbones"):
        agent = agent_of([vit])
        sized = {**TINY_CNN, "name": "tiny48", "image_size": 48}
        agent_of([sized]), agent_of([sized])  # rebuilt (as evaluation does): still one note
    notes = [r.getMessage() for r in caplog.records if "resized (bilinear)" in r.getMessage()]
    assert len(notes) == 2, notes
    assert "'vit' (vit_b_32)" in notes[0] and "32x32" in notes[0] and "64x64" in notes[0]
    ptm = agent.actor.extractor.ptms[0]
    assert ptm.resize_to == (64, 64) and ptm.out_dim == 768
    step(agent, obs)


def test_other_architectures_are_checkpointed_as_one_segment_with_the_same_gradients(obs, monkeypatch):
    from wsa_lab.models import StateInputs, inputs

    segments = []
    real = inputs.checkpoint
    monkeypatch.setattr(inputs, "checkpoint", lambda fn, *a, **k: segments.append(fn) or real(fn, *a, **k))
    grads = []
    for min_nodes in (10_000, 0):  # off, then on (obs has 20 nodes)
        agent = agent_of([{"name": "mn", "model_type": "mobilenet_v3_small", "weights": "random"}],
                         checkpoint_min_nodes=min_nodes)
        ptm = agent.actor.extractor.ptms[0].eval()  # no dropout; gradients still flow (and are checkpointed)
        ptm(StateInputs.from_batch(obs)).sum().backward()
        grads.append(ptm.backbone.features[0][0].weight.grad.clone())
    assert segments == [ptm.backbone]  # only the second run, one segment: the whole body
    torch.testing.assert_close(grads[0], grads[1])


# ---------------------------------------------------------------------------------------------- PyG model zoo
@pytest.mark.parametrize("model_type", ["pyg:GAT", "pyg:GIN", "pyg:GraphSAGE", "pyg:EdgeCNN", "pyg:GCN"])
def test_pyg_zoo_models_build_pool_and_train(obs, model_type):
    agent = agent_of([{"name": "g", "model_type": model_type, "hidden_channels": 8, "num_layers": 2}])
    ptm = agent.actor.extractor.ptms[0]
    assert ptm.kind == "pyg" and ptm.per_node and ptm.out_dim == 16  # mean + max of 8 channels
    step(agent, obs)
    assert backbone_grads(ptm)


def test_gat_reads_the_env_edge_features(obs):
    from wsa_lab.models import StateInputs

    agent = agent_of([{"name": "gat", "model_type": "pyg:GAT", "hidden_channels": 8, "num_layers": 2,
                       "kwargs": {"heads": 2}}])
    ptm = agent.actor.extractor.ptms[0]
    assert ptm.backbone.convs[0].lin_edge is not None  # built with edge_dim = the env's edge width (1)
    inputs = StateInputs.from_batch(obs)
    with torch.no_grad():
        with_edges = ptm.backbone_features(inputs)
        scaled = ptm.backbone_features(inputs._replace(edge_attr=inputs.edge_attr * 5))
    assert not torch.allclose(with_edges, scaled)


def test_frozen_pyg_model_gets_no_gradients_and_is_cached(obs):
    agent = agent_of([{"name": "gin", "model_type": "pyg:GIN", "hidden_channels": 8, "freeze_backbone": True}])
    ptm = agent.actor.extractor.ptms[0]
    step(agent, obs)
    assert all(p.grad is None for p in ptm.backbone.parameters()) and agent.cacheable


# ---------------------------------------------------------------------------------------------- custom modules
def test_custom_image_and_graph_modules_from_a_user_package(obs, my_encoders):
    agent = agent_of([TINY_CNN, MEAN_GNN, {**MEAN_GNN, "name": "frozen_gnn", "freeze_backbone": True}])
    cnn, gnn, frozen = agent.actor.extractor.ptms
    assert isinstance(cnn.backbone, my_encoders.TinyCNN) and cnn.is_image and cnn.out_dim == 64
    assert cnn.backbone.body[0].in_channels == 3  # in_channels filled in from the env's image
    assert isinstance(gnn.backbone, my_encoders.MeanMessageGNN) and not gnn.is_image
    assert gnn.per_node and gnn.out_dim == 32  # per-node rows of 16, pooled mean + max by wsa_lab
    assert gnn.backbone.edge_dim == 1 and gnn.graph_kwargs == ("edge_attr",)  # the env's edge features
    step(agent, obs)
    assert backbone_grads(cnn) and backbone_grads(gnn)
    assert all(p.grad is None for p in frozen.backbone.parameters())
    agent.rollout_step(obs, 0)
    assert set(agent.rollout.cached_features(torch.arange(obs.num_graphs))) == {2}


def test_custom_weights_path_is_loaded_strictly(obs, my_encoders, tmp_path):
    torch.manual_seed(5)
    good = tmp_path / "tiny_cnn.pt"
    torch.save(my_encoders.TinyCNN(3, width=8, features=64).state_dict(), good)
    agent = agent_of([{**TINY_CNN, "weights_path": str(good)}])
    torch.testing.assert_close(agent.actor.extractor.ptms[0].backbone.out.weight, torch.load(good)["out.weight"])
    wrong = tmp_path / "other_width.pt"
    torch.save(my_encoders.TinyCNN(3, width=4, features=64).state_dict(), wrong)
    with pytest.raises(WeightsNotFoundError) as info:
        agent_of([{**TINY_CNN, "weights_path": str(wrong)}])
    message = str(info.value)
    assert "size mismatch" in message and str(wrong) in message and "\n" not in message
    with pytest.raises(WeightsNotFoundError, match="not found") as info:
        agent_of([{**TINY_CNN, "weights_path": str(tmp_path / "nowhere.pt")}])
    assert "\n" not in str(info.value)


def test_every_kind_rebuilds_from_a_checkpoint_without_its_files(obs, my_encoders, mnv3_home, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(mnv3_home))
    weights = tmp_path / "gnn.pt"
    torch.save(my_encoders.MeanMessageGNN(obs.x.shape[1], hidden=16, edge_dim=1).state_dict(), weights)
    ptms = [{**MNV3, "freeze_backbone": True}, {**MEAN_GNN, "weights_path": str(weights)},
            {"name": "gin", "model_type": "pyg:GIN", "hidden_channels": 8}, TINY_CNN]
    trained = agent_of(ptms).eval()
    weights.unlink()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))  # no mobilenet file either
    with pytest.raises(WeightsNotFoundError):
        agent_of(ptms)
    with weights_from_checkpoint():
        rebuilt = agent_of(ptms)
    rebuilt.load_state_dict(trained.state_dict(), strict=True)
    rebuilt.eval()
    with torch.no_grad():
        a = trained.get_action_and_value(obs, deterministic=True)
        b = rebuilt.get_action_and_value(obs, deterministic=True)
    torch.testing.assert_close(a.value, b.value)


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "entry,fragments",
    [
        ({"model_type": "convnext_tiy"}, ["did you mean 'convnext_tiny'", "torchvision.models.list_models()", "pyg:<", "graph_cnn, custom"]),
        ({"model_type": "pyg:GTA"}, ["did you mean 'pyg:GAT'"]),
        ({"model_type": "mobilenet_v3_small", "weights": "IMAGENET1K_V3"}, ["weights must be one of imagenet, random, IMAGENET1K_V1, DEFAULT"]),
        ({"model_type": "resnet18", "weights": "random", "hidden_channels": 8}, ["hidden_channels is only for pyg:* models"]),
        ({"model_type": "pyg:GAT", "weights": "imagenet"}, ["pyg:GAT has no pre-trained weights"]),
        ({"model_type": "pyg:GAT", "hiden_channels": 8}, ["did you mean 'hidden_channels'"]),
        ({"model_type": "custom", "input": "image"}, ["needs target:"]),
        ({"model_type": "custom", "target": "my_encoders.TinyCNN", "input": "pixels"}, ["input: image or input: graph"]),
        ({"model_type": "custom", "_target_": "my_encoders.TinyCNN", "input": "image"}, ["unknown key '_target_' (did you mean 'target'?)"]),
        ({"model_type": "custom", "target": "no_such_package.Encoder", "input": "image"}, ["cannot be imported", "PYTHONPATH"]),
        ({**TINY_CNN, "out_dim": 65}, ["out_dim is 65 but the module returns 64"]),
        ({**MEAN_GNN, "kwargs": {"hidden": 16, "depth": 3}}, ["calling it with", "depth"]),
        ({"model_type": "vit_b_32", "weights": "random", "image_size": 64}, ["reads 224x224 images only"]),
        ({"model_type": "pyg:GAT", "image_size": 64}, ["image_size is only for PTMs that read images"]),
    ],
)
def test_bad_ptm_entries_are_one_line_errors(entry, fragments, my_encoders):
    with pytest.raises(ConfigError) as info:
        agent_of([{"name": "p", **entry}])
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_missing_torchvision_file_says_where_it_looked_and_what_else_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    with pytest.raises(WeightsNotFoundError) as info:
        agent_of([MNV3], weights_dir=str(tmp_path / "wd"))
    message = str(info.value)
    name = "mobilenet_v3_small-047dcff4.pth"
    for fragment in (str(tmp_path / "wd" / name), str(tmp_path / "home" / "hub" / "checkpoints" / name),
                     f"https://download.pytorch.org/models/{name}", "weights: random", "ptm.mnv3.weights=random",
                     "experiment=phase2_all_random", "TORCH_HOME", "paths.weights_dir", "weights_path"):
        assert fragment in message, fragment
    assert "\n" not in message


# ---------------------------------------------------------------------------------------------- configs
def test_shipped_ptm_configs_build(obs):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["ptm=[convnext_tiny_imagenet,gat,gin]", "paths.output_dir=/tmp/unused"])
    ptms = list(cfg.actor_critic.wsa.pretrained_models)
    assert [p["model_type"] for p in ptms] == ["convnext_tiny", "pyg:GAT", "pyg:GIN"]
    with weights_from_checkpoint():  # the ConvNeXt file is not here; the architecture is what is checked
        agent = agent_of(ptms, graph_cnn_hidden_dim=64)
    convnext, gat, gin = agent.actor.extractor.ptms
    assert convnext.out_dim == 768 and convnext.frozen and gat.out_dim == 128 and gin.out_dim == 128
    step(agent, obs)


def test_the_example_study_composes_through_its_config_dir(obs, my_encoders):
    """What `--config-dir examples/custom_ptm/conf experiment=custom_ptms` composes, built and run in-process."""
    from wsa_lab.build import make_agent, make_env

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=[
            f"hydra.searchpath=[file://{EXAMPLE / 'conf'}]", "experiment=custom_ptms", "paths.output_dir=/tmp/unused",
            "env.num_nodes=20", "env.knn_k=4", "env.num_sites=3",
        ])
    agent = make_agent(cfg, make_env(cfg, num_envs=2, seed=0))
    assert agent.ptm_names == ["tiny_cnn", "mean_gnn", "graph_cnn"]
    assert [p.kind for p in agent.actor.extractor.ptms] == ["custom", "custom", "graph_cnn"]
    step(agent, obs)


@pytest.mark.slow  # the real CLI in a subprocess (~15 s)
def test_the_example_study_trains_through_the_cli(tmp_path: Path, fake_torch_home: Path):
    from test_train import TINY

    env = {**subprocess_env(fake_torch_home), "PYTHONPATH": str(EXAMPLE)}
    proc = subprocess.run(
        [sys.executable, "-m", "wsa_lab", "--config-dir", str(EXAMPLE / "conf"), "experiment=custom_ptms", *TINY],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert list((tmp_path / "runs").glob("*/*_custom_ptms_seed0/summary.json"))
