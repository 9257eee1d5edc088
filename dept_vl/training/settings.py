"""Whether two runs' settings differ in what they compute: a resume, or a grid reading a cell
back, refuses a run made with other settings and names each difference."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from dept_vl.training.config import BOOKKEEPING, TrainConfig
from dept_vl.training.method_block import legacy_settings


# outcome keys that change nothing while another key holds a value, on both sides: the sample
# seed of a periodic evaluation that reads the whole split draws no sample
MOOT_WHILE = {"eval_sample_seed": ("max_eval_examples", None)}


def settings_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """`key: saved → now` for each outcome setting that differs, the method block key by key
    (`method.rank`, `method.lr.prompt`). A key only one side has comes from a version of
    dept_vl with other keys: a key added since then counts as its default (what the older
    version did), any other is shown as missing."""
    missing = "(not set)"
    saved, now = flat_settings(legacy_settings(saved)), flat_settings(now)
    defaults = flat_settings(_defaults(now.get("method.name")))
    saved = {**{k: v for k, v in defaults.items() if k not in saved and k in now}, **saved}

    def moot(key: str) -> bool:
        if key not in MOOT_WHILE:
            return False
        other, value = MOOT_WHILE[key]
        return saved.get(other, missing) == now.get(other, missing) == value

    return [f"{key}: {saved.get(key, missing)!r} → {now.get(key, missing)!r}"
            for key in sorted(set(saved) | set(now))
            if key not in BOOKKEEPING and saved.get(key, missing) != now.get(key, missing)
            and not moot(key)]


def _defaults(method: Any) -> dict[str, Any]:
    """The default settings (of `method`, when it is a registered one), as JSON holds them."""
    from dept_vl.methods import METHODS

    config = TrainConfig(method=method) if method in METHODS else TrainConfig()
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def flat_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings with the method block spelt out as `method.<key>` and `method.lr.<role>`."""
    flat = {key: value for key, value in settings.items() if key != "method"}
    block = settings.get("method")
    if not isinstance(block, dict):
        return {**flat, "method": block} if "method" in settings else flat
    for key, value in block.items():
        if key == "lr" and isinstance(value, dict):
            flat.update({f"method.lr.{role}": rate for role, rate in value.items()})
        else:
            flat[f"method.{key}"] = value
    return flat
