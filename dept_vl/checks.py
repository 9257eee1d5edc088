"""The one way dept_vl checks a value it did not make: a config key, a field of a file it wrote,
a method's setting. `Where` says where the value was read (a file or "command line", and a key
path); a check names it in the error it raises, whose class the caller's `Where` carries
(ConfigError for configs, AdapterError / BackboneError for folders, ValueError in Python):

    cfg.yaml: model.t5.d_modle: unknown key (did you mean 'd_model'?); T5Config fields: ...
    runs/a/adapter/adapter_config.json: d_model: must be >= 1, got 0
    DePTConfig: rank: must be >= 0, got -2

Types: `typed` turns what YAML parsed into the declared type (int → float, the text "1e-4" →
1e-4); `strict=True` (files dept_vl wrote, values built in Python) takes a value of the type
only. Floats are finite, booleans are never numbers. Data rows have their own checks and
reasons (dept_vl/data/rows.py): a bad row may be skipped by policy, a bad setting never.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Where:
    """Where a value was read: its file ("command line"; None for a value built in Python), its
    key path (`model.t5.d_model`, `train_file[1].format`), and the error class to raise."""

    source: str | None
    path: str = ""
    kind: type[Exception] = ValueError

    def key(self, name: Any) -> "Where":
        return dataclasses.replace(self, path=f"{self.path}.{name}" if self.path else str(name))

    def item(self, index: int) -> "Where":
        return dataclasses.replace(self, path=f"{self.path}[{index}]")

    def error(self, problem: str) -> Exception:
        parts = [str(part) for part in (self.source, self.path) if part]
        error = self.kind(": ".join([*parts, problem]))
        error.where, error.problem = self, problem  # a caller may name the place its own way
        return error


Rule = Callable[[Any, Where], Any]  # a checked value (maybe normalised), or the Where's error


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


def typed(hint: Any, value: Any, where: Where, strict: bool = False) -> Any:
    """Coerce what YAML parsed to the type `hint` (int → float, text "1e-4" → 1e-4), or say
    where it is wrong; `strict`: no text becomes a number. Floats must be finite: `.nan`,
    `.inf` and "nan" never get through."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    for kind in allowed:
        origin = typing.get_origin(kind) or kind
        if kind is Any:
            return value
        numbers = (int, float) if strict else (int, float, str)
        if origin is float and not isinstance(value, bool) and isinstance(value, numbers):
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


def checked(hint: Any, rule: Rule | None, value: Any, where: Where, strict: bool = False) -> Any:
    value = typed(hint, value, where, strict)
    return value if rule is None or value is None else rule(value, where)


Spec = dict[str, tuple[Any, "Rule | None"]]  # key → (type, rule) of a mapping's values


def check_mapping(value: Any, spec: Spec, where: Where, label: str,
                  required: tuple[str, ...] = (), closed: bool = True,
                  strict: bool = False) -> dict[str, Any]:
    """A mapping's keys checked against `spec` (the first unknown one named, with the
    `label`led list of what is allowed; `closed=False` leaves unknown keys as they are), its
    required keys present, and each value checked (`strict`: see `typed`)."""
    if not isinstance(value, dict):
        raise where.error(f"expected a mapping, got {shown(value)}")
    for key in value:
        if key not in spec and closed:
            close = difflib.get_close_matches(str(key), list(spec), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise where.key(key).error(f"unknown key{hint}; {label}: {', '.join(sorted(spec))}")
    missing = [key for key in required if value.get(key) is None]
    if missing:
        raise where.error(f"needs {' and '.join(missing)}")
    return {key: checked(*spec[key], item, where.key(key), strict) if key in spec else item
            for key, item in value.items()}
