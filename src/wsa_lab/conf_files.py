"""Where wsa_lab's `conf/` is, and the defaults it holds (the one place each config default lives).

Light on purpose (no torch): the CLI needs the folder before anything heavy is imported.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from wsa_lab.errors import ConfigError


def config_dir() -> Path:
    """`conf/` shipped inside the wheel (wsa_lab/conf), else the repository's `conf/` (editable install)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parents[1] / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise ConfigError(f"cannot find wsa_lab's conf/ folder next to {here}; reinstall with `pip install -e .`")


@lru_cache(maxsize=None)
def _load(relative: str) -> dict[str, Any]:
    node = OmegaConf.load(config_dir() / relative)
    return OmegaConf.to_container(node, resolve=False)  # type: ignore[return-value]


def yaml_defaults(relative: str, key: Optional[str] = None) -> dict[str, Any]:
    """The values a config file of `conf/` sets (e.g. ``yaml_defaults("algo/ppo.yaml")``), without `defaults:` and
    `_target_`: what a config section is when nobody overrides it, for code that builds one without Hydra."""
    data = dict(_load(relative))
    if key is not None:
        data = dict(data[key])
    for special in ("defaults", "_target_"):
        data.pop(special, None)
    return data
