"""`python -m wsa_lab [overrides]`: the Hydra entry point. Thin on purpose: `main(cfg)` calls `train(cfg)`.

`entry()` wraps it for sweeps (`-m`): after the last job it prints the sweep's outcome, one line per failed
job, and exits non-zero when any failed (see `wsa_lab.sweep`).
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from wsa_lab.config import config_dir
from wsa_lab.errors import WsaLabError
from wsa_lab.sweep import finish_sweep
from wsa_lab.train import train

log = logging.getLogger("wsa_lab")


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def main(cfg: DictConfig) -> float:
    try:
        summary = train(cfg)
    except (WsaLabError, OmegaConfBaseException) as exc:
        # One clear line instead of a traceback (Hydra's convention: HYDRA_FULL_ERROR=1 shows it).
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # in a sweep, let the launcher record this job as failed and go on with the others
        print(f"wsa_lab: error: {exc}", file=sys.stderr)
        sys.exit(1)
    metric = summary["metric"]  # evaluation.metric: eval/greedy_ratio on the coverage env
    log.info("done: %s=%.3f in %s", metric, summary[metric], HydraConfig.get().runtime.output_dir)
    return summary[metric]  # the objective a Hydra sweeper would optimise


def entry() -> None:
    args = sys.argv[1:]
    # `--cfg job|hydra|all` shows the config a run would use, so resolved (e.g. the PTM list actually used)
    if any(a in ("--cfg", "-c") or a.startswith("--cfg=") for a in args) and not {"--resolve"} & set(args):
        sys.argv.append("--resolve")
    try:
        main()
    finally:
        failed = finish_sweep()  # a sweep's outcome; 0 when no sweep ran
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    entry()
