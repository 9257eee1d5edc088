"""Evaluation: generate for a split and score it as each record's task says (dept_vl/tasks.py:
VQA accuracy per question type; BLEU-4 and CIDEr over the whole split, since CIDEr's IDF needs
every reference at once). `evaluate` / `evaluate_many` share batches between adapters and, under
several processes, between processes; `mean_loss` scores an adapter as it stands; and the VQA
evaluation server's results format (`vqa_submission`, `check_submission`). The command line
is dept_vl/cli/eval.py: `dept-vl-eval`, or `python -m dept_vl.evaluate`.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from accelerate.utils import gather_object
from torch.utils.data import DataLoader

from dept_vl.data.collate import RecordDataset, VLCollator
from dept_vl.data.records import Record, VQARecord
from dept_vl.data.bad_data import skip_line
from dept_vl.errors import UserError
from dept_vl.metrics import normalize_answer
from dept_vl.model import VLT5
from dept_vl.tasks import TASKS, TaskSpec, spec_of


@dataclass
class Batching:
    """How predictions are made: batch size, text truncation, the feature cache (None: encode
    the pixels), the processes that share the work (None: this one does it all) and the beams
    (None: each task's own, see VLT5.generate_from_batch)."""

    batch_size: int
    max_length: int
    feature_cache: Any = None
    processes: Any = None  # accelerate's PartialState (or AcceleratorState) of a sharded run
    num_beams: int | None = None

    def shares(self) -> tuple[int, int]:
        """(this process's index, number of processes)."""
        if self.processes is None:
            return 0, 1
        return self.processes.process_index, self.processes.num_processes


def _predict(model: VLT5, records: Sequence[Record], adapter: str | None | list[str | None],
             task: str, how: Batching) -> list[str]:
    """Predictions in record order; `adapter` one name, or one per record (mixed batches).

    Sharded: the batches are those of one process, dealt round-robin, and the predictions are
    gathered back into record order. A batch holds the same records whatever the number of
    processes, so the predictions (and metrics) are those of a single-process evaluation."""
    rank, world = how.shares()
    batches = [list(range(start, min(start + how.batch_size, len(records))))
               for start in range(0, len(records), how.batch_size)]
    mine = list(range(rank, len(batches), world))
    collator = VLCollator(model.tokenizer, model.vision.transform, how.max_length, train=False,
                          feature_cache=how.feature_cache)
    loader = DataLoader(RecordDataset(records), batch_sampler=[batches[i] for i in mine],
                        collate_fn=collator)
    device = next(model.parameters()).device
    predicted: list[tuple[int, list[str]]] = []
    for index, batch in zip(mine, loader):
        names = [adapter[i] for i in batches[index]] if isinstance(adapter, list) else adapter
        predicted.append((index, model.generate_from_batch(
            batch["input_ids"].to(device), batch["attention_mask"].to(device),
            **_visual_inputs(batch, device), adapter=names, task=task,
            num_beams=how.num_beams)))
    if world > 1:  # every process takes part, whether or not it had a batch
        predicted = sorted(gather_object(predicted))
    return [text for _, texts in predicted for text in texts]


def _visual_inputs(batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """pixel_values, or the cached visual_features when the collator had a feature cache."""
    key = "visual_features" if "visual_features" in batch else "pixel_values"
    return {key: batch[key].to(device)}


@torch.no_grad()
def evaluate(
    model: VLT5,
    records: Sequence[Record],
    adapter: str | None = None,
    batch_size: int = 64,
    max_length: int = 64,
    max_examples: int | None = None,
    feature_cache: Any = None,
    processes: Any = None,
    num_beams: int | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics and per-example predictions for `records` (VQA and caption rows may be mixed);
    `num_beams` as in `evaluate_many`."""
    return evaluate_many(model, {"": (records, adapter)}, batch_size, max_length, max_examples,
                         feature_cache, processes, num_beams=num_beams)[""]


def _predict_groups(
    model: VLT5, groups: dict[str, tuple[Sequence[Record], str | None]],
    chosen: dict[str, list[Record]], task: str, how: Batching,
) -> dict[str, list[str]]:
    """{group: predictions} for one task's `chosen` records: where the task shares batches, the
    groups go through the backbone together, each example with its group's adapter (a LoRA
    adapter's rows in their own sub-batches, see VLT5.generate_from_batch); otherwise group by
    group."""
    if not TASKS[task].shared_batches:
        return {name: _predict(model, records, groups[name][1], task, how) if records else []
                for name, records in chosen.items()}
    names = [groups[name][1] for name in chosen for _ in chosen[name]]
    mixed = names if len(set(names)) > 1 else (names[0] if names else None)
    every = [r for records in chosen.values() for r in records]
    flat = _predict(model, every, mixed, task, how) if every else []
    predicted = {}
    for name, records in chosen.items():
        predicted[name], flat = flat[:len(records)], flat[len(records):]
    return predicted


def _score(spec: TaskSpec, records: list[Record], predictions: list[str],
           metrics: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Add one task's metrics and prediction rows to a group's."""
    if records:
        metrics.update(spec.metrics(predictions, records))
        rows += [spec.prediction_row(r, p) for r, p in zip(records, predictions)]


def subset(records: list[Any], limit: int | None, seed: int | None) -> list[Any]:
    """At most `limit` of `records`, in file order: a sample drawn with `seed`, or the first
    ones (seed None). The head of a file sorted by image (the built-in corpus, most data sets)
    holds few images: the first 300 val questions of the quickstart's corpus are 36 scenes with
    fewer objects than the split's, and scored 5-8 points above test. The sample depends on
    the seed and the split alone, so every run of a grid is evaluated on the same examples."""
    if limit is None or len(records) <= limit:
        return list(records)
    if seed is None:
        return list(records[:limit])
    kept = sorted(random.Random(seed).sample(range(len(records)), limit))
    return [records[i] for i in kept]


@torch.no_grad()
def evaluate_many(
    model: VLT5,
    groups: dict[str, tuple[Sequence[Record], str | None]],
    batch_size: int = 64,
    max_length: int = 64,
    max_examples: int | None = None,
    feature_cache: Any = None,
    processes: Any = None,
    sample_seed: int | None = None,
    num_beams: int | None = None,
) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """{name: (metrics, rows)} for several (records, adapter) groups, e.g. the tasks of a
    multi-task run. Task by task (dept_vl/tasks.py), the records of every group go through the
    backbone together in mixed-adapter batches where the task allows it (VQA), else group by
    group (captions); at most `max_examples` per group and task (see `subset`). `eval_seconds`
    is the whole call's. With `processes` (accelerate's state of a multi-process run; every
    process must call), the batches are shared out and every process returns the whole
    result. `num_beams`: None decodes each task as it says (greedy VQA, 5-beam captions);
    a number holds for every task."""
    for records, _ in groups.values():  # a record of no known task is an error, not skipped
        for record in records:
            spec_of(record)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    results: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {
        name: ({}, []) for name in groups}
    for task, spec in TASKS.items():
        chosen = {name: subset(spec.eval_records([r for r in records if r.task == task]),
                               max_examples, sample_seed)
                  for name, (records, _) in groups.items()}
        predicted = _predict_groups(model, groups, chosen, task,
                                    Batching(batch_size, max_length, feature_cache, processes,
                                             num_beams))
        for name, (metrics, rows) in results.items():
            _score(spec, chosen[name], predicted[name], metrics, rows)
    seconds = round(time.perf_counter() - start, 2)
    for metrics, _ in results.values():
        metrics["eval_seconds"] = seconds
    model.train(was_training)
    return results


@torch.no_grad()
def mean_loss(
    model: VLT5,
    records: Sequence[Record],
    adapter: str | None = None,
    batch_size: int = 64,
    max_length: int = 64,
    max_target_length: int = 48,
) -> float:
    """Teacher-forced loss per target token on each record's most common reference: how well
    the adapter as it stands fits `records` (scores source adapters before any training)."""
    was_training = model.training
    model.eval()
    collator = VLCollator(model.tokenizer, model.vision.transform, max_length,
                          max_target_length, train=False)
    loader = DataLoader(RecordDataset(records), batch_size=batch_size, collate_fn=collator)
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for batch in loader:
        labels = batch["labels"].to(device)
        loss = model(input_ids=batch["input_ids"].to(device),
                     attention_mask=batch["attention_mask"].to(device),
                     pixel_values=batch["pixel_values"].to(device), labels=labels,
                     adapter=adapter).loss
        count = int((labels != -100).sum())
        total += float(loss) * count
        tokens += count
    model.train(was_training)
    return total / max(tokens, 1)


# a VQAv2 question_id as a record id (loaders keep ids as text): plain decimal digits
_QUESTION_ID = re.compile(r"0|[1-9][0-9]*")


def check_submission(records: Sequence[Record], skipped: list[dict[str, str]] | None) -> None:
    """`--submission` answers every question of a VQA split by its integer question_id; any
    other data is refused before generation, in one line."""
    seen: set[str] = set()
    for record in records:
        where = record.source or f"record {record.id!r}"
        if not isinstance(record, VQARecord):
            raise UserError(f"--submission writes the VQA results format, but {where} is a "
                            f"{record.task} record: leave --submission out for task "
                            f"{record.task!r}")
        if not _QUESTION_ID.fullmatch(record.id):
            raise UserError(f"--submission: {where}: id {record.id!r} is not an integer "
                            "question_id (the VQA results format names each question by the "
                            "question_id of its VQAv2 question file)")
        if record.id in seen:
            raise UserError(f"--submission: {where}: question_id {record.id} given twice")
        seen.add(record.id)
    if skipped:
        raise UserError(f"--submission: {skip_line(skipped)}, but the results file must answer "
                        "every question: fix them, or leave --submission out")


def vqa_submission(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The official VQA results format, `[{"question_id": int, "answer": str}, ...]`, from VQA
    prediction rows; answers normalised as the evaluation server normalises them."""
    return [{"question_id": int(row["id"]), "answer": normalize_answer(row["prediction"])}
            for row in rows]


if __name__ == "__main__":  # `python -m dept_vl.evaluate`: the same command as dept-vl-eval
    from dept_vl.cli.eval import cli

    cli()
