"""One tree's side of `compare_commits.py --paired`: builds one bench arm and runs PPO iterations on request.

Run with the tree's `src` on PYTHONPATH (so `wsa_lab` is that tree's). Reads one JSON line per request on stdin:
``{"arm": name}`` builds that arm of the tree's own `wsa_lab.bench.ARMS` (synthetic weight files, seed 0) and
times one warm-up iteration; ``{"iterate": true}`` times one iteration. Each answer is one line on stdout that
starts with ``RESULT `` (anything else the libraries print is not read).
"""

from __future__ import annotations

import json
import sys
import tempfile


def main() -> None:
    from wsa_lab import bench

    workdir = tempfile.mkdtemp(prefix="paired_worker_")
    weights_dir, _ = bench.weights_dir_for("synthetic", workdir)
    arm = None
    for line in sys.stdin:
        request = json.loads(line)
        if "arm" in request:
            overrides = [*bench.ARMS[request["arm"]], f"paths.weights_dir={weights_dir}", *request.get("overrides", [])]
            arm = bench.build_arm(request["arm"], overrides, "cpu", workdir)
        sample = bench.run_iteration(arm)
        print("RESULT " + json.dumps(sample), flush=True)


if __name__ == "__main__":
    main()
