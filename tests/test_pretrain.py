"""`python -m wsa_lab.pretrain`: PTMs pre-trained on an env's own states (autoencoder, Deep Graph Infomax), their
checkpoint and PTM config used by training, reproducibility, resume after a kill, clear errors."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from conftest import REPO, compose_config, subprocess_env
from test_train import TINY
from wsa_lab.conf_files import config_dir
from wsa_lab.errors import ConfigError, WeightsNotFoundError
from wsa_lab.models.inputs import StateInputs
from wsa_lab.models.ptm import PreTrainedModelWrapper
from wsa_lab.pretrain import pretrain
from wsa_lab.build import make_agent, make_env
from wsa_lab.run.checkpoint import load_checkpoint
from wsa_lab.train import train

SMALL = ["env.num_nodes=20", "env.knn_k=4", "env.num_sites=3", "pretrain.collect_steps=64", "pretrain.num_envs=8",
         "pretrain.epochs=2", "pretrain.batch_size=16", "progress_bar=false"]


def pretrain_cfg(out: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("pretrain", overrides=[*SMALL, *overrides, f"paths.pretrained_dir={out}"])


@pytest.mark.parametrize("ptm,objective", [("resnet18_random", "autoencoder"), ("graph_cnn", "dgi"), ("gin", "dgi")])
def test_a_pretrained_frozen_ptm_is_the_checkpoints_encoder(tmp_path: Path, ptm: str, objective: str):
    record = pretrain(pretrain_cfg(tmp_path, f"ptm={ptm}", f"objective={objective}", "name=made"))
    assert len(record["epoch_losses"]) == 2 and all(torch.isfinite(torch.tensor(record["epoch_losses"])))
    weights = load_checkpoint(tmp_path / "made.pt")
    assert (tmp_path / "ptm" / "made.yaml").is_file() and json.loads((tmp_path / "made.json").read_text())["states"] == 64
    # training finds the PTM through --config-dir (here: the search path of compose) and loads the file strictly
    cfg = compose_config([*TINY, "ptm=[made]", f"hydra.searchpath=[file://{tmp_path}]"], tmp_path / "run")
    env = make_env(cfg, num_envs=3, seed=5)
    agent = make_agent(cfg, env)
    (wrapper,) = agent.actor.extractor.ptms
    assert wrapper.frozen and all(torch.equal(wrapper.backbone.state_dict()[k], v) for k, v in weights.items())
    # ... and what it computes on some states is the checkpoint's encoder on them: a module built on its own
    # (no weights_path), given the file's tensors by hand
    fresh = PreTrainedModelWrapper(
        dataclasses.replace(wrapper.spec, weights_path=None, made_by=None), 128, env.single_observation_space["graph"].node_space.shape[0], 64, None, 500, 3, 32, 1, "relu"
    ).eval()
    fresh.backbone.load_state_dict(weights, strict=True)
    inputs = StateInputs.from_batch(env.reset(seed=5))
    with torch.no_grad():
        torch.testing.assert_close(wrapper.backbone_features(inputs), fresh.backbone_features(inputs), rtol=0, atol=0)


def test_the_dgi_loss_is_pygs_and_keeps_a_gradient_when_the_scores_are_large():
    """The Deep Graph Infomax loss on logits: equal to PyG's where PyG's is finite, and still learning where PyG's
    log-of-sigmoid saturates at 34.54 (a GIN over node features in the tens scores in the hundreds)."""
    from torch_geometric.nn.models import DeepGraphInfomax

    from wsa_lab.pretrain.objectives import BatchedDeepGraphInfomax

    torch.manual_seed(0)
    ours, pyg = (cls(4, lambda x: x, lambda z, x: z, lambda x: x) for cls in (BatchedDeepGraphInfomax, DeepGraphInfomax))
    pyg.weight.data.copy_(ours.weight.data)
    pos, neg, summary = torch.randn(6, 4), torch.randn(6, 4), torch.sigmoid(torch.randn(6, 4))
    for i in range(6):  # PyG scores nodes against one summary: node by node, its loss is ours
        one = slice(i, i + 1)
        torch.testing.assert_close(ours.loss(pos[one], neg[one], summary[one]), pyg.loss(pos[one], neg[one], summary[i]))
    direction = (summary[0] @ ours.weight.t()).detach()  # a positive node scored -100 (should be high), a negative one +100
    pos = (-100 * direction / direction.square().sum()).expand(6, 4).clone().requires_grad_()
    neg = (100 * direction / direction.square().sum()).expand(6, 4).clone().requires_grad_()
    saturated = pyg.loss(pos, neg, summary[0])
    saturated.backward()
    assert saturated.item() == pytest.approx(2 * 34.54, abs=0.01) and pos.grad.abs().sum() == 0  # PyG's: stuck
    pos.grad = None
    loss = ours.loss(pos, neg, summary[:1].expand(6, 4))
    loss.backward()
    assert loss.item() == pytest.approx(200, rel=1e-3) and pos.grad.abs().sum() > 0


def test_same_seed_same_ptm_other_seed_other_ptm(tmp_path: Path):
    made = {}
    for label, seed in (("a", 0), ("b", 0), ("c", 1)):
        pretrain(pretrain_cfg(tmp_path / label, "ptm=graph_cnn", "objective=dgi", "name=g", f"seed={seed}"))
        made[label] = load_checkpoint(tmp_path / label / "g.pt")
    assert all(torch.equal(made["a"][k], made["b"][k]) for k in made["a"])
    assert not all(torch.equal(made["a"][k], made["c"][k]) for k in made["a"])


def test_made_by_names_the_seed_and_the_budget(tmp_path: Path):
    from omegaconf import OmegaConf

    pretrain(pretrain_cfg(tmp_path, "ptm=graph_cnn", "objective=dgi", "name=g", "seed=3"))
    made_by = OmegaConf.load(tmp_path / "ptm" / "g.yaml").g.made_by
    assert made_by.startswith("python -m wsa_lab.pretrain ptm=graph_cnn objective=dgi name=g seed=3 ")
    assert "pretrain.collect_steps=64" in made_by and "pretrain.epochs=2" in made_by and "pretrain.num_envs=8" in made_by


def test_a_second_job_of_the_same_name_is_refused_while_the_first_runs(tmp_path: Path):
    """Two pre-trainings named alike (seed 0 and seed 1 started together) must not overwrite each other's files."""
    from test_hostile_runs import hold
    from wsa_lab.errors import RunFolderBusyError

    holder = hold(tmp_path / ".g")  # the first job, still running
    try:
        with pytest.raises(RunFolderBusyError, match=r"\.g is in use by a running wsa_lab .*choose another name than 'g'"):
            pretrain(pretrain_cfg(tmp_path, "ptm=graph_cnn", "objective=dgi", "name=g", "seed=1"))
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert not (tmp_path / "g.pt").exists() and not (tmp_path / "ptm").exists()


def test_a_killed_job_resumes_and_ends_where_an_uninterrupted_one_does(tmp_path: Path, monkeypatch):
    pretrain(pretrain_cfg(tmp_path / "whole", "ptm=graph_cnn", "objective=dgi", "name=g"))
    calls = {"n": 0}
    original = torch.optim.Adam.step

    def dies_at_batch_6(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # epoch 2, batch 2 (4 batches per epoch): after the epoch-1 checkpoint
            raise KeyboardInterrupt("killed")
        return original(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(torch.optim.Adam, "step", dies_at_batch_6)
        with pytest.raises(KeyboardInterrupt):
            pretrain(pretrain_cfg(tmp_path / "killed", "ptm=graph_cnn", "objective=dgi", "name=g"))
    assert not (tmp_path / "killed" / "g.pt").exists()
    assert load_checkpoint(tmp_path / "killed" / ".g" / "checkpoints" / "last.pt")["epoch"] == 1
    pretrain(pretrain_cfg(tmp_path / "killed", "ptm=graph_cnn", "objective=dgi", "name=g"))
    whole, resumed = load_checkpoint(tmp_path / "whole" / "g.pt"), load_checkpoint(tmp_path / "killed" / "g.pt")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    with pytest.raises(ConfigError, match="holds a pre-training checkpoint of another config"):
        pretrain(pretrain_cfg(tmp_path / "killed", "ptm=graph_cnn", "objective=dgi", "name=g", "pretrain.epochs=3"))


def test_any_env_of_the_contract(tmp_path: Path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "examples" / "graph_envs"))
    gym = ["env=gym", "env.id=graph_envs:graph_envs/ValueGraph-v0"]
    common = [o for o in SMALL if not o.startswith("env.")]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        for ptm, objective in (("graph_cnn", "dgi"), ("resnet18_random", "autoencoder")):  # no env image: rasterised
            cfg = compose("pretrain", overrides=[*common, *gym, f"ptm={ptm}", f"objective={objective}", "name=v",
                                                 f"paths.pretrained_dir={tmp_path / ptm}"])
            assert pretrain(cfg)["env"] == "graph_envs:graph_envs/ValueGraph-v0"


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["ptm=resnet18_imagenet", "objective=autoencoder"], "pre-training starts from a random initialisation"),
        (["ptm=resnet18_random", "objective=dgi"], "objective=dgi needs a graph PTM"),
        (["ptm=graph_cnn", "objective=autoencoder"], "objective=autoencoder needs an image PTM"),
        (["ptm=graph_cnn", "objective=contrastive"], "objective='contrastive': choose one of"),
        (["ptm=graph_cnn", "objective=dgi", "pretrain.epochs=0"], "pretrain.epochs must be an integer >= 1"),
    ],
)
def test_bad_settings_are_one_line_errors(tmp_path: Path, overrides: list[str], match: str):
    with pytest.raises(ConfigError, match=match):
        pretrain(pretrain_cfg(tmp_path, *overrides, "name=x"))


def test_a_missing_pretrained_file_names_the_command_that_makes_it(tmp_path: Path):
    cfg = compose_config([*TINY, "experiment=phase5_pretrained", f"paths.pretrained_dir={tmp_path}"], tmp_path / "run")
    with pytest.raises(WeightsNotFoundError, match="make it first with `python -m wsa_lab.pretrain ptm=resnet18_random "
                                                   "objective=autoencoder name=coverage_ae_resnet18`"):
        train(cfg)
    assert not (tmp_path / "run" / "resolved_config.yaml").exists()  # nothing written for a refused start


@pytest.mark.slow
def test_the_cli(tmp_path: Path, fake_torch_home: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "wsa_lab.pretrain", "ptm=graph_cnn", "objective=dgi", "name=cli_dgi", *SMALL],
        cwd=tmp_path, env=subprocess_env(fake_torch_home), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "pretrained" / "cli_dgi.pt").is_file() and (tmp_path / "pretrained" / "ptm" / "cli_dgi.yaml").is_file()
    bad = subprocess.run(
        [sys.executable, "-m", "wsa_lab.pretrain", "ptm=graph_cnn", "objective=autoencoder", "name=x", *SMALL],
        cwd=tmp_path, env=subprocess_env(fake_torch_home), capture_output=True, text=True, timeout=600,
    )
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "needs an image PTM" in bad.stderr
