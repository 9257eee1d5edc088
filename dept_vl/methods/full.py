"""Full fine-tuning: every backbone weight trains, and the result is a whole backbone folder
(`model/`), not an adapter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dept_vl.methods.base import MethodConfig, MethodModule

if TYPE_CHECKING:
    from dept_vl.training.config import TrainConfig


@dataclass(kw_only=True)
class FullConfig(MethodConfig):
    method = "full"

    @classmethod
    def from_train_config(cls, cfg: "TrainConfig", d_model: int, task: str) -> "FullConfig":
        return cls(task=task)


class FullFineTuning(MethodModule):
    """A marker: the host unfreezes its backbone; nothing is added to it."""

    config_class = FullConfig
    kind = "backbone"

    def param_groups(self, lrs: dict[str, float]) -> list[dict[str, Any]]:
        return []
