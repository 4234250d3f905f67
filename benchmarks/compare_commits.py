"""Per-iteration cost of the main arms at this checkout vs another commit, measured alternately in one sitting.

    python benchmarks/compare_commits.py --base acf3ce8 --rounds 5 --out benchmarks/cpu_vs_acf3ce8.json

Each round runs `python -m wsa_lab.bench --only arms --repeats 1` once for each tree (the other commit is
checked out in a temporary git worktree and imported through PYTHONPATH, with this venv's packages), the
order of the two trees alternating from round to round so that load drifts hit both alike. Per arm it reports
the median over rounds of the seconds per PPO iteration and the ratio head / base.
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

REPO = Path(__file__).resolve().parents[1]


def bench_once(src: Path, out: Path, extra: list[str]) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, "-m", "wsa_lab.bench", "--only", "arms", "--repeats", "1", "--warmup", "1", "--no-memory",
           "--weights", "synthetic", "--out", str(out), *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"bench failed in {src}:\n{proc.stderr[-3000:]}")
    return {row["arm"]: row["iteration_s"] for row in json.loads(out.read_text())["arms"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit to compare against (e.g. the previous one)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="compare.json")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides passed to both benches")
    args = parser.parse_args()
    samples: dict[str, dict[str, list[float]]] = {"base": {}, "head": {}}
    with tempfile.TemporaryDirectory() as tmp:
        base_tree = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(base_tree), args.base], check=True,
                       capture_output=True)
        try:
            trees = {"base": base_tree / "src", "head": REPO / "src"}
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
