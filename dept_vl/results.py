"""What a training run leaves behind: the trained adapter(s) or model, never with non-finite
weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dept_vl.config import TrainConfig
from dept_vl.errors import TrainingError
from dept_vl.methods import get_method
from dept_vl.model import VLT5
from dept_vl.taskdata import ADAPTER_NAME


def save_result_model(model: VLT5, cfg: TrainConfig, out: Path, metrics: dict[str, Any] | None,
                      command: str) -> Path:
    """What a run leaves behind: `adapter/` (any adapter method), `adapters/<task>/` (one
    adapter per task) or `model/` (a backbone method: full). `metrics` are the test metrics, by
    task when there are tasks (None: saved before the test evaluation, without them).
    Non-finite weights are refused."""
    check_finite(model)
    metrics = metrics or {}
    if cfg.adapter_per_task:
        target = out / "adapters"
        for name in model.adapters:
            model.save_adapter(name, target / name, metrics=metrics.get(name), command=command)
    elif get_method(cfg.method).kind != "backbone":
        target = out / "adapter"
        model.save_adapter(ADAPTER_NAME, target, metrics=metrics, command=command)
    else:
        target = out / "model"
        model.save_pretrained(target)
    return target


def check_finite(model: torch.nn.Module) -> None:
    """A trained weight that is NaN or infinite must never be saved as a result."""
    for name, param in model.named_parameters():
        if param.requires_grad and not torch.isfinite(param).all():
            raise TrainingError(f"trained weight {name} holds non-finite values; nothing saved")
