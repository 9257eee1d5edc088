"""What each task means to dept_vl, in one `TaskSpec` per task: the records its data loads into,
the encoder's input text (VL-T5 style prefix), the training targets, the references and metrics
of evaluation, the rows written per prediction, the decoding, and the metric that ranks
checkpoints. Callers (the collator, evaluation, generation, the demo, reports, k-shot sampling
through the record type) ask a record's or an adapter's spec and never test a task's name, so a
new task is one `register_task` call (plus a record class with `@record_type`, in
dept_vl/data/records.py or anywhere else, when no existing one fits its rows).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from dept_vl.data.formats import load_records
from dept_vl.data.records import RECORD_TYPES, CaptionRecord, Record, VQARecord
from dept_vl.errors import UserError
from dept_vl.metrics import caption_scores, vqa_accuracy, vqa_accuracy_by_type, vqa_score


class UnknownTaskError(UserError, ValueError):
    """A task name (in a config, a data entry or a generate call) that has no TaskSpec."""


@dataclass(frozen=True)
class TaskSpec:
    prefix: str  # prepended to the text input: "vqa: what color ..."
    label: str  # what the demo calls the task: "question answering"
    record_type: type  # the records of its data (a registered Record class); `task` names the spec
    # the record's own text after the prefix (the question); None: the prefix alone (captioning)
    text: Callable[[Any], str] | None
    targets: Callable[[Any], Sequence[str]]  # acceptable decoder targets of a record
    # one training target drawn from `targets` with the collator's RNG (evaluation: most common)
    sample_target: Callable[[Sequence[str], random.Random], str]
    references: Callable[[Any], Sequence[str]]  # what a prediction is scored against
    # evaluation: the records to predict, from a group's records of this task (e.g. one per image)
    eval_records: Callable[[list[Any]], list[Any]]
    metrics: Callable[[list[str], list[Any]], dict[str, Any]]  # predictions, records → metrics
    prediction_row: Callable[[Any, str], dict[str, Any]]  # record, prediction → a JSON row
    num_beams: int  # greedy for short answers, beam search for captions (VL-T5)
    max_new_tokens: int
    metric: str  # key of `metrics` that selects the best checkpoint
    # evaluation: every group's (adapter's) records share mixed-adapter batches; False: each
    # group decodes alone
    shared_batches: bool
    # results tables (dept-vl-report): the title, the (metric key, heading) columns, and the key
    # of a {type: value} metric whose types become columns too; default: the selection metric
    report_title: str = ""
    report_columns: tuple[tuple[str, str], ...] = ()
    report_by_type: str | None = None
    # (metrics, prediction rows, the backbone's pretraining question types) → the metric on the
    # types the backbone never saw and on those it did; None: the task has no question types
    type_report: Callable[[dict[str, Any], list[dict[str, Any]], Sequence[str]],
                          dict[str, Any]] | None = None

    @property
    def uses_text(self) -> bool:
        """False: the text input is the prefix alone, and a question is ignored."""
        return self.text is not None

    def input(self, text: str = "") -> str:
        """The encoder's text for a question, e.g. 'vqa: what color is the circle ?'."""
        return f"{self.prefix} {text}".strip() if self.uses_text else self.prefix

    def input_text(self, record: Any) -> str:
        return self.input(self.text(record) if self.text is not None else "")

    def target(self, record: Any, rng: random.Random | None) -> str:
        """The decoder target: drawn with `rng` (training) or the most common one (rng None)."""
        targets = self.targets(record)
        if rng is None:
            return Counter(targets).most_common(1)[0][0]
        return self.sample_target(targets, rng)

    def texts(self, record: Any) -> list[str]:
        """Every text of a record a tokenizer built for the data must cover (each target as
        often as the record gives it: a word tokenizer numbers words by frequency)."""
        own = [self.text(record)] if self.text is not None else []
        targets = list(self.targets(record))
        return own + targets + [r for r in self.references(record) if r not in targets]


# ---------------------------------------------------------------------------- vqa
def sample_answer(answers: Sequence[str], rng: random.Random) -> str:
    """One training target, drawn in proportion to its VQA soft score min(1, count/3) (VL-T5)."""
    counts = Counter(answers)
    choices = sorted(counts)
    weights = [min(1.0, counts[a] / 3) for a in choices]
    return rng.choices(choices, weights=weights)[0]


def _answers(record: VQARecord) -> tuple[str, ...]:
    return record.answers


def _vqa_metrics(predictions: list[str], records: list[VQARecord]) -> dict[str, Any]:
    """VQA accuracy, overall and per question type ("all" for untyped questions), over the
    answered records. Unanswered ones (a test split) are predicted, counted and never scored:
    a split of them alone has no accuracy at all, not 0."""
    scored = [(p, r) for p, r in zip(predictions, records, strict=True) if not r.unanswered]
    metrics: dict[str, Any] = {}
    if scored:
        answers = [r.answers for _, r in scored]
        types = [r.question_type or "all" for _, r in scored]
        guesses = [p for p, _ in scored]
        metrics = {"vqa_accuracy": vqa_accuracy(guesses, answers),
                   "vqa_accuracy_by_type": vqa_accuracy_by_type(guesses, answers, types),
                   "num_questions": len(scored)}
    if len(scored) < len(records):
        metrics.update(num_predicted=len(records), num_unanswered=len(records) - len(scored),
                       has_answers=bool(scored))
    return metrics


def _vqa_type_report(metrics: dict[str, Any], rows: list[dict[str, Any]],
                     pretrained: Sequence[str]) -> dict[str, Any]:
    """Accuracy on question types the backbone never saw (reserved), apart from the types it
    did see. Only answered questions whose type is known count: a row without a question type
    (user data) is neither, and with no typed rows there is no report."""
    if "vqa_accuracy" not in metrics:
        return {}
    typed = [r for r in rows if r.get("answers") and r.get("question_type")]
    if not typed:
        return {}
    unseen = [r for r in typed if r["question_type"] not in pretrained]
    seen = [r for r in typed if r["question_type"] in pretrained]
    report: dict[str, Any] = {"reserved_question_types": sorted(
        {r["question_type"] for r in unseen})}
    for key, group in (("vqa_accuracy_reserved_types", unseen),
                       ("vqa_accuracy_pretrained_types", seen)):
        if group:
            right = sum(vqa_score(r["prediction"], r["answers"]) for r in group)
            report[key] = 100 * right / len(group)
    return report


def _vqa_row(record: VQARecord, prediction: str) -> dict[str, Any]:
    return {"id": record.id, "question": record.question, "prediction": prediction,
            "answers": list(record.answers), "question_type": record.question_type}


# ---------------------------------------------------------------------------- caption
def _captions(record: CaptionRecord) -> tuple[str, ...]:
    return record.captions


def _any_caption(captions: Sequence[str], rng: random.Random) -> str:
    return rng.choice(list(captions))


def one_per_image(records: list[CaptionRecord]) -> list[CaptionRecord]:
    """Caption each image once, with every reference caption any row gives it."""
    merged: dict[Any, CaptionRecord] = {}
    for record in records:
        key = record.image_key or record.id  # a file path or a dataset row
        if key in merged:
            merged[key] = replace(merged[key], captions=merged[key].captions + record.captions)
        else:
            merged[key] = record
    return list(merged.values())


def _caption_metrics(predictions: list[str], records: list[CaptionRecord]) -> dict[str, Any]:
    """BLEU-4 and CIDEr over the whole list at once (CIDEr's IDF needs every reference)."""
    return {**caption_scores(predictions, [r.captions for r in records]),
            "num_images": len(records)}


def _caption_row(record: CaptionRecord, prediction: str) -> dict[str, Any]:
    return {"id": record.id, "prediction": prediction, "captions": list(record.captions)}


TASKS: dict[str, TaskSpec] = {
    "vqa": TaskSpec(
        prefix="vqa:", label="question answering", record_type=VQARecord,
        text=lambda record: record.question, targets=_answers, sample_target=sample_answer,
        references=_answers, eval_records=list, metrics=_vqa_metrics, prediction_row=_vqa_row,
        num_beams=1, max_new_tokens=8, metric="vqa_accuracy", shared_batches=True,
        report_title="VQA (test split, accuracy %)",
        report_columns=(("vqa_accuracy", "VQA acc"), ("vqa_accuracy_reserved_types",
                                                       "reserved types"),
                        ("vqa_accuracy_pretrained_types", "pretrained types")),
        report_by_type="vqa_accuracy_by_type", type_report=_vqa_type_report),
    "caption": TaskSpec(
        prefix="caption:", label="captioning", record_type=CaptionRecord, text=None,
        targets=_captions, sample_target=_any_caption, references=_captions,
        eval_records=one_per_image, metrics=_caption_metrics, prediction_row=_caption_row,
        num_beams=5, max_new_tokens=40, metric="cider", shared_batches=False,
        report_title="Captioning (test split)",
        report_columns=(("bleu4", "BLEU-4"), ("cider", "CIDEr"))),
}


def register_task(name: str, spec: TaskSpec) -> TaskSpec:
    """Add a task (a test's, a plugin's) under `name`; its record type must be registered
    (`dept_vl.data.records.record_type`). Registering a name twice is refused."""
    if not name.isidentifier():
        raise ValueError(f"task names are identifiers, got {name!r}")
    if name in TASKS and TASKS[name] is not spec:
        raise ValueError(f"task {name!r} is already registered")
    if RECORD_TYPES.get(getattr(spec.record_type, "rows", None)) is not spec.record_type:
        raise ValueError(f"task {name!r}: its record type {spec.record_type.__name__} is not "
                         "registered (@record_type)")
    TASKS[name] = spec
    return spec


def unregister_task(name: str) -> None:
    TASKS.pop(name, None)


def get_task(name: str) -> TaskSpec:
    if not isinstance(name, str) or name not in TASKS:
        raise UnknownTaskError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    return TASKS[name]


def load_task_records(path: Any, task: str, format: str = "auto", **options: Any) -> list[Record]:
    """A task's records from a data file (`load_records`' options): read as the rows of its
    record type, so a task that reuses one loads from the same files, each tagged `task`."""
    rows = get_task(task).record_type.rows
    records = load_records(path, rows, format, **options)
    return records if rows == task else [replace(r, task=task) for r in records]


def spec_of(record: Any) -> TaskSpec:
    """The spec of a record's task (`record.task`), which must hold records of its type."""
    spec = get_task(record.task)
    if not isinstance(record, spec.record_type):
        raise UnknownTaskError(f"record {record.id!r}: task {record.task!r} holds "
                               f"{spec.record_type.__name__} records, not {type(record).__name__}")
    return spec


def task_of_prefix(prefix: str) -> str:
    """The task whose input prefix is `prefix` ("vqa:" → "vqa"): older adapter files and
    configs name their task by its prefix."""
    if not isinstance(prefix, str):
        raise UnknownTaskError(f"task_prefix must be a string, got {prefix!r}")
    for name, spec in TASKS.items():
        if spec.prefix == prefix.strip():
            return name
    raise UnknownTaskError(f"unknown task prefix {prefix!r}; known prefixes: "
                           f"{[spec.prefix for spec in TASKS.values()]}")


def task_input(task: str, text: str = "") -> str:
    """The encoder's text for one example, e.g. 'vqa: what color is the circle ?'."""
    return get_task(task).input(text)


def corpus_texts(records: Sequence[Any]) -> list[str]:
    """Every task prefix, then each record's texts: what a tokenizer built here must cover."""
    texts = [spec.prefix for spec in TASKS.values()]
    for record in records:
        texts += spec_of(record).texts(record)
    return texts
