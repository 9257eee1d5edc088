"""The method registry: every method module class by its config's `method` name.

A method registers itself where its class is defined (`@register`); everything else looks it
up here by name.
"""

from __future__ import annotations

from typing import Any

from dept_vl.errors import UserError
from dept_vl.methods.base import KINDS, MethodConfig, MethodModule

METHODS: dict[str, type[MethodModule]] = {}


class UnknownMethodError(UserError, ValueError):
    """A method name that is not registered."""


def register(module_class: type[MethodModule]) -> type[MethodModule]:
    """Register a method module class under its config's `method` name (usable as a
    decorator). Registering a name twice replaces the entry only for the same class."""
    name = module_class.config_class.method
    if not name or not name.isidentifier():
        raise ValueError(f"{module_class.__name__}: its config_class needs a `method` name")
    if module_class.kind not in KINDS:
        raise ValueError(f"{module_class.__name__}.kind must be one of {KINDS}")
    known = METHODS.get(name)
    if known is not None and known.__qualname__ != module_class.__qualname__:
        raise ValueError(f"method {name!r} is already registered by {known.__qualname__}")
    METHODS[name] = module_class
    return module_class


def unregister(name: str) -> None:
    METHODS.pop(name, None)


def get_method(name: str) -> type[MethodModule]:
    if name not in METHODS:
        raise UnknownMethodError(f"unknown method {name!r}; registered methods: "
                                 f"{sorted(METHODS)}")
    return METHODS[name]


def method_names(kind: str | None = None) -> tuple[str, ...]:
    """Registered method names (of one kind: prompt, weights or backbone)."""
    return tuple(n for n, m in METHODS.items() if kind is None or m.kind == kind)


def config_from_dict(values: dict[str, Any]) -> MethodConfig:
    """The method config a `to_dict()` / adapter_config.json describes (its `method` key)."""
    return get_method(values.get("method", "")).config_class.from_dict(values)
