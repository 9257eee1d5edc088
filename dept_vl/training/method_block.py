"""A training config's `method`: a registered method's name and its own settings, read by the
method's config class (its fields, their types and checks, its learning-rate roles):

    method: {name: dept, prompt_length: 60, rank: 30, lr: {prompt: 3.0e-1, lowrank: 1.0e-4}}
    method: pt                                   # a name alone: that method's defaults
    --method.rank 30 --method.lr.prompt 0.4      # one key from the command line

A method registered in one file (`dept_vl.methods.register`) gets its block, its command-line
keys and its `--help` lines with no edit here. The keys the block took over from the flat
config of earlier versions are refused where they stand, naming their new place.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import yaml

from dept_vl.checks import POSITIVE, Choice, check_mapping, checked
from dept_vl.training.rules import ConfigError, Where

PREFIX = "method."
# top-level keys of earlier versions → where they live now
MOVED = {
    "prompt_length": "method.prompt_length", "rank": "method.rank", "alpha": "method.alpha",
    "prompt_init": "method.prompt_init", "prompt_init_text": "method.prompt_init_text",
    "pt_prompt_length": "method.prompt_length (with name: pt)",
    "adept_rank": "method.rank (with name: adept)",
    "adept_dropout": "method.dropout (with name: adept)",
    "lora_rank": "method.lora_rank", "lora_alpha": "method.lora_alpha",
    "lora_dropout": "method.lora_dropout", "lora_target_modules": "method.target_modules",
    "lr_prompt": "method.lr.prompt",
    "lr_lowrank": "method.lr.lowrank (adept: method.lr.offset)",
    "lr": "method.lr (lora: method.lr.lora, full: method.lr.backbone)",
}
# how the saved settings of those versions name a method's field or rate, where not by its name
OLD_FIELDS = {"pt": {"prompt_length": "pt_prompt_length"},
              "adept": {"rank": "adept_rank", "dropout": "adept_dropout"},
              "lora": {"target_modules": "lora_target_modules"}}
OLD_RATES = {"prompt": "lr_prompt", "lowrank": "lr_lowrank", "offset": "lr_lowrank",
             "lora": "lr", "backbone": "lr"}


def moved(key: str, where: Where) -> ConfigError:
    """The one-line error for a flat key of an earlier version."""
    return where.key(key).error(
        f"moved to {MOVED[key]}: methods keep their settings in their own block, e.g. "
        "method: {name: dept, prompt_length: 60, rank: 30, lr: {prompt: 3.0e-1, lowrank: "
        "1.0e-4}} (docs/configuration.md)")


def config_class(name: str) -> Any:
    from dept_vl.methods import get_method  # torch: kept out of the config's import

    return get_method(name).config_class


def method_block(value: Any, where: Where) -> dict[str, Any]:
    """`method` as a whole block: {name, every field of the method's block, lr: {role: rate}},
    what is not given taken from the method's defaults, checked by its config class."""
    from dept_vl.methods import method_names

    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict) or value.get("name") is None:
        raise where.error(f"expected a method name or a mapping with name: (one of "
                          f"{', '.join(method_names())}), got {value!r}")
    name = Choice(method_names())(value["name"], where.key("name"))
    cls = config_class(name)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name in cls.settings_fields()}
    hints = typing.get_type_hints(cls)
    spec = {"name": (str, None), "lr": (Any, None), **{n: (hints[n], None) for n in fields}}
    given = check_mapping(value, spec, where, f"method {name}'s keys")
    block = {"name": name}
    for field_name, field in fields.items():
        block[field_name] = given[field_name] if field_name in given else (
            field.default if field.default is not dataclasses.MISSING
            else field.default_factory())
    block["lr"] = learning_rates(given.get("lr"), cls, where.key("lr"))
    try:
        cls(**{n: block[n] for n in fields})
    except ValueError as error:  # the config class' checks: named by the block's key path
        at = getattr(error, "where", None)
        if at is not None and at.source == cls.__name__ and at.path:
            raise where.key(at.path).error(error.problem) from None
        raise where.error(str(error)) from None
    return block


def learning_rates(value: Any, cls: Any, where: Where) -> dict[str, float]:
    """`method.lr`: {role: rate} over the method's `lr_roles` (defaults for those not given);
    a number for a method with one role."""
    roles = dict(cls.lr_roles)
    if value is None:
        return roles
    if not isinstance(value, dict):
        if len(roles) != 1:
            raise where.error(f"method {cls.method} learns at {len(roles)} rates: give "
                              f"{{{', '.join(f'{r}: ...' for r in roles)}}}")
        value = {next(iter(roles)): value}
    for role in value:
        if role not in roles:
            raise where.key(role).error(f"not a learning-rate role of method {cls.method} "
                                        f"(its roles: {', '.join(roles) or 'none'})")
    rates = {role: checked(float, POSITIVE, rate, where.key(role)) for role, rate in value.items()}
    return {**roles, **rates}


def check_partial(value: Any, where: Where) -> Any:
    """A job's `method`: a name, or keys to apply over the shared block (checked whole once
    merged, see `merge`)."""
    if not isinstance(value, (str, dict)):
        raise where.error(f"expected a method name or a mapping, got {value!r}")
    return value


def merge(base: Any, over: Any) -> Any:
    """`over` applied to `base` (each a name, a block or None): another method's name starts
    from that method's defaults; keys of the same method replace the base's one by one
    (learning rates role by role)."""
    if over is None or base is None:
        return base if over is None else over
    base_block = {"name": base} if isinstance(base, str) else base
    over_block = {"name": over} if isinstance(over, str) else over
    if not (isinstance(base_block, dict) and isinstance(over_block, dict)):
        return over
    if over_block.get("name", base_block.get("name")) != base_block.get("name"):
        return over
    merged = {**base_block, **over_block}
    if isinstance(base_block.get("lr"), dict) and isinstance(over_block.get("lr"), dict):
        merged["lr"] = {**base_block["lr"], **over_block["lr"]}
    return merged


def split_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Command-line overrides → (the others, the `--method.KEY` ones as a nested mapping);
    their text is read as YAML (`--method.rank 30` is a number, `--method.name pt` text)."""
    rest: dict[str, Any] = {}
    block: dict[str, Any] = {}
    for key, raw in overrides.items():
        if not key.startswith(PREFIX):
            rest[key] = raw
            continue
        *parents, leaf = key[len(PREFIX):].split(".")
        target = block
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise ConfigError(f"command line: {key}: {PREFIX}{parent} is not a mapping")
        target[leaf] = _yaml_value(raw)
    return rest, block


def _yaml_value(raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw  # text that is not YAML stays text


def legacy_settings(saved: dict[str, Any]) -> dict[str, Any]:
    """Outcome settings saved by an earlier version (flat method keys) in the block form, so a
    resume or a grid can compare them with today's key by key."""
    from dept_vl.methods import METHODS

    if not isinstance(saved.get("method"), str) or saved["method"] not in METHODS:
        return saved
    name = saved["method"]
    cls = config_class(name)
    renamed = OLD_FIELDS.get(name, {})
    block: dict[str, Any] = {"name": name}
    for field_name in cls.settings_fields():
        if renamed.get(field_name, field_name) in saved:
            block[field_name] = saved[renamed.get(field_name, field_name)]
    block["lr"] = {role: saved[OLD_RATES[role]] for role in cls.lr_roles
                   if OLD_RATES.get(role) in saved}
    kept = {key: value for key, value in saved.items() if key not in MOVED}
    return {**kept, "method": block}
