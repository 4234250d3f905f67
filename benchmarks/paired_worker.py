"""One tree's side of `compare_commits.py --paired`: builds one bench arm and runs PPO iterations on request.

Run with the tree's `src` on PYTHONPATH (so `wsa_lab` is that tree's). It uses that tree's own bench
(:func:`load_bench`). Reads one JSON line per request on stdin:
``{"arm": name}`` builds that arm of the tree's own `ARMS` (synthetic weight files, seed 0) and
times one warm-up iteration; ``{"iterate": true}`` times one iteration. Each answer is one line on stdout that
starts with ``RESULT `` (anything else the libraries print is not read).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import tempfile
from pathlib import Path
from types import ModuleType


def load_bench() -> ModuleType:
    """The bench of the tree `wsa_lab` is imported from: its `benchmarks/bench.py`, or `wsa_lab.bench` in trees
    from before the bench moved out of the package (e.g. af03240)."""
    import wsa_lab

    script = Path(wsa_lab.__file__).resolve().parents[2] / "benchmarks" / "bench.py"
    if not script.is_file():
        return importlib.import_module("wsa_lab.bench")
    spec = importlib.util.spec_from_file_location("tree_bench", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def main() -> None:
    bench = load_bench()
    # removed when stdin closes (the synthetic weight files are 128 MB per worker; mkdtemp left them behind)
    with tempfile.TemporaryDirectory(prefix="paired_worker_") as workdir:
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
