"""Full fine-tuning: every backbone weight trains, and the result is a whole backbone folder
(`model/`), not an adapter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dept_vl.methods.base import MethodConfig, MethodModule
from dept_vl.methods.registry import register


@dataclass(kw_only=True)
class FullConfig(MethodConfig):
    method = "full"
    lr_roles = {"backbone": 1e-4}  # every backbone weight


@register
class FullFineTuning(MethodModule):
    """A marker: the host unfreezes its backbone; nothing is added to it."""

    config_class = FullConfig
    kind = "backbone"

    def param_groups(self, lrs: dict[str, float]) -> list[dict[str, Any]]:
        return []
