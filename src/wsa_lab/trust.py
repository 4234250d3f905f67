"""What a config may call: a run or study folder is data, not code.

wsa_lab builds a run from a config someone may have written elsewhere: `python -m wsa_lab.evaluate <folder>` reads the
folder's `resolved_config.yaml`, a study folder comes in through `--config-dir`. Such a config names callables in
exactly three places, and each is checked here BEFORE anything is called (importing the named module is the only thing
that happens first, as for any dotted path):

- ``env._target_``: a class that is a Gymnasium env or implements the vector env protocol (``reset``, ``step``,
  ``single_observation_space``);
- ``actor_critic._target_``: wsa_lab's own builder;
- a custom PTM's ``target``: an ``nn.Module`` class, or a factory whose return annotation is an ``nn.Module`` class
  (``def make() -> MyEncoder``);

and nowhere else: a ``_target_`` at any other key (``env.pwn._target_=torch.load``) is refused, since
``hydra.utils.instantiate`` would call it. Checkpoints and weight files load with ``torch.load(weights_only=True)``, so
nothing un-pickles. A refusal is one line naming the key and the value. A config you trust (your own study folder
with your own builder) runs unchecked with ``WSA_LAB_TRUST_CONFIG=1``, the way ``torch.load(weights_only=False)``
is the explicit opt-out for checkpoints.
"""

from __future__ import annotations

import os
import typing
from typing import Any, Callable, Iterator

import gymnasium
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from wsa_lab.errors import ConfigError

TRUST_ENV = "WSA_LAB_TRUST_CONFIG"
#: the actor-critic builders a config may name
ACTOR_CRITIC_TARGETS = ("wsa_lab.models.build_actor_critic",)
HINT = f"a run or study folder is data, not code (README: 'Run folders are data'); if you trust this config, set {TRUST_ENV}=1"


class UntrustedConfigError(ConfigError):
    """A config names a callable where wsa_lab's schema allows none, or one of a kind it does not allow there."""


def trusted() -> bool:
    """The user said the config is theirs (``WSA_LAB_TRUST_CONFIG=1``): nothing is checked."""
    return os.environ.get(TRUST_ENV) == "1"


def _targets_below(node: Any, where: str) -> Iterator[tuple[str, Any]]:
    """(key, value) of every ``_target_`` below `node` (not its own)."""
    data = OmegaConf.to_container(node, resolve=False) if isinstance(node, (DictConfig, ListConfig)) else node
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        path = f"{where}.{key}" if isinstance(data, dict) else f"{where}[{key}]"
        if isinstance(value, dict) and "_target_" in value:
            yield f"{path}._target_", value["_target_"]
        if isinstance(value, (dict, list)):
            yield from _targets_below(value, path)


def _refuse(key: str, value: Any, why: str) -> UntrustedConfigError:
    return UntrustedConfigError(f"{key}={value!r}: {why}; {HINT}")


def _no_nested_targets(node: Any, where: str) -> None:
    for key, value in _targets_below(node, where):
        raise _refuse(key, value, "a config may name a callable only at env._target_, actor_critic._target_ and a "
                                  "PTM's target")


def import_object(path: Any, key: str) -> Any:
    """The object `path` names (Hydra's `get_object`), or a one-line ConfigError naming the config `key`."""
    try:
        return get_object(str(path))
    except Exception as exc:  # noqa: BLE001 - ImportError, AttributeError, ...: all mean "cannot find it"
        raise ConfigError(f"{key}={path!r} cannot be imported ({type(exc).__name__}: {exc})") from exc


def is_env_class(obj: Any) -> bool:
    """A Gymnasium env class, or a class with the vector env protocol's ``reset``/``step``/observation space."""
    if not isinstance(obj, type):
        return False
    if issubclass(obj, gymnasium.Env):
        return True
    return callable(getattr(obj, "reset", None)) and callable(getattr(obj, "step", None)) and hasattr(
        obj, "single_observation_space"
    )


def check_env_node(node: DictConfig, where: str = "env") -> None:
    """``env._target_`` is an env class and nothing below it names a callable."""
    if trusted():
        return
    target = node.get("_target_")
    if target is not None and not is_env_class(import_object(target, f"{where}._target_")):
        raise _refuse(f"{where}._target_", target, "must name a Gymnasium env class or a wsa_lab vector env class")
    _no_nested_targets(node, where)


def check_actor_critic_node(node: DictConfig, where: str = "actor_critic") -> None:
    """``actor_critic._target_`` is wsa_lab's builder and nothing below it names a callable (PTM targets are
    checked where they are imported: :func:`check_module_factory`)."""
    if trusted():
        return
    target = node.get("_target_")
    if target not in ACTOR_CRITIC_TARGETS:
        raise _refuse(f"{where}._target_", target, f"must be {' or '.join(ACTOR_CRITIC_TARGETS)}")
    _no_nested_targets(node, where)


def check_module_factory(obj: Callable[..., Any], target: str, who: str) -> None:
    """A PTM's ``target``: an ``nn.Module`` class, or a function annotated to return one; never called otherwise."""
    if trusted():
        return
    if isinstance(obj, type):
        if issubclass(obj, nn.Module):
            return
        raise _refuse(f"{who}: target", target, f"is the class {obj.__name__}, not an nn.Module class")
    try:
        returns = typing.get_type_hints(obj).get("return")
    except Exception:  # noqa: BLE001 - unresolvable annotations (or none readable): not shown to return a module
        returns = None
    if not (isinstance(returns, type) and issubclass(returns, nn.Module)):
        raise _refuse(f"{who}: target", target, "is a function without an nn.Module return annotation (an nn.Module "
                                                "class, or `def make(...) -> MyModule`, is what a PTM target may be)")
