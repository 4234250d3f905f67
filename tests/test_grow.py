"""`init_from=<run folder>`: a trained WSA-2 continues as WSA-3 (and shrinks, reorders); what cannot carry over is
one line and a non-zero exit."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from conftest import compose_config
from test_cli import assert_one_line_error, wsa_lab
from test_train import TINY
from wsa_lab.build import make_agent, make_env
from wsa_lab.config.validate import validate
from wsa_lab.errors import ConfigError
from wsa_lab.rl import PPO
from wsa_lab.run.checkpoint import load_checkpoint
from wsa_lab.run.init_from import carry_over, read_source
from wsa_lab.train import train

WSA2 = [*TINY, "ptm=[graph_cnn,gin]"]  # graph PTMs only: seconds on a CPU
WSA3 = [*TINY, "ptm=[graph_cnn,gin,gat]"]  # + GAT
ATTENTION = "actor.extractor.attention."


@pytest.fixture(scope="module")
def stage1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained WSA-2 run folder (64 env steps)."""
    out = tmp_path_factory.mktemp("stage1") / "run"
    train(compose_config(WSA2, out))
    return out


def files(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def test_a_wsa2_checkpoint_continues_as_wsa3_with_the_shared_scorer_unchanged(
    stage1: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    source = load_checkpoint(stage1 / "checkpoints" / "last.pt")["agent"]
    before = files(stage1)
    at_step0: dict[str, torch.Tensor] = {}
    iterate = PPO.iterate

    def first_iteration_sees(self: PPO) -> dict:
        if not at_step0:  # the agent PPO trains, before its first update
            at_step0.update({k: v.detach().clone() for k, v in self.agent.state_dict().items()})
        return iterate(self)

    monkeypatch.setattr(PPO, "iterate", first_iteration_sees)
    grown = tmp_path / "grown"
    with caplog.at_level(logging.INFO):
        summary = train(compose_config([*WSA3, f"init_from={stage1}"], grown))

    attention = [k for k in source if k.startswith(ATTENTION)]
    assert attention and all(torch.equal(at_step0[k], source[k]) for k in attention)  # the shared scorer
    assert all(torch.equal(at_step0[k], source[k]) for k in source)  # encoder, heads, critic, both PTMs too
    new = sorted(set(at_step0) - set(source))
    assert new and all(k.startswith("actor.extractor.ptms.2.") for k in new)  # GAT: backbone + adapter, fresh
    record = summary["init_from"]
    assert record["loaded"] == len(source) and record["dropped"] == {} and record["global_step"] == 64
    assert record["new"] == {"ptm 2 (gat) backbone": len(new) - 2, "ptm 2 (gat) adapter": 2}
    assert record["ptm_names"] == ["graph_cnn", "gin"] and summary["ptm_names"] == ["graph_cnn", "gin", "gat"]
    assert json.loads((grown / "summary.json").read_text())["init_from"] == record
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("init_from ")]
    assert len(lines) == 1, lines
    assert f"init_from {stage1}: loaded {len(source)} tensors" in lines[0] and "new: ptm 2 (gat) backbone" in lines[0]
    assert "dropped: none" in lines[0]
    assert files(stage1) == before  # the source folder is data: only read

    # the same command again resumes the grown run's own checkpoint: init_from is not loaded again, and said so
    caplog.clear()
    with caplog.at_level(logging.INFO):
        again = train(compose_config([*WSA3, f"init_from={stage1}"], grown))
    assert again["init_from"] == record and again["resumed_from_steps"] == [64]
    assert any("is not loaded again" in r.getMessage() for r in caplog.records)
    # another init_from for that folder is another config: refused like any other change on resume
    with pytest.raises(ConfigError, match="another config.*init_from"):
        train(compose_config([*WSA3, f"init_from={tmp_path}"], grown))


def test_shrinking_and_reordering_match_ptms_by_name(stage1: Path, tmp_path: Path):
    cfg = compose_config([*TINY, "ptm=[gin]", f"init_from={stage1}"], tmp_path)
    agent = make_agent(cfg, make_env(cfg, num_envs=2, seed=0))
    source = read_source(stage1)
    carried = carry_over(agent, source)
    state = agent.state_dict()
    gin = {k.removeprefix("actor.extractor.ptms.1."): v for k, v in source.agent.items() if k.startswith("actor.extractor.ptms.1.")}
    assert gin and all(torch.equal(state[f"actor.extractor.ptms.0.{k}"], v) for k, v in gin.items())  # gin was PTM 1
    assert all(torch.equal(state[k], source.agent[k]) for k in source.agent if k.startswith(ATTENTION))
    assert carried.new == {} and set(carried.dropped) == {"ptm 0 (graph_cnn) backbone", "ptm 0 (graph_cnn) adapter"}
    assert "dropped: ptm 0 (graph_cnn) backbone" in carried.line()


def not_a_wsa_agent(stage1: Path, tmp_path: Path) -> Path:
    """A copy of `stage1` whose checkpoint says it is a Standard Actor's."""
    folder = tmp_path / "standard"
    shutil.copytree(stage1, folder)
    for name in ("last.pt", "prev.pt"):
        path = folder / "checkpoints" / name
        if path.is_file():
            state = load_checkpoint(path)
            state["config"]["actor_critic"]["wsa"]["enabled"] = False
            torch.save(state, path)
    return folder


@pytest.mark.parametrize("case, match", [
    ("missing", "no such run folder"),
    ("empty", "no checkpoint in"),
    ("standard", "not a WSA agent"),
    ("other_shape", "has shape .* there and .* here; only tensors of the same name and shape carry over"),
])
def test_what_cannot_carry_over_is_one_line(stage1: Path, tmp_path: Path, case: str, match: str):
    folder, extra = stage1, []
    if case == "missing":
        folder = tmp_path / "nope"
    elif case == "empty":
        folder = tmp_path / "empty"
        folder.mkdir()
    elif case == "standard":
        folder = not_a_wsa_agent(stage1, tmp_path)
    else:
        extra = ["actor_critic.feature_dim=64"]  # the adapters and the attention have other shapes
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=match) as info:
        train(compose_config([*WSA3, *extra, f"init_from={folder}"], out))
    assert str(info.value).startswith("init_from=") and "\n" not in str(info.value)
    assert not (out / "resolved_config.yaml").exists() and not (out / "metrics.jsonl").exists()  # nothing written


def test_the_grow_experiment_asks_for_its_stage1_folder(tmp_path: Path):
    cfg = compose_config(["experiment=phase6_grow"], tmp_path)
    with pytest.raises(ConfigError, match=r"init_from is required here: experiment=phase6_grow continues a trained WSA-2 run; set init_from=<its run folder>"):
        validate(cfg)
    cfg = compose_config(["experiment=phase6_grow", f"init_from={tmp_path}"], tmp_path)
    assert [p["name"] for p in cfg.actor_critic.wsa.pretrained_models][:2] == ["resnet18_imagenet", "graph_cnn"]
    assert cfg.name == "phase6_grow" and cfg.phase == "phase6"


def test_cli_refuses_a_folder_without_checkpoint_in_one_line(tmp_path: Path, fake_torch_home: Path):
    (tmp_path / "stage1").mkdir()
    proc = wsa_lab([*WSA3, "init_from=stage1", "hydra.run.dir=grown"], cwd=tmp_path, torch_home=fake_torch_home)
    assert_one_line_error(proc, "wsa_lab: error: init_from=stage1: no checkpoint in")
    assert not (tmp_path / "grown").exists()  # a refused start leaves no run folder


def test_a_checkpoint_from_before_init_from_existed_still_resumes():
    from wsa_lab.run.folder import config_differences

    assert config_differences({"seed": 0}, {"seed": 0, "init_from": None}) == []  # absent there = null
    assert config_differences({"seed": 0}, {"seed": 0, "init_from": "runs/x"}) == ["init_from: None -> 'runs/x'"]
    assert config_differences({"seed": 0}, {"seed": 0}) == []  # configs without the key (pretrain) are unaffected
