"""What a training run leaves behind: the trained adapter(s) or model (never with non-finite
weights), its tasks' metrics and predictions, and how its logs and files name its tasks
(`RunLayout`, the one place where a one-task run differs from a multi-task one)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dept_vl.training.config import TrainConfig
from dept_vl.errors import TrainingError
from dept_vl.evaluate import evaluate_many
from dept_vl.methods import get_method
from dept_vl.model import VLT5
from dept_vl.training.taskdata import ADAPTER_NAME, TaskData
from dept_vl.tasks import get_task
from dept_vl.feature_cache import FeatureCache


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
    elif get_method(cfg.method_name).kind != "backbone":
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


@dataclass(frozen=True)
class RunLayout:
    """How a run's logs and files name its tasks. A one-task run keeps the files of a plain run:
    its metrics stand flat in eval_results.json (`task` is the config's task), its predictions
    are one list, its logs say `eval/<metric>`, and its best weights are chosen on its task's
    metric. A multi-task run puts each task's under its name and keeps its last weights (no
    one metric ranks several tasks)."""

    task: str  # the config's `task`: eval_results.json's `task` for one task
    names: tuple[str, ...]
    metric: str | None  # the selection metric; None: several tasks, the last weights kept

    @classmethod
    def of(cls, cfg: TrainConfig, tasks: list[TaskData]) -> "RunLayout":
        single = len(tasks) == 1
        return cls(cfg.task, tuple(t.name for t in tasks),
                   get_task(tasks[0].kind).metric if single else None)

    @property
    def single(self) -> bool:
        return len(self.names) == 1

    def prefix(self, split: str, name: str) -> str:
        """The logged name of a task's metric: `eval/vqa_accuracy`, or `eval/<task>/...`."""
        return f"{split}/" if self.single else f"{split}/{name}/"

    def selection(self, evaluated: dict[str, dict[str, Any]]
                  ) -> tuple[float, dict[str, Any]] | None:
        """The score that ranks an evaluation for the best weights, with the metrics kept beside
        them (None: not ranked)."""
        if self.metric is None or self.names[0] not in evaluated:
            return None
        metrics = evaluated[self.names[0]]
        return metrics.get(self.metric, -math.inf), metrics

    def shape(self, tested: dict[str, dict[str, Any]], rows: dict[str, list[dict[str, Any]]]
              ) -> tuple[Any, dict[str, Any], Any]:
        """eval_results.json's `task` and its metric entries, and test_predictions.json."""
        if self.single:
            name = self.names[0]
            return self.task, tested.get(name, {}), rows.get(name, [])
        return sorted(tested), {"tasks": tested}, rows


def evaluate_tasks(model: Any, tasks: list[TaskData], split: str, cfg: TrainConfig,
                   features: FeatureCache | None = None, processes: Any = None,
                   ) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """{task name: metrics} and {task name: prediction rows} on each task's `split` ("eval": at
    most max_eval_examples, drawn with eval_sample_seed) with its own adapter; the VQA tasks of
    a multi-task run share mixed-adapter batches. With `processes` every process calls and
    takes a share of the batches (see evaluate_many)."""
    groups = {task.name: (task.eval if split == "eval" else task.test, task.adapter)
              for task in tasks if (task.eval if split == "eval" else task.test)}
    limit = cfg.max_eval_examples if split == "eval" else None
    evaluated = evaluate_many(model, groups, cfg.eval_batch_size, cfg.max_length, limit,
                              features, processes, cfg.eval_sample_seed,
                              num_beams=cfg.num_beams) if groups else {}
    metrics = {name: result[0] for name, result in evaluated.items()}
    rows = {name: result[1] for name, result in evaluated.items()}
    return metrics, rows


def evaluate_frozen(model: Any, tasks: list[TaskData], cfg: TrainConfig,
                    features: FeatureCache | None = None, processes: Any = None
                    ) -> dict[str, dict[str, Any]]:
    """{task name: metrics} of the frozen backbone with no adapter on each task's test split:
    what the backbone answers before any adapter is trained (the baseline beside a run's own)."""
    groups = {task.name: (task.test, None) for task in tasks if task.test}
    evaluated = evaluate_many(model, groups, cfg.eval_batch_size, cfg.max_length, None,
                              features, processes, num_beams=cfg.num_beams) if groups else {}
    kinds = {task.name: task.kind for task in tasks}
    return {name: {**metrics, **reserved_type_report(kinds[name], metrics, rows, model)}
            for name, (metrics, rows) in evaluated.items()}


def reserved_type_report(task: str, metrics: dict[str, Any], rows: list[dict], model: Any
                         ) -> dict[str, Any]:
    """The task's metric on the question types the backbone never saw in pretraining, apart
    from those it did see (its TaskSpec's `type_report`; none for a task without one, or a
    backbone that records no pretraining types)."""
    report = get_task(task).type_report
    pretrained = model.metadata.get("pretrain_question_types")
    return report(metrics, rows, pretrained) if report is not None and pretrained else {}
