"""A task with a record type of its own, defined in this file only: "counting", rows of
{id, image, count} with an integer count, answered with the number's word. Registering its
record class (`@record_type`) and its TaskSpec (`register_task`) is all it takes: training,
evaluation and the results report find it through the registries, and no file of dept_vl
names it."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from conftest import write_config
from PIL import Image

import dept_vl
from dept_vl.data.bad_data import fail
from dept_vl.data.records import RECORD_TYPES, Record, record_type
from dept_vl.data.rows import image_field
from dept_vl.tasks import TASKS, TaskSpec, register_task, unregister_task

NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True)
class CountRecord(Record):
    """An image and how many shapes it holds."""

    rows = "count_rows"
    fields = ((("image",), ("count",)), ("id",))
    id: str
    image: Any
    count: int
    source: str = ""
    task: str = "count_rows"

    @classmethod
    def from_row(cls, row, ident, where, resolve_image):
        count = row.get("count")
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count < 10:
            fail(where, f"field 'count' must be an integer in [0, 9], got {count!r}", "bad_field")
        return cls(ident, image_field(row, where, resolve_image), count, source=where)

    def kshot_key(self) -> str:
        return str(self.count)


def _count_metrics(predictions: list[str], records: list[CountRecord]) -> dict[str, Any]:
    right = sum(p == NUMBERS[r.count] for p, r in zip(predictions, records, strict=True))
    return {"count_accuracy": 100.0 * right / len(records), "num_images": len(records)}


COUNTING = TaskSpec(
    prefix="count:", label="counting", record_type=CountRecord, text=None,
    targets=lambda record: (NUMBERS[record.count],), sample_target=lambda targets, rng: targets[0],
    references=lambda record: (NUMBERS[record.count],), eval_records=list,
    metrics=_count_metrics, num_beams=1, max_new_tokens=4, metric="count_accuracy",
    prediction_row=lambda record, prediction: {"id": record.id, "prediction": prediction,
                                               "count": record.count},
    shared_batches=True, report_title="Counting (test split, exact match %)",
    report_columns=(("count_accuracy", "exact match"),))


@pytest.fixture
def counting():
    record_type(CountRecord)
    register_task("counting", COUNTING)
    yield "counting"
    unregister_task("counting")
    RECORD_TYPES.pop(CountRecord.rows)


def count_file(corpus: str, split: str, out: Path) -> str:
    """The corpus' count questions of a split as counting rows (their image, the number)."""
    rows = []
    for line in Path(corpus, f"{split}_vqa.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("question_type") == "count" and row["answers"][0] in NUMBERS:
            rows.append({"id": row["id"], "image": str(Path(corpus, row["image"])),
                         "count": NUMBERS.index(row["answers"][0])})
    path = out / f"{split}_count.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_a_task_with_its_own_record_type_trains_evaluates_and_reports(
        counting, tmp_path, corpus_dir, backbone, capsys):
    from dept_vl.cli import eval as eval_cli
    from dept_vl.cli import report
    from dept_vl.cli.train import main

    package = Path(dept_vl.__file__).parent
    assert [p for p in package.rglob("*.py") if "count_rows" in p.read_text()] == []
    files = {split: count_file(corpus_dir, split, tmp_path) for split in ("train", "val", "test")}
    run = tmp_path / "run"
    config = write_config(
        tmp_path / "count.yaml", task="counting", backbone=backbone, output_dir=str(run),
        method={"name": "dept", "prompt_length": 3, "rank": 2}, max_length=24,
        train_file=files["train"], eval_file=files["val"], test_file={"path": files["test"]},
        max_steps=3, batch_size=8, eval_steps=3, save_steps=100, warmup_steps=1,
        k_shot=2)  # k-shot draws 2 per count, through the record type's kshot_key
    main(["--config", config])
    results = json.loads((run / "eval_results.json").read_text())
    assert results["task"] == "counting" and 0 <= results["count_accuracy"] <= 100
    test_rows = len(Path(files["test"]).read_text().splitlines())
    assert results["num_images"] == test_rows
    meta = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert meta["task"] == "counting"
    predictions = json.loads((run / "test_predictions.json").read_text())
    assert {"id", "prediction", "count"} <= set(predictions[0])

    capsys.readouterr()
    eval_cli.main(["--adapter", str(run / "adapter"), "--data", files["test"],
                   "--out", str(tmp_path / "eval.json")])  # the task: the adapter's
    metrics = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    assert metrics["count_accuracy"] == results["count_accuracy"]

    capsys.readouterr()
    report.main([str(run)])
    table = capsys.readouterr().out
    assert table.startswith("Counting (test split, exact match %)\n")
    assert f"| {results['count_accuracy']:.1f} |" in table


def test_a_bad_row_of_the_new_type_names_its_file_and_line(counting, tmp_path):
    from dept_vl.data.bad_data import DataError
    from dept_vl.tasks import load_task_records

    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"image": str(image), "count": 1}) + "\n"
                    + json.dumps({"image": str(image), "count": "many"}) + "\n")
    with pytest.raises(DataError, match=rf"{data}:2: field 'count' must be an integer"):
        load_task_records(data, "counting")
    assert "counting" in TASKS
    with pytest.raises(ValueError, match="already registered"):
        register_task("counting", replace(COUNTING, label="other"))
