"""Per-iteration cost of the main arms at this checkout vs another commit, measured alternately in one sitting.

    python benchmarks/compare_commits.py --base acf3ce8 --rounds 5 --out benchmarks/cpu_vs_acf3ce8.json

Each round runs the bench (`benchmarks/bench.py --only arms --repeats 1`) once for each tree (the other commit is
checked out in a temporary git worktree and imported through PYTHONPATH, with this venv's packages), the
order of the two trees alternating from round to round so that load drifts hit both alike. Per arm it reports
the median over rounds of the seconds per PPO iteration and the ratio head / base.

    python benchmarks/compare_commits.py --base acf3ce8 --paired 8 --out benchmarks/cpu_vs_acf3ce8_paired.json

`--paired N` instead keeps one process per tree alive per arm (`benchmarks/paired_worker.py`; each builds the
arm and runs one warm-up iteration) and alternates single iterations between them, N per tree, in the order
base-head-head-base...: each head iteration is timed next to a base one, so load drifts slower than an
iteration cancel in the per-pair ratio. Only one of the two processes computes at a time. Per arm it reports
the median of the pairs' ratios with a bootstrap 95% interval, and the medians of each tree's times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from wsa_lab.stats import Estimate, bootstrap_ci

REPO = Path(__file__).resolve().parents[1]


def bench_command(src: Path) -> list[str]:
    """How to start a tree's bench: the `benchmarks/bench.py` beside its `src`, or `-m wsa_lab.bench` in trees from
    before the bench moved out of the package (e.g. af03240)."""
    script = src.parent / "benchmarks" / "bench.py"
    return [sys.executable, str(script)] if script.is_file() else [sys.executable, "-m", "wsa_lab.bench"]


def bench_once(src: Path, out: Path, extra: list[str]) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [*bench_command(src), "--only", "arms", "--repeats", "1", "--warmup", "1", "--no-memory",
           "--weights", "synthetic", "--out", str(out), *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"bench failed in {src}:\n{proc.stderr[-3000:]}")
    return {row["arm"]: row["iteration_s"] for row in json.loads(out.read_text())["arms"]}


class Worker:
    """A `paired_worker.py` process with one tree's `wsa_lab` on its path."""

    def __init__(self, src: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "paired_worker.py")],
                                     env={**os.environ, "PYTHONPATH": str(src)}, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def ask(self, request: dict) -> dict[str, float]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith("RESULT "):
                return json.loads(line[len("RESULT "):])
        raise SystemExit(f"paired worker exited with {self.proc.wait()} (its error is printed above)")

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait()


def iteration_s(sample: dict[str, float]) -> float:
    return sample["rollout_s"] + sample["update_s"]


def pair_ratio_estimate(ratios: list[float]) -> Estimate:
    """Median of the per-pair ratios with the report's percentile bootstrap 95% interval."""
    return bootstrap_ci(np.asarray(ratios), np.median)


def paired_arm(arm: str, trees: dict[str, Path], pairs: int, overrides: list[str]) -> dict:
    """`pairs` iterations per tree of one arm, alternating base-head-head-base...; ratios of adjacent pairs."""
    workers = {label: Worker(src) for label, src in trees.items()}
    try:
        for worker in workers.values():  # build + one warm-up iteration each, not timed
            worker.ask({"arm": arm, "overrides": overrides})
        times: dict[str, list[float]] = {"base": [], "head": []}
        phases: dict[str, list[dict[str, float]]] = {"base": [], "head": []}
        for i in range(pairs):
            for label in (["base", "head"] if i % 2 == 0 else ["head", "base"]):
                phases[label].append(workers[label].ask({"iterate": True}))
                times[label].append(iteration_s(phases[label][-1]))
            print(f"{arm} pair {i + 1}/{pairs}: base {times['base'][-1]:.2f}s head {times['head'][-1]:.2f}s",
                  file=sys.stderr, flush=True)
    finally:
        for worker in workers.values():
            worker.close()
    ratios = [h / b for h, b in zip(times["head"], times["base"])]
    ratio = pair_ratio_estimate(ratios)
    return {"arm": arm, "base_s": statistics.median(times["base"]), "head_s": statistics.median(times["head"]),
            "ratio": ratio.value, "ratio_ci95": [ratio.low, ratio.high],
            "base_all": times["base"], "head_all": times["head"], "pair_ratios": ratios,
            "phases": {label: {key: statistics.median(p[key] for p in phases[label]) for key in ("rollout_s", "update_s")}
                       for label in phases}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit to compare against (e.g. the previous one)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="compare.json")
    parser.add_argument("--paired", type=int, default=0, metavar="N",
                        help="alternate single iterations of one live process per tree, N per tree and arm")
    parser.add_argument("--arms", nargs="*", default=None, help="--paired only: these arms (default: all)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides passed to both benches")
    args = parser.parse_args()
    samples: dict[str, dict[str, list[float]]] = {"base": {}, "head": {}}
    with tempfile.TemporaryDirectory() as tmp:
        base_tree = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(base_tree), args.base], check=True,
                       capture_output=True)
        try:
            trees = {"base": base_tree / "src", "head": REPO / "src"}
            if args.paired:
                from bench import ARMS  # this checkout's (benchmarks/ is this script's folder)

                paired_rows = [paired_arm(arm, trees, args.paired, args.overrides) for arm in (args.arms or ARMS)]
            else:
                for round_ in range(args.rounds):
                    order = ["base", "head"] if round_ % 2 == 0 else ["head", "base"]
                    for label in order:
                        times = bench_once(trees[label], Path(tmp) / f"{label}_{round_}.json", args.overrides)
                        for arm, seconds in times.items():
                            samples[label].setdefault(arm, []).append(seconds)
                        print(f"round {round_ + 1}/{args.rounds} {label}: "
                              + ", ".join(f"{a} {s:.2f}s" for a, s in times.items()), file=sys.stderr, flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base_tree)], check=False)
    head_rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=False).stdout.strip()
    if args.paired:
        print(f"| arm | {args.base} s/iteration | {head_rev} (+ working tree) s/iteration | median pair ratio [95% CI] |")
        print("|---|---|---|---|")
        for r in paired_rows:
            lo, hi = r["ratio_ci95"]
            print(f"| {r['arm']} | {r['base_s']:.2f} | {r['head_s']:.2f} | {r['ratio']:.3f} [{lo:.3f}, {hi:.3f}] |")
        Path(args.out).write_text(json.dumps({"base": args.base, "head": head_rev, "paired": args.paired,
                                              "overrides": args.overrides, "rows": paired_rows}, indent=2))
        return
    rows = []
    for arm in samples["head"]:
        base, head = statistics.median(samples["base"][arm]), statistics.median(samples["head"][arm])
        rows.append({"arm": arm, "base_s": base, "head_s": head, "ratio": head / base,
                     "base_all": samples["base"][arm], "head_all": samples["head"][arm]})
    print(f"| arm | {args.base} s/iteration | {head_rev} (+ working tree) s/iteration | ratio |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['arm']} | {r['base_s']:.2f} | {r['head_s']:.2f} | {r['ratio']:.3f} |")
    Path(args.out).write_text(json.dumps({"base": args.base, "head": head_rev, "rounds": args.rounds,
                                          "overrides": args.overrides, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
