"""The OmegaConf resolvers wsa_lab's config files use: `${wsa_lab.ptm_list:...}` and `${wsa_lab.pid:}`."""

from __future__ import annotations

import os

from omegaconf import DictConfig, ListConfig, OmegaConf


def ptm_list(pool: DictConfig | dict | None, count: int | None = None) -> ListConfig:
    """`${wsa_lab.ptm_list:${ptm},${ptm_count}}`: the `ptm` group's entries in order, the first `count` if set.

    A ListConfig, not a list: `OmegaConf.resolve` (what `--cfg job --resolve` runs) can only put a config
    node in place of the interpolation.
    """
    entries = list(OmegaConf.to_container(pool, resolve=True).values()) if isinstance(pool, DictConfig) else list((pool or {}).values())
    return OmegaConf.create(entries if count is None else entries[: int(count)])


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("wsa_lab.ptm_list"):
        OmegaConf.register_new_resolver("wsa_lab.ptm_list", ptm_list)
    if not OmegaConf.has_resolver("wsa_lab.pid"):
        # `${wsa_lab.pid:}` in run/sweep folder names: cached like `${now:}`, so a sweep's jobs (also Slurm
        # array tasks, whose pickled config carries the cache) see the submitting process's id
        OmegaConf.register_new_resolver("wsa_lab.pid", os.getpid, use_cache=True)
