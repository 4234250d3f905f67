"""Strict conversion of config sections to their dataclasses (`wsa_lab.config.schema`): unknown keys and wrong
types are one-line errors.

Hydra's ConfigStore can type-check a section against a dataclass too, but its errors are multi-line
(full_key/object_type blocks) with no did-you-mean for a misspelt key, and it checks no ranges; here each
failure is one line naming the key, and `check_range` covers NaN and the bounds.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import operator
import types
import typing
from typing import Any, Mapping, TypeVar

from omegaconf import DictConfig, OmegaConf

from wsa_lab.errors import ConfigError

T = TypeVar("T")


def _allowed_types(annotation: Any) -> tuple[type, ...]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return tuple(t for arg in typing.get_args(annotation) for t in _allowed_types(arg))
    if annotation is typing.Any:
        return (object,)
    if origin is not None:
        return (origin,)
    return (annotation,)


def _type_ok(value: Any, annotation: Any) -> bool:
    allowed = _allowed_types(annotation)
    if value is None:
        return type(None) in allowed
    if isinstance(value, bool):  # bool is an int subclass; only accept it where bool is declared
        return bool in allowed or object in allowed
    if isinstance(value, int) and float in allowed:
        return True
    return isinstance(value, tuple(t for t in allowed if t is not type(None)))


def unknown_key_error(key: object, valid: list[str], where: str) -> ConfigError:
    """`<where>: unknown key 'x' (did you mean 'y'?)`, or the list of valid keys when nothing is close."""
    close = [v for v in valid if str(key) in v] or difflib.get_close_matches(str(key), valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f"; valid keys: {', '.join(valid)}"
    return ConfigError(f"{where}: unknown key '{key}'{hint}")


def structured(cls: type[T], data: Mapping[str, Any] | DictConfig | None, where: str) -> T:
    """Build dataclass `cls` from `data`, naming the config path `where` in any error.

    Unknown keys get a did-you-mean hint; values of the wrong type say what was expected.
    """
    if isinstance(data, DictConfig):
        data = OmegaConf.to_container(data, resolve=True)
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise unknown_key_error(key, list(fields), where)
    for name, field in fields.items():
        if name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where}: missing required key '{name}'")
            continue
        if not _type_ok(data[name], hints[name]):
            raise ConfigError(f"{where}.{name}: expected {_type_name(hints[name])}, got {data[name]!r}")
    return cls(**data)


def _type_name(annotation: Any) -> str:
    names = [getattr(t, "__name__", str(t)) for t in _allowed_types(annotation)]
    return " or ".join("null" if n == "NoneType" else n for n in names)


#: Seeds numpy and torch both accept (numpy's legacy seeding takes [0, 2**32 - 1]).
MAX_SEED = 2**32 - 1


def check_range(
    where: str,
    value: Any,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    none_ok: bool = False,
) -> None:
    """One-line ConfigError unless `value` is a finite number within the bounds (`ge` <= value, `gt` < value, ...).

    NaN and infinities fail every range, so `algo.clip_coef=nan` is named here, not at the first update.
    """
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    given = ((operator.ge, ">=", ge), (operator.gt, ">", gt), (operator.le, "<=", le), (operator.lt, "<", lt))
    bounds = [(test, sign, bound) for test, sign, bound in given if bound is not None]
    if not all(test(value, bound) for test, _, bound in bounds):
        raise ConfigError(f"{where} must be {' and '.join(f'{sign} {b}' for _, sign, b in bounds)}, got {value!r}")
