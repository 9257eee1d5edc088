"""The checks every config value goes through: where it was read (file and key path), its
type (YAML's `1e-4` is text: it becomes a float; floats must be finite), its range or choices,
and a nested mapping's keys. Errors are `ConfigError`s naming the file and key path, e.g.
`cfg.yaml: model.t5.d_modle: unknown key (did you mean 'd_model'?)`.
"""

from __future__ import annotations

import difflib
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable

from dept_vl.errors import UserError


class ConfigError(UserError, ValueError):
    """A bad config file or command-line override; the message names the key (and file)."""


# ---------------------------------------------------------------------------- where and rules
@dataclass(frozen=True)
class Where:
    """Where a value was read: its file ("command line"; None for a config built in Python)
    and its key path (`model.t5.d_model`, `train_file[1].format`)."""

    source: str | None
    path: str = ""

    def key(self, name: Any) -> "Where":
        return Where(self.source, f"{self.path}.{name}" if self.path else str(name))

    def item(self, index: int) -> "Where":
        return Where(self.source, f"{self.path}[{index}]")

    def error(self, problem: str) -> ConfigError:
        parts = [part for part in (self.source, self.path) if part]
        return ConfigError(": ".join([*parts, problem]))


Rule = Callable[[Any, Where], Any]  # a checked value (maybe normalised) or a ConfigError


@dataclass(frozen=True)
class Bound:
    """A number's range: at least `low` (above it when `above`), below `high` when given."""

    low: float
    above: bool = False
    high: float | None = None

    def __call__(self, value: Any, where: Where) -> Any:
        inside = value > self.low if self.above else value >= self.low
        if not (math.isfinite(value) and inside and (self.high is None or value < self.high)):
            raise where.error(f"must be {self}, got {value!r}")
        return value

    def __str__(self) -> str:
        low, high = _number(self.low), _number(self.high)
        return f"in [{low}, {high})" if high else f"{'>' if self.above else '>='} {low}"


@dataclass(frozen=True)
class Choice:
    options: tuple[str, ...]

    def __call__(self, value: Any, where: Where) -> Any:
        if value not in self.options:
            raise where.error(f"must be one of {self.options}, got {value!r}")
        return value


POSITIVE = Bound(0, above=True)
AT_LEAST_0 = Bound(0)
AT_LEAST_1 = Bound(1)
SEED = Bound(0, high=2**31)  # numpy wants < 2**32, and runs add epochs to the seed


def _number(value: float | None) -> str:
    return "" if value is None else str(int(value)) if value == int(value) else f"{value:g}"


def nonempty(value: Any, where: Where) -> Any:
    if not value:
        raise where.error("must not be empty")
    return value


def shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _is(value: Any, kind: Any) -> bool:
    if kind is Any or typing.get_args(kind):  # a nested mapping: its own rule names the key
        return True
    return isinstance(value, kind)


def _items_fit(kind: Any, value: Any) -> bool:
    """Whether a list's items / a mapping's keys and values have the types `kind` names (one
    level deep: what a nested mapping holds is its own rule's to check)."""
    args = typing.get_args(kind)
    if not args:
        return True
    if isinstance(value, list):
        return all(_is(item, args[0]) for item in value)
    return all(_is(key, args[0]) and _is(item, args[1]) for key, item in value.items())


def typed(hint: Any, value: Any, where: Where) -> Any:
    """Coerce what YAML parsed to the type `hint` (int → float, text "1e-4" → 1e-4), or say
    where it is wrong. Floats must be finite: `.nan`, `.inf` and "nan" never get through."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    for kind in allowed:
        origin = typing.get_origin(kind) or kind
        if kind is Any:
            return value
        if origin is float and not isinstance(value, bool) and isinstance(value, (int, float, str)):
            try:
                number = float(value)
            except ValueError:
                continue
            if not math.isfinite(number):
                raise where.error(f"must be a finite number, got {value!r}")
            return number
        if origin is int and isinstance(value, bool):
            continue
        if isinstance(origin, type) and isinstance(value, origin) and _items_fit(kind, value):
            return value
    raise where.error(f"expected {_type_name(hint)}, got {shown(value)}")


def checked(hint: Any, rule: Rule | None, value: Any, where: Where) -> Any:
    value = typed(hint, value, where)
    return value if rule is None or value is None else rule(value, where)


Spec = dict[str, tuple[Any, "Rule | None"]]  # key → (type, rule) of a mapping's values


def check_mapping(value: Any, spec: Spec, where: Where, label: str,
                   required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A nested mapping's keys checked against `spec` (the first unknown one named, with the
    `label`led list of what is allowed), its required keys present, and each value checked."""
    if not isinstance(value, dict):
        raise where.error(f"expected a mapping, got {shown(value)}")
    for key in value:
        if key not in spec:
            close = difflib.get_close_matches(str(key), list(spec), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise where.key(key).error(f"unknown key{hint}; {label}: {', '.join(sorted(spec))}")
    missing = [key for key in required if value.get(key) is None]
    if missing:
        raise where.error(f"needs {' and '.join(missing)}")
    return {key: checked(*spec[key], item, where.key(key)) for key, item in value.items()}
