"""`python -m wsa_lab.report`: synthetic run folders with hand-checkable numbers, and a real tiny sweep."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import subprocess_env
from test_tracking import MICRO
from wsa_lab.report import build_report, write_report
from wsa_lab.report.__main__ import main as report_main
from wsa_lab.report.analysis import BootstrapSettings
from wsa_lab.report.runs import find_run_dirs

NAMES = ["resnet18_imagenet", "graph_cnn"]


def make_run(
    root: Path, folder: str, arm: str, seed: int, greedy: float, status: str = "completed", ptms: list[str] | None = None,
    steps: tuple[int, ...] = (64, 128), metric: str = "eval/greedy_ratio", env: str = "CoverageEnv",
) -> Path:
    """A run folder as train() leaves it: summary.json + metrics.jsonl (eval every step in `steps`).

    `metric="eval/return"`: a run of an env without references (no eval/greedy_ratio logged)."""
    ptms = NAMES if ptms is None else ptms
    run = root / folder
    run.mkdir(parents=True)
    records = [{"global_step": 0, "reference/greedy_return": 1.0}]
    for k, step in enumerate(steps, start=1):
        frac = k / len(steps)
        record = {"global_step": step, "charts/SPS": 100.0 + seed, "eval/greedy_ratio": greedy * frac, "eval/return": 2 * greedy * frac}
        if metric == "eval/return":
            del record["eval/greedy_ratio"]
        if ptms:
            record.update({"wsa/attention/resnet18_imagenet": 0.5 + 0.1 * frac, "wsa/attention/graph_cnn": 0.5 - 0.1 * frac})
        records.append(record)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = {
        "name": arm, "phase": "phase1", "seed": seed, "status": status, "ptm_names": ptms, "ptm_count": len(ptms),
        "fusion": "wsa" if ptms else None, "wsa_enabled": bool(ptms), "wall_time_s": 10.0 + seed, "global_step": steps[-1],
        "metric": metric, "env": env,
    }
    if status == "completed":
        summary.update({"eval/greedy_ratio": greedy, "eval/return": 2 * greedy, "wsa/health/verdict": "balanced"})
        if metric == "eval/return":
            del summary["eval/greedy_ratio"]
    if status == "failed":
        summary["error"] = "RuntimeError: CUDA out of memory"
    (run / "summary.json").write_text(json.dumps(summary))
    return run


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Two arms x 4 seeds, plus a failed and an unfinished run of the WSA arm with absurd scores."""
    root = tmp_path / "multirun" / "2026-11-05" / "12-00-00-000001"
    for seed, g in enumerate([0.0, 0.0, 0.0, 1.0]):  # hand-checkable: see test_stats
        make_run(root, f"{seed}_phase1_baseline_seed{seed}", "phase1_baseline", seed, g, ptms=[])
    for seed, g in enumerate([0.5, 0.6, 0.7, 0.8]):
        make_run(root, f"{4 + seed}_phase1_wsa3_seed{seed}", "phase1_wsa3", seed, g)
    make_run(root, "8_phase1_wsa3_seed4", "phase1_wsa3", 4, 99.0, status="failed")
    make_run(root, "9_phase1_wsa3_seed5", "phase1_wsa3", 5, 99.0, status="running")
    return root


def test_finds_runs_below_any_folder(sweep: Path, tmp_path: Path):
    assert len(find_run_dirs([sweep])) == 10
    assert len(find_run_dirs([tmp_path])) == 10  # a parent folder: searched recursively
    assert len(find_run_dirs([sweep / "0_phase1_baseline_seed0", sweep / "4_phase1_wsa3_seed0" / "summary.json"])) == 2
    with pytest.raises(FileNotFoundError):
        find_run_dirs([tmp_path / "nope"])


def test_numbers_by_hand(sweep: Path):
    report = build_report([sweep], boot=BootstrapSettings(reps=20_000, seed=3))
    assert report.baseline == "phase1_baseline"
    assert report.metric == "eval/greedy_ratio" and report.final_metrics == ("eval/return", "eval/greedy_ratio")
    base, wsa = report.arms["phase1_baseline"], report.arms["phase1_wsa3"]
    assert base.seeds == [0, 1, 2, 3] and wsa.seeds == [0, 1, 2, 3] and wsa.excluded == 2
    g = "eval/greedy_ratio"
    # baseline [0, 0, 0, 1]: mean 0.25 with CI [0, 0.75]; IQM 0 with CI [0, 1] (worked out in test_stats)
    assert base.final[g]["mean"] == pytest.approx((0.25, 0.0, 0.75))
    assert base.final[g]["iqm"] == pytest.approx((0.0, 0.0, 1.0))
    # WSA [0.5, 0.6, 0.7, 0.8]: IQM = mean(0.6, 0.7); the failed/unfinished 99s are not averaged in
    assert wsa.final[g]["iqm"].value == pytest.approx(0.65)
    assert wsa.final["eval/return"]["mean"].value == pytest.approx(1.3)
    # P(wsa > baseline): 0.5/0.6/0.7/0.8 each beat the three 0s; vs the 1.0 none do -> 12/16
    assert wsa.improvement.value == pytest.approx(0.75)
    assert 0 <= wsa.improvement.low <= 0.75 <= wsa.improvement.high <= 1
    curve = report.curves["phase1_wsa3"][g]
    assert curve.steps == [64, 128] and curve.runs == 4
    assert curve.estimates[-1].value == pytest.approx(0.65)
    assert set(report.attention["phase1_wsa3"]) == set(NAMES) and report.attention["phase1_baseline"] == {}
    assert {r.status for r in report.excluded} == {"failed", "running"}


def test_report_is_reproducible_and_baseline_selectable(sweep: Path):
    a = build_report([sweep], boot=BootstrapSettings(reps=2000))
    b = build_report([sweep], boot=BootstrapSettings(reps=2000))
    assert a.arms["phase1_wsa3"].final == b.arms["phase1_wsa3"].final
    other = build_report([sweep], baseline="phase1_wsa3", boot=BootstrapSettings(reps=500))
    assert other.arms["phase1_baseline"].improvement.value == pytest.approx(0.25)
    with pytest.raises(ValueError, match="not found"):
        build_report([sweep], baseline="phase9")


def test_cli_writes_markdown_json_and_figures(sweep: Path, capsys: pytest.CaptureFixture):
    assert report_main([str(sweep), "--reps", "1000"]) == 0
    out = sweep / "report"
    md = (out / "report.md").read_text()
    for fig in ("learning_curves.png", "attention.png", "compute.png"):
        assert (out / fig).stat().st_size > 1000
        assert f"({fig})" in md
    assert "| phase1_wsa3 |" in md and "4 (+2 left out)" in md
    assert "Runs left out" in md and "CUDA out of memory" in md and "unfinished" in md
    data = json.loads((out / "report.json").read_text())
    assert data["arms"]["phase1_wsa3"]["final"]["eval/greedy_ratio"]["iqm"]["value"] == pytest.approx(0.65)
    assert data["bootstrap"] == {"reps": 1000, "confidence": 0.95, "seed": 0}
    printed = capsys.readouterr().out
    assert "phase1_baseline" in printed and "left out:" in printed
    assert report_main([str(sweep / "nothing_here")]) == 1


def test_runs_with_the_same_name_but_other_ptms_are_split(tmp_path: Path):
    for seed in range(2):
        make_run(tmp_path, f"a{seed}", "wsa3_default", seed, 0.5)
        make_run(tmp_path, f"b{seed}", "wsa3_default", seed, 0.6, ptms=["graph_cnn", "resnet18_random"])
    report = build_report([tmp_path], boot=BootstrapSettings(reps=200))
    assert sorted(report.arms) == [
        "wsa3_default [ptm=graph_cnn,resnet18_random]", "wsa3_default [ptm=resnet18_imagenet,graph_cnn]",
    ]
    assert report.notes


def test_an_unwritable_out_folder_is_one_line(sweep: Path, capsys: pytest.CaptureFixture):
    assert report_main([str(sweep), "--out", "/proc/wsa_lab_report", "--reps", "200"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wsa_lab.report: error: cannot write /proc/wsa_lab_report") and "--out" in err[0]


def test_a_damaged_metrics_line_is_left_out_and_named(tmp_path: Path):
    """One `"global_step": "abc"` line: the report still runs, and its notes name the file."""
    for seed in range(2):
        make_run(tmp_path, f"a{seed}", "arm", seed, 0.5)
    damaged = tmp_path / "a1" / "metrics.jsonl"
    damaged.write_text(damaged.read_text() + '{"global_step": "abc", "eval/greedy_ratio": 9.0}\n')
    report = build_report([tmp_path], boot=BootstrapSettings(reps=200))
    assert len(report.arms["arm"].seeds) == 2
    assert any(note.startswith(str(damaged)) and "1 unreadable line(s)" in note for note in report.notes)


def test_runs_of_different_envs_are_never_pooled_into_one_arm(tmp_path: Path):
    """Both envs call their headline eval/greedy_ratio: the arm is split by env, not averaged over both."""
    for seed in range(2):
        make_run(tmp_path, f"c{seed}", "phase3_hybrid", seed, 0.9)
        make_run(tmp_path, f"u{seed}", "phase3_hybrid", seed, 0.3, env="my_pkg/MyEnv-v0")
    report = build_report([tmp_path], boot=BootstrapSettings(reps=200))
    assert sorted(report.arms) == ["phase3_hybrid [env=CoverageEnv]", "phase3_hybrid [env=my_pkg/MyEnv-v0]"]
    assert len(report.arms["phase3_hybrid [env=CoverageEnv]"].seeds) == 2
    assert any("differ in env" in note for note in report.notes)


def test_the_headline_metric_comes_from_the_runs(tmp_path: Path, capsys: pytest.CaptureFixture):
    """Runs of an env without references (headline eval/return): nothing about greedy is asked for or shown."""
    for seed, g in enumerate([0.1, 0.2]):
        make_run(tmp_path / "plain", f"a{seed}", "plain_a", seed, g, metric="eval/return")
        make_run(tmp_path / "plain", f"b{seed}", "plain_b", seed, g + 0.5, metric="eval/return")
    report = build_report([tmp_path / "plain"], boot=BootstrapSettings(reps=200))
    assert report.metric == "eval/return" and report.final_metrics == ("eval/return",)
    assert not report.excluded  # no run is left out for lacking eval/greedy_ratio
    assert report.arms["plain_b"].final["eval/return"]["mean"].value == pytest.approx(1.3)
    assert report.arms["plain_b"].improvement.value == pytest.approx(1.0)  # (plain_a is the first arm: baseline)
    assert report_main([str(tmp_path / "plain"), "--reps", "200", "--no-plots"]) == 0
    md = (tmp_path / "plain" / "report" / "report.md").read_text()
    assert "greedy" not in md and "| eval/return IQM [95% CI] | eval/return mean [95% CI] | P(return > plain_a) |" in md
    # Runs of two headline metrics in one report: one line naming both, suggesting --metric.
    for seed in range(2):
        make_run(tmp_path / "plain", f"c{seed}", "coverage", seed, 0.7)
    capsys.readouterr()
    assert report_main([str(tmp_path / "plain"), "--no-plots"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "eval/greedy_ratio: 2 runs" in err and "eval/return: 4 runs" in err
    assert "--metric" in err and "Traceback" not in err
    both = build_report([tmp_path / "plain"], metric="eval/return", boot=BootstrapSettings(reps=200))
    assert sorted(both.arms) == ["coverage", "plain_a", "plain_b"] and not both.excluded
    greedy = build_report([tmp_path / "plain"], metric="eval/greedy_ratio", boot=BootstrapSettings(reps=200))
    assert {r.arm for r in greedy.excluded} == {"plain_a", "plain_b"}
    assert all("lacks eval/greedy_ratio" in r.problem for r in greedy.excluded)


def test_one_seed_per_arm_gives_no_probability_of_improvement(tmp_path: Path):
    make_run(tmp_path, "base", "phase1_baseline", 0, 0.2, ptms=[])
    make_run(tmp_path, "wsa", "phase1_wsa3", 0, 0.9)
    report = build_report([tmp_path], boot=BootstrapSettings(reps=200))
    wsa = report.arms["phase1_wsa3"]
    assert wsa.improvement is None and wsa.improvement_note == "needs >= 2 seeds per arm"
    write_report(report, tmp_path / "out", [str(tmp_path)], plots=False)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "n/a (needs >= 2 seeds per arm)" in md and "1.00" not in md.split("## Arms")[1].split("## Runs")[0]
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["arms"]["phase1_wsa3"]["improvement_over_baseline"] is None
    assert data["arms"]["phase1_wsa3"]["improvement_note"] == "needs >= 2 seeds per arm"


def test_a_copied_run_counts_once(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    original = sweep / "4_phase1_wsa3_seed0"
    copy = shutil.copytree(original, tmp_path / "elsewhere" / "wsa3_seed0_copy")
    report = build_report([sweep, copy], boot=BootstrapSettings(reps=500))
    wsa = report.arms["phase1_wsa3"]
    assert wsa.seeds == [0, 1, 2, 3] and wsa.excluded == 3  # the failed, the unfinished and the copy
    (dup,) = [r for r in report.excluded if r.problem.startswith("duplicate")]
    assert dup.path == copy.resolve()  # the run given first stays
    assert dup.problem == f"duplicate of {original.resolve()} (same arm, seed, metrics.jsonl and summary.json)"
    assert wsa.final["eval/greedy_ratio"]["iqm"].value == pytest.approx(0.65)  # as without the copy
    # The same arm and seed with other numbers is a different run: counted, with a note.
    other = make_run(tmp_path / "rerun", "wsa3_seed0_again", "phase1_wsa3", 0, 0.55)
    report = build_report([sweep, other], boot=BootstrapSettings(reps=500))
    assert report.arms["phase1_wsa3"].seeds == [0, 0, 1, 2, 3]
    assert any("seed 0" in note and "all are counted" in note for note in report.notes)
    assert report_main([str(sweep), str(copy), "--reps", "200", "--no-plots", "--out", str(tmp_path / "r")]) == 0
    assert "duplicate of" in (tmp_path / "r" / "report.md").read_text()
    assert "left out: " in capsys.readouterr().out


@pytest.mark.slow
def test_report_on_a_real_two_arm_sweep(tmp_path: Path, fake_torch_home: Path):
    """2 arms x 2 seeds through the real CLI (one Hydra multirun), then the report over the sweep folder."""
    env = subprocess_env(fake_torch_home)
    env.update({"WANDB_MODE": "offline", "WANDB_CONFIG_DIR": str(tmp_path / "wb_cfg"), "WANDB_CACHE_DIR": str(tmp_path / "wb_cache")})
    proc = subprocess.run(
        [sys.executable, "-m", "wsa_lab", "-m", "experiment=phase1_baseline,phase3_hybrid", "seed=0,1", *MICRO],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = list((tmp_path / "multirun").glob("*/*"))
    report = subprocess.run(
        [sys.executable, "-m", "wsa_lab.report", str(sweep), "--reps", "2000"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert report.returncode == 0, report.stderr
    data = json.loads((sweep / "report" / "report.json").read_text())
    assert set(data["arms"]) == {"phase1_baseline", "phase3_hybrid"}
    assert data["baseline"] == "phase1_baseline"
    for arm in data["arms"].values():
        assert sorted(arm["seeds"]) == [0, 1]
        assert arm["final"]["eval/greedy_ratio"]["iqm"]["low"] is not None
    assert data["arms"]["phase3_hybrid"]["improvement_over_baseline"]["value"] is not None
    md = (sweep / "report" / "report.md").read_text()
    assert "learning_curves.png" in md and "attention.png" in md
    print(report.stdout)


def test_gap_to_each_reference_by_hand_for_a_cost_env(tmp_path: Path, capsys: pytest.CaptureFixture):
    """Job-shop style (return = -makespan): the arm and each reference policy against each reference."""
    root = tmp_path / "sweep"
    for seed, (cpsat_ratio, rule_ratio) in enumerate([(0.90, 1.00), (0.80, 0.95), (0.85, 0.97)]):
        run = make_run(root, f"{seed}_arm", "arm", seed, greedy=0.0)
        summary = json.loads((run / "summary.json").read_text())
        summary.update({"metric": "eval/cpsat_ratio", "eval/cpsat_ratio": cpsat_ratio, "eval/mwkr_ratio": rule_ratio})
        (run / "summary.json").write_text(json.dumps(summary))
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        records[0] = {"global_step": 0, "reference/cpsat_return": -100.0, "reference/mwkr_return": -112.0}
        for r in records[1:]:
            r.update({"eval/cpsat_ratio": cpsat_ratio, "eval/mwkr_ratio": rule_ratio})
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    report = build_report([root], boot=BootstrapSettings(reps=200))
    gaps = report.gaps
    assert gaps["arm"]["cpsat"].value == pytest.approx(0.15)  # IQM of 0.10, 0.20, 0.15 (3 runs: all in the middle)
    assert gaps["arm"]["mwkr"].value == pytest.approx(np.mean([0.0, 0.05, 0.03]))
    assert gaps["mwkr (reference)"]["cpsat"].value == pytest.approx(0.12)  # makespan 112 vs the optimum's 100
    assert gaps["cpsat (reference)"]["cpsat"].value == 0 and gaps["cpsat (reference)"]["mwkr"].value == pytest.approx(1 - (2 - 100 / 112))
    assert report_main([str(root), "--no-plots", "--reps", "200"]) == 0
    out = capsys.readouterr().out
    assert "gap to cpsat" in out and "mwkr (reference)" in out and "0.120" in out
    assert "## Gap to each reference" in (root / "report" / "report.md").read_text()


def test_one_evaluation_per_run_draws_no_curve_and_says_why(tmp_path: Path):
    """A small budget evaluates once: one dot per arm is not a learning curve (it was drawn, x axis 1950-2150)."""
    for seed in range(2):
        make_run(tmp_path, f"a{seed}", "phase1_baseline", seed, 0.8, ptms=[], steps=(2048,))
        make_run(tmp_path, f"b{seed}", "phase1_wsa3", seed, 0.7, steps=(2048,))
    report = build_report([tmp_path], boot=BootstrapSettings(reps=200))
    md = write_report(report, tmp_path / "report", [str(tmp_path)]).read_text()
    assert not (tmp_path / "report" / "learning_curves.png").exists() and "learning_curves.png" not in md
    assert "no learning curves: every arm has a single evaluation (at step 2048)" in md
    assert "evaluation.interval=1" in md
    # the health column's words are explained beside the table
    assert "`unknown` = the run ended before `logger.health.min_points`" in md
