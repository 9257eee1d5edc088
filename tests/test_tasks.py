"""Tasks are data (dept_vl/tasks.py): every TaskSpec is complete and consistent, and a task
registered here — VQA records under their own prefix, targets, decoding, metric and prediction
rows — runs through loading, the collator, evaluate_many and VLT5.generate with no other file
touched."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch
from conftest import WORDS, tiny_t5_config

from dept_vl.data.collate import VLCollator
from dept_vl.data.formats import load_records
from dept_vl.data.image_files import load_image
from dept_vl.data.records import VQARecord
from dept_vl.evaluate import evaluate_many, subset
from dept_vl.methods.pt import PTConfig
from dept_vl.model import VLT5
from dept_vl.tasks import (
    TASKS, TaskSpec, UnknownTaskError, corpus_texts, load_task_records, spec_of, task_of_prefix,
)
from dept_vl.tokenization import build_word_tokenizer
from dept_vl.vision import VisionConfig


def _some_records(corpus_dir: str, name: str, spec: TaskSpec) -> list:
    """A few records of task `name`, from the corpus file of its record type's rows."""
    return load_task_records(f"{corpus_dir}/test_{spec.record_type.task}.jsonl", name)[:6]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_spec_is_complete_and_consistent(name, corpus_dir):
    spec = TASKS[name]
    for field in dataclasses.fields(TaskSpec):
        value = getattr(spec, field.name)
        if field.name not in ("text", "report_by_type", "type_report"):  # optional hooks
            assert value is not None, f"{name}: {field.name} is not set"
    assert spec.prefix and spec.label and dataclasses.is_dataclass(spec.record_type)
    assert task_of_prefix(spec.prefix) == name  # prefixes are unique
    assert spec.num_beams >= 1 and spec.max_new_tokens >= 1
    records = spec.eval_records(_some_records(corpus_dir, name, spec))
    assert records and all(r.task == name and spec_of(r) is spec for r in records)
    for record in records:
        assert spec.input_text(record).startswith(spec.prefix)
        assert spec.target(record, None) in spec.targets(record)
        assert spec.target(record, random.Random(0)) in spec.targets(record)
        assert spec.references(record)
    predictions = [spec.target(r, None) for r in records]
    metrics = spec.metrics(predictions, records)
    assert isinstance(metrics[spec.metric], float)  # the selection metric is among them
    rows = [spec.prediction_row(r, p) for r, p in zip(records, predictions)]
    assert [(row["id"], row["prediction"]) for row in rows] == [
        (r.id, p) for r, p in zip(records, predictions)]
    json.dumps([metrics, rows])  # written to eval_results.json / test_predictions.json
    # the report's columns are metrics the task computes
    assert {key for key, _ in spec.report_columns} <= set(metrics) | {
        "vqa_accuracy_reserved_types", "vqa_accuracy_pretrained_types"}  # added by a run
    assert spec.report_by_type is None or isinstance(metrics[spec.report_by_type], dict)


def test_a_record_of_an_unknown_task_or_the_wrong_type_is_refused():
    record = VQARecord("q1", "a.png", "what color ?", ("red",))
    with pytest.raises(UnknownTaskError, match="unknown task 'ocr'"):
        spec_of(dataclasses.replace(record, task="ocr"))
    with pytest.raises(UnknownTaskError, match="'caption' holds CaptionRecord records"):
        spec_of(dataclasses.replace(record, task="caption"))


# ---------------------------------------------------------------------------- a toy task
def _short_targets(record):
    return (*record.answers, "one")  # "one" is an acceptable target of every question here


def _any_sorted(targets, rng):
    return rng.choice(sorted(targets))


def _exact_match(predictions, records):
    hits = [p in r.answers for p, r in zip(predictions, records)]
    return {"exact_match": 100.0 * sum(hits) / len(hits), "num_short": len(records)}


SHORT = TaskSpec(
    prefix="short:", label="short answers", record_type=VQARecord,
    text=lambda record: record.question, targets=_short_targets, sample_target=_any_sorted,
    references=lambda record: record.answers, eval_records=list,
    metrics=_exact_match, prediction_row=lambda record, p: {"id": record.id, "prediction": p,
                                                             "words": len(p.split())},
    num_beams=2, max_new_tokens=2, metric="exact_match", shared_batches=True,
)


@pytest.fixture
def short_task(monkeypatch):
    monkeypatch.setitem(TASKS, "vqa_short", SHORT)


@pytest.fixture
def short_model(short_task) -> VLT5:
    torch.manual_seed(0)
    tokenizer = build_word_tokenizer([WORDS + " short:"])
    model = VLT5.from_components(tiny_t5_config(tokenizer), VisionConfig("test_vit", image_size=32),
                                 tokenizer=tokenizer, max_text_length=24).eval()
    model.add_adapter("s", PTConfig(prompt_length=2, task="vqa_short", max_length=24))
    return model


def test_a_registered_task_loads_and_collates_as_its_spec_says(short_model, corpus_dir):
    known = set(WORDS.split())  # the tiny tokenizer's closed vocabulary
    records = [r for r in load_task_records(f"{corpus_dir}/train_vqa.jsonl", "vqa_short")
               if set(r.question.split()) | set(r.answers) <= known][:8]
    assert len(records) == 8
    assert {r.task for r in records} == {"vqa_short"} and "short:" in corpus_texts(records)
    tokenizer = short_model.tokenizer
    collator = VLCollator(tokenizer, short_model.vision.transform, 24, train=True, seed=5)
    batch = collator(records)
    inputs = tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)
    assert inputs == [f"short : {r.question}".lower() for r in records]  # words split at ':'
    rng = random.Random(5)  # the collator draws with the task's own sampler, in record order
    wanted = [_any_sorted(_short_targets(r), rng) for r in records]
    assert len(set(wanted)) > 1 and "one" in wanted
    labels = batch["labels"].masked_fill(batch["labels"] == -100, 0)
    assert tokenizer.batch_decode(labels, skip_special_tokens=True) == wanted


def test_a_registered_task_evaluates_and_generates_with_its_own_decoding(
        short_model, corpus_dir, monkeypatch):
    short = load_task_records(f"{corpus_dir}/test_vqa.jsonl", "vqa_short")[:5]
    vqa = load_records(f"{corpus_dir}/test_vqa.jsonl", "vqa")[5:9]
    calls = []
    generate = short_model.t5.generate
    monkeypatch.setattr(short_model.t5, "generate", lambda **kw: calls.append(
        (kw["num_beams"], kw["max_new_tokens"])) or generate(**kw))
    results = evaluate_many(short_model, {"short": (short, "s"), "plain": (vqa, None)},
                            batch_size=5, max_length=24)
    metrics, rows = results["short"]
    assert set(metrics) == {"exact_match", "num_short", "eval_seconds"}
    assert metrics["num_short"] == 5 and "vqa_accuracy" in results["plain"][0]
    assert [row["id"] for row in rows] == [r.id for r in short]
    assert set(rows[0]) == {"id", "prediction", "words"}
    assert set(calls) == {(1, 8), (2, 2)}  # vqa's decoding and the toy task's
    calls.clear()
    images = [load_image(r) for r in short]
    generated = short_model.generate(images, [r.question for r in short], adapter="s")
    assert calls == [(2, 2)]  # the adapter's task sets the decoding
    assert generated == [row["prediction"] for row in rows]


def test_the_periodic_eval_subset_is_a_seeded_sample_across_the_split(short_model, corpus_dir):
    """The head of a file sorted by image is a few images (the quickstart's first 300 val
    questions: 36 scenes with fewer objects than the split's); the subset is drawn across the
    split instead, the same for every run, in file order."""
    records = list(range(100))
    drawn = subset(records, 10, 0)
    assert drawn == sorted(drawn) and len(set(drawn)) == 10 and drawn != records[:10]
    assert drawn == subset(records, 10, 0) and drawn != subset(records, 10, 1)
    assert max(drawn) - min(drawn) > 50  # spread over the split, not a block
    assert subset(records, 10, None) == records[:10]  # null: the first ones
    assert subset(records, None, 0) == records and subset(records, 500, 0) == records
    vqa = load_records(f"{corpus_dir}/test_vqa.jsonl", "vqa")
    metrics, rows = evaluate_many(short_model, {"": (vqa, None)}, batch_size=8, max_length=24,
                                  max_examples=6, sample_seed=5)[""]
    assert [row["id"] for row in rows] == [r.id for r in subset(vqa, 6, 5)]
    assert len({str(r.image) for r in subset(vqa, 6, 5)}) > len({str(r.image) for r in vqa[:6]})
