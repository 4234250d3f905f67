"""Hydra launchers for `conf/hydra/launcher/{slurm,local_parallel}.yaml`, built on hydra-submitit-launcher.

Upstream's launcher (1.2.0) waits for the jobs in order and raises at the first one that ended without a
result (killed, cancelled, time limit), leaving the others unwatched. These wait for every job, turn a job
without a result into a failed `JobReturn`, and record it in the sweep index (`wsa_lab.sweep`):

- `SlurmLauncher`: one Slurm job array per sweep (`array_parallelism` at once). Each array task re-reads
  the config from disk and re-runs `train`, which resumes from the job folder's checkpoint after a requeue.
- `LocalParallelLauncher`: jobs as processes on this machine, at most `max_parallel` at once
  (upstream's `submitit_local` starts them all together).

Both set torch's thread count to `cpus_per_task` inside each job when it is set.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import OmegaConf

from wsa_lab import sweep

log = logging.getLogger(__name__)


class _WaitForAll(BaseSubmititLauncher):
    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:  # runs inside the job
        cpus = self.params.get("cpus_per_task")
        if cpus:
            import torch

            torch.set_num_threads(int(cpus))
        return super().__call__(*args, **kwargs)

    def _executor(self) -> Any:
        """submitit's executor with this launcher's parameters (as upstream's `launch` builds it)."""
        import submitit

        specific_init_keys = {"max_num_timeout"}
        init_params = {"folder": self.params["submitit_folder"]}
        init_params.update({f"{self._EXECUTOR}_{k}": v for k, v in self.params.items() if k in specific_init_keys})
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init_params)
        baseparams = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{
            k if k in baseparams else f"{self._EXECUTOR}_{k}": v
            for k, v in self.params.items()
            if k not in specific_init_keys | {"submitit_folder"}
        })
        return executor

    def _prepare(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> tuple[Path, list[tuple]]:
        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
        params = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            sweep.update_job(sweep_dir, idx, overrides=list(filter_overrides(overrides)), state="pending")
            params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        return sweep_dir, params

    def _collect(self, job: Any, sweep_dir: Path, num: int, overrides: Sequence[str]) -> JobReturn:
        """The job's own JobReturn, or a failed one when it produced no result."""
        try:
            return job.results()[0]
        except Exception as exc:  # UncompletedJobError (killed, cancelled, ...), FailedJobError
            log.error("job #%d (%s) ended without a result: %s", num, job.job_id, str(exc).splitlines()[0])
            sweep.record_lost_job(sweep_dir, num, overrides, exc)
            return JobReturn(overrides=list(overrides), status=JobStatus.FAILED, _return_value=exc)


class SlurmLauncher(_WaitForAll):
    _EXECUTOR = "slurm"

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        sweep_dir, params = self._prepare(job_overrides, initial_job_idx)
        jobs = self._executor().map_array(self, *zip(*params))
        log.info("submitted Slurm job array %s; waiting for %d jobs", jobs[0].job_id.split("_")[0], len(jobs))
        return [
            self._collect(job, sweep_dir, idx, overrides)
            for idx, (job, overrides) in enumerate(zip(jobs, job_overrides), start=initial_job_idx)
        ]


class LocalParallelLauncher(_WaitForAll):
    _EXECUTOR = "local"

    def __init__(self, max_parallel: int = 2, poll_s: float = 0.5, **params: Any) -> None:
        if int(max_parallel) < 1:
            raise ValueError(f"hydra.launcher.max_parallel must be >= 1, got {max_parallel}")
        super().__init__(**params)
        self.max_parallel, self.poll_s = int(max_parallel), float(poll_s)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        sweep_dir, params = self._prepare(job_overrides, initial_job_idx)
        executor = self._executor()
        waiting = list(enumerate(params, start=initial_job_idx))
        running: dict[int, Any] = {}
        returns: dict[int, JobReturn] = {}
        while waiting or running:
            while waiting and len(running) < self.max_parallel:
                idx, job_params = waiting.pop(0)
                running[idx] = executor.submit(self, *job_params)
            for idx, job in list(running.items()):
                if job.done():
                    returns[idx] = self._collect(job, sweep_dir, idx, job_overrides[idx - initial_job_idx])
                    del running[idx]
            time.sleep(self.poll_s)
        return [returns[idx] for idx in sorted(returns)]
