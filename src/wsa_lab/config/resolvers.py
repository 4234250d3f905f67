"""The OmegaConf resolvers wsa_lab's config files use: `${wsa_lab.ptm_list:...}`, `${wsa_lab.pid:}` and
`${wsa_lab.required:...}`."""

from __future__ import annotations

import os
from typing import Any, NoReturn

from omegaconf import DictConfig, ListConfig, OmegaConf

from wsa_lab.conf_files import config_dir, yaml_defaults
from wsa_lab.errors import ConfigError, first_line


def ptm_list(pool: DictConfig | dict | None, count: int | None = None) -> ListConfig:
    """`${wsa_lab.ptm_list:${ptm},${ptm_count}}`: the `ptm` group's entries in order, the first `count` if set.

    A shipped PTM whose `weights` were overridden (`ptm.resnet18_imagenet.weights=random`) is renamed
    `<name>@<weights>`, so that no summary, W&B tag, report row or plot legend calls random weights "imagenet".
    A ListConfig, not a list: `OmegaConf.resolve` (what `--cfg job --resolve` runs) can only put a config
    node in place of the interpolation.
    """
    pool = OmegaConf.to_container(pool, resolve=True) if isinstance(pool, DictConfig) else dict(pool or {})
    entries = [_labelled(str(key), dict(entry)) for key, entry in pool.items()]
    return OmegaConf.create(entries if count is None else entries[: int(count)])


def _labelled(key: str, entry: dict[str, Any]) -> dict[str, Any]:
    """`entry`, renamed `<name>@<weights>` when it is a shipped PTM (conf/ptm/<key>.yaml) under its shipped name
    whose weights differ from the shipped ones."""
    path = config_dir() / "ptm" / f"{key}.yaml"
    if not path.is_file():
        return entry
    shipped = yaml_defaults(f"ptm/{key}.yaml").get(key) or {}
    if entry.get("name") == shipped.get("name") and entry.get("weights") != shipped.get("weights"):
        entry["name"] = f"{entry['name']}@{entry.get('weights')}"
    return entry


class RequiredKeyError(ConfigError):
    """A key the chosen experiment needs was not set on the command line."""


def required(key: str, what: str) -> NoReturn:
    """`${wsa_lab.required:init_from,<what to set>}`: an experiment's key the user must set (`key=...` replaces the
    interpolation). Not `???`: OmegaConf's merge keeps config.yaml's default over an experiment's `???`."""
    raise RequiredKeyError(f"{key} is required here: {what}")


def required_key_error(exc: BaseException) -> ConfigError:
    """The one-line error behind an interpolation that failed (OmegaConf wraps the resolver's own error)."""
    inner = exc.__cause__ or exc.__context__
    if isinstance(inner, ConfigError):
        return inner
    return ConfigError(first_line(exc))


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("wsa_lab.required"):
        OmegaConf.register_new_resolver("wsa_lab.required", required)
    if not OmegaConf.has_resolver("wsa_lab.ptm_list"):
        OmegaConf.register_new_resolver("wsa_lab.ptm_list", ptm_list)
    if not OmegaConf.has_resolver("wsa_lab.pid"):
        # `${wsa_lab.pid:}` in run/sweep folder names: cached like `${now:}`, so a sweep's jobs (also Slurm
        # array tasks, whose pickled config carries the cache) see the submitting process's id
        OmegaConf.register_new_resolver("wsa_lab.pid", os.getpid, use_cache=True)
