"""`python -m wsa_lab.report <sweep folder | run folders | parent folder> ...`: compare ablation arms offline.

Examples:
    python -m wsa_lab.report multirun/2026-11-05/12-00-00-123456
    python -m wsa_lab.report multirun/ --baseline phase1_baseline --out reports/phase1
    python -m wsa_lab.report runs/2026-11-05/*_phase3_* --metric eval/return
    python -m wsa_lab.report multirun/2026-11-05/12-00-00-123456 --wandb-workspace   # + the W&B comparison view
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from wsa_lab.errors import WsaLabError, print_error
from wsa_lab.run.atomic import output_error
from wsa_lab.report import arm_table, build_report, contribution_table, gap_table, text_table, write_report
from wsa_lab.report.analysis import BootstrapSettings


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m wsa_lab.report",
        description="Compare the ablation arms of wsa_lab runs (reads summary.json + metrics.jsonl; no network).",
    )
    parser.add_argument("paths", nargs="+", help="sweep folders, run folders, or any folder above them (searched recursively)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <the one folder given>/report, else ./report)")
    parser.add_argument("--baseline", default=None, help="arm to compare against (default: an arm named *baseline*, else the first)")
    parser.add_argument(
        "--metric", default=None,
        help="summary metric to compare (final scores, probability of improvement); default: the runs' own headline "
        "metric (summary.json's `metric`)",
    )
    parser.add_argument("--curve", choices=("iqm", "mean"), default="iqm", help="statistic of the learning curves over seeds")
    parser.add_argument("--reps", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap (fixed: reports are reproducible)")
    parser.add_argument("--no-plots", action="store_true", help="write the tables only (no matplotlib needed)")
    parser.add_argument(
        "--wandb-workspace", action="store_true",
        help="also build the W&B comparison view of these runs (needs the `dashboard` extra): saved to their W&B project "
        "when online with WANDB_API_KEY, else written to <out>/wandb_workspace.json with the command that publishes it",
    )
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    paths = [Path(p) for p in args.paths]
    out = args.out or (paths[0] / "report" if len(paths) == 1 and paths[0].is_dir() and not (paths[0] / "summary.json").exists() else Path("report"))
    try:
        report = build_report(
            paths, baseline=args.baseline, metric=args.metric, curve_statistic=args.curve,
            boot=BootstrapSettings(reps=args.reps, seed=args.bootstrap_seed),
        )
    except (FileNotFoundError, ValueError) as exc:
        return print_error("wsa_lab.report", exc)
    plots = not args.no_plots
    if plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("wsa_lab.report: matplotlib is not installed; writing tables only (pip install matplotlib)", file=sys.stderr)
            plots = False
    try:
        md = write_report(report, out, [str(p) for p in args.paths], plots=plots)
    except OSError as exc:  # a read-only or missing folder, a full disk: one line naming the file and the fix
        where = Path(exc.filename) if exc.filename else out
        return print_error("wsa_lab.report", output_error(where, exc, "--out") or f"cannot write {where}: {exc.strerror or exc}; choose another --out")
    print(text_table(arm_table(report)))
    if gaps := gap_table(report):
        print("\ngap to each reference (1 - ratio; job shop: the makespan gap)")
        print(text_table(gaps))
    if contribution := contribution_table(report):
        print("\nPTM contribution (headline metric of the agent minus the ablated agent; IQM over seeds [95% CI])")
        print(text_table(contribution))
    for run in report.excluded:
        print(f"left out: {run.path} ({run.problem})")
    for note in report.notes:
        print(f"note: {note}")
    print(f"report: {md}" + (f" (+ {', '.join(p.name for p in report.figures.values())})" if report.figures else ""))
    if args.wandb_workspace:
        from wsa_lab.report.wandb_workspace import write_workspace  # W&B's library only when asked for

        name = "wsa_lab " + "/".join(paths[0].resolve().parts[-2:])  # a sweep's <date>/<time>
        try:
            print(f"wsa_lab.report: {write_workspace(report, out, name)}")
        except WsaLabError as exc:
            return print_error("wsa_lab.report", exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
