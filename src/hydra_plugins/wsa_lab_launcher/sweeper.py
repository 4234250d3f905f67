"""`hydra/sweeper=wsa_lab` (the default of `python -m wsa_lab -m`): grids as Hydra's basic sweeper makes them, and
an honest end instead of the first failed job's traceback.

Hydra's basic sweeper ends a sweep by raising the first failed job's exception, which prints its traceback on
screen. wsa_lab records every failure as it happens (`<job folder>/FAILED` holds the traceback, the sweep index
the state), so this sweeper, written on Hydra's public `Sweeper` API, leaves each job's result as the launcher
returned it (a failed job stays FAILED) and ends the sweep with `wsa_lab.run.sweep.finish_sweep`: one line per
failed, interrupted or refused job, then exit code 1 (`SystemExit`, which Hydra lets through without a
traceback). Grids: `a=1,2 b=x,y` on the command line and `hydra.sweeper.params`, in batches of `max_batch_size`.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Optional, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.errors import HydraException
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from wsa_lab.run.sweep import SweepStopped, finish_sweep, refusal


class WsaLabSweeper(Sweeper):
    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[dict[str, str]] = None) -> None:
        self.max_batch_size = max_batch_size
        self.params = dict(params or {})
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.launcher: Optional[Launcher] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def batches(self, arguments: Sequence[str]) -> list[list[list[str]]]:
        """Every job's overrides (the grid's cartesian product, in order), split into batches."""
        assert self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        choices: dict[str, list[str]] = {}  # a key given twice: the later one wins, as in Hydra's basic sweeper
        for override in parser.parse_overrides([*(f"{k}={v}" for k, v in self.params.items()), *arguments]):
            key = override.get_key_element()
            if not override.is_sweep_override():
                choices[key] = [f"{key}={override.get_value_element_as_str()}"]
            elif override.is_discrete_sweep():
                choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
            else:
                raise HydraException(f"the wsa_lab sweeper does not sweep {override.input_line} (a range or interval)")
        jobs = [list(job) for job in itertools.product(*choices.values())]
        size = self.max_batch_size if self.max_batch_size and self.max_batch_size > 0 else max(len(jobs), 1)
        return [jobs[i : i + size] for i in range(0, len(jobs), size)]

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        assert self.config is not None and self.launcher is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns: list[Sequence[JobReturn]] = []
        refused: list[str] = []
        try:
            first = 0
            for batch in self.batches(arguments):
                self.validate_batch_is_legal(batch)  # composition errors before any job starts
                results = self.launcher.launch(batch, initial_job_idx=first)
                refused += [line for num, ret in enumerate(results, start=first) if (line := refusal(num, ret))]
                first += len(batch)
                returns.append(results)
        except SweepStopped:
            raise  # the launcher has printed the outcome
        except BaseException:
            finish_sweep(sweep_dir, refused)  # Ctrl-C on in-process jobs: the one line of an interrupted sweep
            raise
        if finish_sweep(sweep_dir, refused):
            raise SystemExit(1)
        return returns
