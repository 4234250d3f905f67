"""`python -m wsa_lab [overrides]`: the Hydra entry point. Thin on purpose: `main(cfg)` calls `train(cfg)`.

`entry()` checks the command line first (a misspelt key: one line with a did-you-mean). A sweep (`-m`) ends with
one line per failed job and exit code 1 (the `wsa_lab` sweeper, see `wsa_lab.run.sweep`).
"""

from __future__ import annotations

import signal
import sys


def _interrupted_outside_training(signum: int, frame: object) -> None:
    """Ctrl-C while torch loads, Hydra composes or the env is built (StopSignals takes over while training)."""
    print("wsa_lab: interrupted while starting up or shutting down (not while training: no checkpoint to write); "
          "rerun the same command to continue", file=sys.stderr)
    raise SystemExit(130)


if __name__ == "__main__":  # only as the CLI: importing torch takes seconds, and a Ctrl-C then is no traceback
    signal.signal(signal.SIGINT, _interrupted_outside_training)

import logging  # noqa: E402
from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from omegaconf.errors import OmegaConfBaseException  # noqa: E402

from wsa_lab.conf_files import config_dir  # noqa: E402
from wsa_lab.errors import WsaLabError, exit_with_one_line  # noqa: E402
from wsa_lab.train import train  # noqa: E402

log = logging.getLogger("wsa_lab")


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def main(cfg: DictConfig) -> float:
    try:
        summary = train(cfg)
    except (WsaLabError, OmegaConfBaseException) as exc:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # in a sweep, let the launcher record this job as failed and go on with the others
        # One clear line instead of a traceback (HYDRA_FULL_ERROR=1 shows it). The folder Hydra made for this
        # run that never started is removed on exit (wsa_lab.run.startup).
        exit_with_one_line("wsa_lab", exc)
    metric = summary["metric"]  # evaluation.metric: eval/greedy_ratio on the coverage env
    log.info("done: %s=%.3f in %s", metric, summary[metric], HydraConfig.get().runtime.output_dir)
    return summary[metric]  # the objective a Hydra sweeper would optimise


def unknown_override(args: list[str]) -> str | None:
    """A CLI override of a key that does not exist (`algo.learning_rte=0.1`), with a did-you-mean, or None.

    Hydra's own message for it only suggests appending the key with `+`; this names the keys that do exist. The
    config is composed once with the command's group choices (`experiment=...`, `ptm=[...]`, `--config-dir`);
    anything this check cannot decide is left to Hydra.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from wsa_lab.config.strict import unknown_key_error

    root = config_dir()
    extra_dirs = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--config-dir", "-cd")]
    extra_dirs += [a.split("=", 1)[1] for a in args if a.startswith("--config-dir=")]
    groups = {p.name for p in root.iterdir() if p.is_dir()} | {
        p.name for d in extra_dirs if Path(d).is_dir() for p in Path(d).iterdir() if p.is_dir()
    }
    try:
        parsed = OverridesParser.create().parse_overrides([a for a in args if "=" in a and not a.startswith("-")])
    except Exception:  # noqa: BLE001 - a syntax error: Hydra's message is the right one
        return None
    choices, keys = [], []
    for override in parsed:
        key = override.key_or_group
        if override.is_add() or override.is_force_add() or override.is_delete() or key.startswith("hydra"):
            continue
        if key.split("@")[0] in groups:
            if override.is_sweep_override():
                return None  # a sweep over a group: the keys may differ between its choices
            choices.append(override.input_line)
        else:
            keys.append(key)
    if not keys:
        return None
    searchpath = [f"hydra.searchpath=[{','.join('file://' + str(Path(d).absolute()) for d in extra_dirs)}]"] if extra_dirs else []
    try:
        with initialize_config_dir(config_dir=str(root), version_base="1.3"):
            cfg = compose("config", overrides=[*choices, *searchpath])
    except Exception:  # noqa: BLE001
        return None
    for key in keys:
        parent, _, last = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        # `in` is False for a key whose value is `???` (mandatory): compare with the key names instead
        if node is not None and hasattr(node, "keys") and last not in [str(k) for k in node.keys()]:
            return str(unknown_key_error(last, [str(k) for k in node.keys()], parent or "config"))
    return None


def entry() -> None:
    args = sys.argv[1:]
    if "--help" not in args and "-h" not in args:
        problem = unknown_override(args)
        if problem is not None:
            exit_with_one_line("wsa_lab", f"{problem}; to add a new key on purpose, prefix it with + (+KEY=VALUE)")
    # `--cfg job|hydra|all` shows the config a run would use, so resolved (e.g. the PTM list actually used)
    if any(a in ("--cfg", "-c") or a.startswith("--cfg=") for a in args) and not {"--resolve"} & set(args):
        sys.argv.append("--resolve")
    main()


if __name__ == "__main__":
    entry()
