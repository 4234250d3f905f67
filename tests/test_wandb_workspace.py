"""`python -m wsa_lab.report <sweep> --wandb-workspace`, offline: the W&B comparison view is built and validated by
W&B's own library (wandb_workspaces) and written as a spec with the command that publishes it; no network."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from test_report import NAMES, make_run
from wsa_lab.report.__main__ import main as report_main
from wsa_lab.report.wandb_workspace import SPEC_FILE, WorkspaceError, build_workspace, main as publish_main, online

ws = pytest.importorskip("wandb_workspaces.workspaces")  # the `dashboard` extra (in `test`)
wr = pytest.importorskip("wandb_workspaces.reports.v2")

PTMS = [*NAMES, "gin"]


def logged_run(root: Path, arm: str, seed: int, ptms: list[str], project: str = "my_project") -> Path:
    """A run folder as a run with W&B leaves it: + wandb_run_id.txt and resolved_config.yaml's logger.wandb."""
    run = make_run(root, f"{arm}_seed{seed}", arm, seed, 0.5 + 0.1 * seed, ptms=ptms)
    (run / "wandb_run_id.txt").write_text(f"{arm[-4:]}{seed}\n")
    (run / "resolved_config.yaml").write_text(f"env: {{}}\nlogger:\n  wandb: {{project: {project}, entity: null}}\n")
    return run


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "multirun" / "2026-11-05" / "12-00-00-000001"
    for seed in range(2):
        logged_run(root, "phase6_grow", seed, PTMS)
        logged_run(root, "phase6_scratch", seed, PTMS)
    make_run(root, "console_only", "phase6_stage1", 0, 0.4)  # logger without wandb: no W&B run to show
    return root


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)

    def refuse(*args, **kwargs):
        raise AssertionError("the offline path must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_offline_writes_a_spec_the_library_validates_and_says_how_to_publish(
    sweep: Path, no_network: None, capsys: pytest.CaptureFixture
):
    assert report_main([str(sweep), "--reps", "200", "--no-plots", "--wandb-workspace"]) == 0
    path = sweep / "report" / SPEC_FILE
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == (f"wsa_lab.report: W&B workspace spec written to {path} (offline: WANDB_API_KEY is not set); "
                           f"publish it with: python -m wsa_lab.report.wandb_workspace {path}")
    assert not list(path.parent.glob(".*.tmp"))  # written atomically
    spec = json.loads(path.read_text())
    assert spec["project"] == "my_project" and spec["entity"] is None and spec["group_by"] == "arm"
    assert sorted(spec["run_ids"]) == ["atch0", "atch1", "grow0", "grow1"]  # the console-only run is not in W&B
    panels = {p["metrics"][0]: p for s in spec["sections"] for p in s["panels"] if p["kind"] == "line"}
    assert set(panels) == {
        "eval/greedy_ratio", *(f"wsa/attention/{p}" for p in PTMS), "wsa/attention_entropy", "wsa/attention_state_std",
        "wsa/health/state",
    }

    workspace = build_workspace(spec)  # the library's models (pydantic) check every field; nothing is saved
    assert isinstance(workspace, ws.Workspace) and workspace.project == "my_project"
    assert workspace.settings.x_axis == "global_step"
    (group,) = workspace.runset_settings.groupby
    assert type(group).__name__ == "Config" and group.name == "arm"  # runs grouped by arm
    assert all(i in workspace.runset_settings.filters for i in spec["run_ids"])  # exactly the compared runs
    headline = workspace.sections[0].panels
    assert isinstance(headline[0], wr.LinePlot) and headline[0].y == ["eval/greedy_ratio"]
    assert (headline[0].groupby_aggfunc, headline[0].groupby_rangefunc) == ("mean", "stddev")  # mean and spread
    assert isinstance(headline[1], wr.BarPlot) and headline[1].metrics == ["eval/greedy_ratio"]
    assert [s.name for s in workspace.sections] == ["Headline: eval/greedy_ratio", "Attention", "Attention health"]


def test_what_the_library_refuses_is_one_line(sweep: Path, no_network: None):
    assert report_main([str(sweep), "--reps", "200", "--no-plots", "--wandb-workspace"]) == 0
    spec = json.loads((sweep / "report" / SPEC_FILE).read_text())
    with pytest.raises(WorkspaceError, match=r"does not make a W&B workspace \(.*groupby_rangefunc"):
        build_workspace({**spec, "spread": "sideways"})  # not one of the library's range functions
    with pytest.raises(WorkspaceError, match="not a wsa_lab W&B workspace spec"):
        build_workspace({"sections": []})


def test_publishing_is_refused_in_one_line_while_offline(sweep: Path, no_network: None, capsys: pytest.CaptureFixture):
    assert report_main([str(sweep), "--reps", "200", "--no-plots", "--wandb-workspace"]) == 0
    capsys.readouterr()
    assert publish_main([str(sweep / "report" / SPEC_FILE)]) == 1  # conftest: WANDB_MODE=offline
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["wsa_lab.report.wandb_workspace: error: W&B is switched off here (WANDB_MODE=offline); unset it to publish"]
    (sweep / "bad.json").write_text("{not json")
    assert publish_main([str(sweep / "bad.json")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_runs_without_wandb_are_one_line(tmp_path: Path, no_network: None, capsys: pytest.CaptureFixture):
    make_run(tmp_path, "a", "phase6_stage1", 0, 0.4)
    assert report_main([str(tmp_path), "--reps", "200", "--no-plots", "--wandb-workspace"]) == 1
    assert "none of the 1 compared runs was logged to W&B" in capsys.readouterr().err


def test_online_needs_a_key_and_no_offline_mode(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert not online()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert online()
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert not online()
