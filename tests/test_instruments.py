"""The PTM instruments: state dependence of the attention (metric, health verdict, per-state record), the PTM
ablation (the hook, `python -m wsa_lab.evaluate ... ablate=true` on an agent whose needs are known by construction),
and the report's contribution table and figures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config, from_yaml
from test_train import TINY
from wsa_lab.config.schema import HealthConfig
from wsa_lab.errors import ConfigError
from wsa_lab.evaluate import evaluate_runs, load_run, main
from wsa_lab.models import Ablation
from wsa_lab.models.attention import DotProductAttention, renormalise_without, state_dependence
from wsa_lab.models.fusion import FusedFeatures
from wsa_lab.models.rollout_record import RolloutRecord
from wsa_lab.report import build_report, write_report
from wsa_lab.report.__main__ import main as report_main
from wsa_lab.report.analysis import BootstrapSettings
from wsa_lab.tracking import AttentionHealth, Tracker, read_metrics
from wsa_lab.tracking.health import classify_state_dependence
from wsa_lab.train import train

CFG = from_yaml(HealthConfig, "logger/health.yaml", "health")


# ------------------------------------------------------------------------------------------ state dependence
def routing_attention(route: bool, feature_dim: int = 4) -> DotProductAttention:
    """A hand-made attention over two PTMs whose features are the unit vectors e0 and e1: with `route`, the query
    is +-k (c0 - 1/2) along e0 - e1, so states with c0 > 1/2 go to PTM 0 and the others to PTM 1; without, the
    query is 0 (uniform weights in every state)."""
    att = DotProductAttention(context_dim=1, feature_dim=feature_dim, temperature=1.0, uniform_init=True)
    if route:
        with torch.no_grad():
            k = 20.0
            att.query.weight[0, 0], att.query.weight[1, 0] = k, -k
            att.query.bias[0], att.query.bias[1] = -k / 2, k / 2
    return att


def rollout_weights(att: DotProductAttention, states: int = 64, seed: int = 0) -> tuple[torch.Tensor, FusedFeatures]:
    context = torch.rand(states, 1, generator=torch.Generator().manual_seed(seed))
    features = torch.eye(4)[:2].expand(states, 2, 4)
    fused, weights = att(context, features)
    return context, FusedFeatures(fused, features, weights)


def test_a_routing_attention_is_meaningful_and_a_constant_one_state_blind(tmp_path: Path):
    verdicts = {}
    for route in (True, False):
        att = routing_attention(route)
        names = ["ptm_a", "ptm_b"]
        tracker = Tracker(tmp_path / str(route), ptm_names=names, health=AttentionHealth(CFG, names))
        record = RolloutRecord(names, log_features=False)
        for iteration in range(CFG.min_points + 1):  # one rollout per PPO iteration, as PPO.iterate does
            record.start()
            context, fusion = rollout_weights(att, seed=iteration)
            record.add({}, fusion)
            tracker.log(record.metrics(), step=8 * (iteration + 1))
        tracker.finish({"status": "completed"})
        last = read_metrics(tmp_path / str(route))[-1]
        summary = json.loads((tmp_path / str(route) / "summary.json").read_text())
        verdicts[route] = summary["wsa/health/state_dependence"]
        if route:  # states with c0 > 1/2 go to PTM 0: about half the states switch away from the rollout's top PTM
            top = fusion.weights.mean(0).argmax()
            expected_switch = (fusion.weights.argmax(1) != top).float().mean().item()
            assert last["wsa/attention_top_switch"] == pytest.approx(expected_switch) and 0.3 < expected_switch < 0.7
            assert last["wsa/attention_state_std"] > 0.3 and last["wsa/health/meaningful"] == 1.0
        else:
            assert last["wsa/attention_state_std"] == 0.0 and last["wsa/attention_top_switch"] == 0.0
            assert last["wsa/health/meaningful"] == 0.0
    assert verdicts == {True: "meaningful", False: "state-blind"}


def test_state_dependence_numbers_and_threshold():
    w = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.8, 0.2], [0.7, 0.3]])
    spread = state_dependence(w)
    assert spread.state_std == pytest.approx(float(np.std([0.9, 0.1, 0.8, 0.7])))  # the same for both PTMs
    assert spread.top_switch == pytest.approx(0.25)  # the rollout's top is PTM 0; one state of four prefers PTM 1
    assert state_dependence(torch.full((5, 3), 1 / 3)) == (0.0, 0.0)
    # top switching alone is not meaningful: near-uniform weights with tiny jitter switch their argmax at random
    jitter = [[0.001, 0.5]] * CFG.min_points
    assert classify_state_dependence(jitter, CFG).verdict == "state-blind"
    assert classify_state_dependence([[CFG.meaningful_state_std, 0.0]] * CFG.min_points, CFG).verdict == "meaningful"
    assert classify_state_dependence([[0.5, 0.5]] * (CFG.min_points - 1), CFG).verdict == "unknown"


# ------------------------------------------------------------------------------------------ the ablation hook
def test_renormalise_without():
    w = torch.tensor([[0.5, 0.3, 0.2], [1.0, 0.0, 0.0]])
    assert torch.allclose(renormalise_without(w, 0), torch.tensor([[0.0, 0.6, 0.4], [0.0, 0.5, 0.5]]))
    assert torch.allclose(renormalise_without(w, 2), torch.tensor([[0.625, 0.375, 0.0], [1.0, 0.0, 0.0]]))


# ------------------------------------------------------------------------------------------ a known agent
@pytest.fixture(autouse=True)
def _tests_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # ablation_envs, as a user's own package


PTM = "model_type: custom, target: ablation_envs.NodeFeatures, input: graph, weights: null, freeze_backbone: false"
SIGNAL = [o for o in TINY if not o.startswith("env.")] + [
    "env=gym", "env.id=signal/Signal-v0", "env.entry_point=ablation_envs:SignalGraph", "ptm=[]",
    f"+ptm.signal={{name: signal, {PTM}}}", f"+ptm.blank={{name: blank, {PTM}}}", "name=signal_arm",
]
ABLATE = ["ablate=true", "num_instances=24", "device=cpu"]


def hand_set(agent) -> None:
    """Weights that make the policy need PTM `signal` and ignore PTM `blank`, by construction.

    `signal`'s adapted feature is [s, 1, 0, ...] (s = the env's hidden signal), `blank`'s is 0. The attention scores
    a PTM by its feature's second entry, so `signal` gets all but 1e-10 of the weight. The bid reads the fused
    feature's first entry: sigmoid(4 w s - 2), close to s, so the return needs s, hence `signal`.
    """
    ex = agent.actor.extractor
    d, c, f = agent.actor.encoder.out_dim, agent.actor.encoder.context_dim, ex.feature_dim
    with torch.no_grad():
        for p in [*ex.ptms[0].adapter.parameters(), *ex.ptms[1].adapter.parameters(), *ex.attention.parameters(),
                  *agent.head.continuous_mean.parameters()]:
            p.zero_()
        ex.ptms[0].adapter[0].weight[0, 0] = 1.0  # f0 = relu(mean node feature) = s
        ex.ptms[0].adapter[0].bias[1] = 1.0  # f1 = 1: "I carry the signal"
        score = ex.attention.score
        score[0].weight[0, c + 1] = 3.0  # hidden0 = tanh(3 f1): 0.995 for signal, 0 for blank
        score[-1].weight[0, 0] = 25.0  # scores 24.9 vs 0
        head = agent.head.continuous_mean
        head[0].weight[0, d + c] = 1.0  # hidden0 = relu(fused0) = w_signal * s
        head[2].weight[0, 0], head[2].bias[0] = 4.0, -2.0
    assert f >= 2


@pytest.fixture(scope="module")
def signal_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A WSA run on SignalGraph (two PTMs) trained briefly, its checkpoint then replaced by the hand-set agent."""
    run = tmp_path_factory.mktemp("signal") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(Path(__file__).parent))
        assert train(compose_config(SIGNAL, run))["status"] == "completed"
        agent = load_run(run, torch.device("cpu")).agent
    hand_set(agent)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    state["agent"] = agent.state_dict()
    torch.save(state, run / "checkpoints" / "last.pt")
    return run


def test_a_real_run_logs_state_dependence_and_records_held_out_states(signal_run: Path):
    records = [r for r in read_metrics(signal_run) if "wsa/attention_weights_0" in r]
    assert records and all(0 <= r["wsa/attention_state_std"] <= 0.5 and 0 <= r["wsa/attention_top_switch"] <= 1 for r in records)
    data = json.loads((signal_run / "attention_states.json").read_text())
    assert data["ptm_names"] == ["signal", "blank"] and len(data["states"]) == 4  # evaluation.num_instances=4 in TINY
    for state in data["states"]:
        assert sum(state["weights"].values()) == pytest.approx(1.0, abs=1e-3)
        assert len(state["positions"]) == state["nodes"] == len(state["node_feature"]) == 4


def test_removing_a_ptm_the_policy_ignores_costs_nothing_and_one_it_needs_costs_return(signal_run: Path):
    result = evaluate_runs([signal_run], ABLATE)
    on_disk = json.loads((signal_run / "ablation_in_distribution.json").read_text())
    assert on_disk == json.loads(json.dumps(result.runs[0])) and on_disk["ptm_names"] == ["signal", "blank"]
    cell = on_disk["conditions"]["held_out"]
    full, signal, blank = cell["full"], cell["ptms"]["signal"], cell["ptms"]["blank"]
    assert on_disk["metric"] == "eval/optimal_ratio" and full["return"] > 0.9
    assert signal["mean_weight"] > 0.999 and blank["mean_weight"] < 1e-3
    for variant in ("removed", "mean_feature"):  # blank is ignored: taking it away changes nothing
        assert blank[variant]["return"] == pytest.approx(full["return"], abs=1e-6)
        assert blank[f"{variant}_contribution"] == pytest.approx(0.0, abs=1e-6)
    # signal is needed: without it (or with its feature at its held-out mean) the bid no longer follows s
    assert signal["removed"]["return"] < full["return"] - 0.2 and signal["removed_contribution"] > 0.2
    assert signal["mean_feature"]["return"] < full["return"] - 0.1 and signal["mean_feature_contribution"] > 0.1
    assert "| held_out | signal |" in result.table and (signal_run / "ablation_in_distribution.md").is_file()
    # the hook leaves the agent as it was: playing again unablated gives the same return
    again = evaluate_runs([signal_run], [*ABLATE, f"table={signal_run}/again.md"]).runs[0]["conditions"]["held_out"]
    assert again["full"] == full


def test_the_hook_is_a_context_that_restores_the_agent(signal_run: Path):
    agent = load_run(signal_run, torch.device("cpu")).agent
    with pytest.raises(ValueError, match="needs the replacing feature"):
        with agent.ablated(Ablation(0, "mean")):
            pass
    with agent.ablated(Ablation(1, "remove")):
        assert agent.actor.extractor.ablation == Ablation(1, "remove")
    assert agent.actor.extractor.ablation is None


def test_ablating_a_standard_actor_is_one_line_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture):
    for name, overrides in (("standard", ["experiment=phase1_baseline"]), ("single", ["ptm=[graph_cnn]"])):
        run = tmp_path / name
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "last.pt").write_bytes(b"")  # never read: refused from the config, before any play
        cfg = compose_config([*TINY, *overrides], run)
        (run / "resolved_config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        assert main([str(run), "ablate=true"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("wsa_lab.evaluate: error: "), err
        assert ("Standard Actor" if name == "standard" else "over 1 PTM") in err[0]


def test_ablating_a_sweep_leaves_its_standard_arm_out_and_says_so(signal_run: Path, tmp_path: Path):
    """A sweep of a WSA arm beside the Standard Actor: the WSA runs are ablated, the Standard run is left out (one
    line each); a sweep with no ablatable run is still an error."""
    standard = tmp_path / "standard"
    (standard / "checkpoints").mkdir(parents=True)
    (standard / "checkpoints" / "last.pt").write_bytes(b"")  # never read: left out from its config
    cfg = OmegaConf.load(signal_run / "resolved_config.yaml")
    cfg.actor_critic.wsa.enabled = False
    (standard / "resolved_config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (standard / "summary.json").write_text((signal_run / "summary.json").read_text())
    lines: list[str] = []
    result = evaluate_runs([signal_run, standard], [*ABLATE, f"table={tmp_path}/ablation.md"], log=lines.append)
    assert [r["run"]["path"] for r in result.runs] == [str(signal_run)]
    assert [line for line in lines if line.startswith("left out")] == [
        f"left out {standard}: ablate=true ablates the PTMs of a WSA agent; this run is the Standard Actor (no PTMs, no attention)"]
    with pytest.raises(ConfigError, match="none of the runs has attention weights over >= 2 PTMs"):
        evaluate_runs([standard, shutil.copytree(standard, tmp_path / "standard2")], [*ABLATE, f"table={tmp_path}/none.md"])


def test_the_report_shows_contribution_and_held_out_states(signal_run: Path, tmp_path: Path, capsys):
    """Across seeds from run folders: two copies of the evaluated run with other seeds and shifted numbers."""
    if not (signal_run / "ablation_in_distribution.json").is_file():
        evaluate_runs([signal_run], ABLATE)
    root = tmp_path / "sweep"
    drops = [0.30, 0.35, 0.40]
    for seed, drop in enumerate(drops):
        run = root / f"{seed}_signal_arm_seed{seed}"
        run.mkdir(parents=True)
        for name in ("metrics.jsonl", "attention_states.json"):
            (run / name).write_bytes((signal_run / name).read_bytes())
        summary = json.loads((signal_run / "summary.json").read_text())
        (run / "summary.json").write_text(json.dumps({**summary, "seed": seed}))
        ablation = json.loads((signal_run / "ablation_in_distribution.json").read_text())
        ablation["conditions"]["held_out"]["ptms"]["signal"]["removed_contribution"] = drop
        (run / "ablation_in_distribution.json").write_text(json.dumps(ablation))
    report = build_report([root], boot=BootstrapSettings(reps=2000))
    by_ptm = {c.ptm: c for c in report.contributions}
    assert set(by_ptm) == {"signal", "blank"} and by_ptm["signal"].seeds == [0, 1, 2]
    assert by_ptm["signal"].contribution["removed"].value == pytest.approx(0.35)  # IQM of 3 values: the middle one
    assert by_ptm["signal"].contribution["removed"].low <= 0.35 <= by_ptm["signal"].contribution["removed"].high
    assert by_ptm["blank"].contribution["removed"].value == pytest.approx(0.0, abs=1e-6)
    assert list(report.attention_samples) == ["signal_arm"]
    assert report_main([str(root), "--reps", "500"]) == 0
    out = root / "report"
    md = (out / "report.md").read_text()
    assert "## PTM contribution" in md and "| signal_arm | signal | 3 |" in md
    for fig in ("attention_states.png", "contribution.png"):
        assert (out / fig).stat().st_size > 5000 and f"({fig})" in md
    assert "PTM contribution" in capsys.readouterr().out
    assert json.loads((out / "report.json").read_text())["contributions"][0]["ptm"] == "signal"


def test_an_unreadable_ablation_file_is_left_out_with_a_note(tmp_path: Path):
    from test_report import make_run

    run = make_run(tmp_path, "r", "wsa", 0, 0.8)
    (run / "ablation_in_distribution.json").write_text("{not json")
    report = build_report([tmp_path], boot=BootstrapSettings(reps=200))
    assert report.contributions == [] and any("ablation_in_distribution.json is not readable JSON" in n for n in report.notes)
    write_report(report, tmp_path / "out", [str(tmp_path)], plots=False)
    assert "## PTM contribution" not in (tmp_path / "out" / "report.md").read_text()
