"""`python -m dept_vl.evaluate` and `python -m dept_vl.cli.features` name data as a config does
(dept_vl/cli/data_flags.py): a path with --format / --annotations / --image-dir / --split /
--column-map, a YAML data entry, or a YAML file holding one. A VQAv2 test split (questions, no
annotations) is predicted but never scored, refused for training, and written with
`--submission` in the official VQA results format.

The data is the VQAv2-format set of the scale rehearsal (benchmarks/scale_data.py) at its
smallest; the backbone is the tiny one of conftest.py, saved untrained.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from benchmarks.scale_data import vqav2_files, write_dataset
from conftest import tiny_model
from dept_vl import DePTConfig, VLT5
from dept_vl.data.records import VQARecord
from dept_vl.errors import run_cli
from dept_vl.cli.eval import main
from dept_vl.evaluate import evaluate
from dept_vl.metrics import normalize_answer
from dept_vl.training.taskdata import load_split
from dept_vl.tasks import TASKS


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Any]:
    """A saved tiny backbone and VQA adapter; VQAv2 val2014 files (questions + annotations);
    a test2015 split of the same questions without annotations, as test-dev comes."""
    root = tmp_path_factory.mktemp("vqav2")
    write_dataset(root, images=3, image_size=32)
    model = tiny_model("test_vit")
    model.save_pretrained(root / "backbone")
    model.add_adapter("vqa", DePTConfig(prompt_length=2, rank=2, max_length=24,
                                        task_prefix="vqa:"))
    model.save_adapter("vqa", root / "adapter")
    val = vqav2_files(root, "val2014")
    test_images = root / "coco" / "test2015"
    test_images.mkdir()
    for image in Path(val["image_dir"]).iterdir():
        shutil.copy(image, test_images / image.name.replace("val2014", "test2015"))
    questions = json.loads(Path(val["path"]).read_text())
    test = root / "vqav2" / "v2_OpenEnded_mscoco_test-dev2015_questions.json"
    test.write_text(json.dumps({**questions, "data_subtype": "test2015"}))
    return {"root": root, "backbone": str(root / "backbone"), "adapter": str(root / "adapter"),
            "val": val, "test": str(test), "test_images": str(test_images),
            "question_ids": [q["question_id"] for q in questions["questions"]]}


def run_evaluate(world: dict[str, Any], tmp_path: Path, *data_args: str) -> dict[str, Any]:
    """The CLI's --out file (metrics and predictions) for these data arguments."""
    out = tmp_path / "out.json"
    argv = ["--backbone", world["backbone"], "--adapter", world["adapter"], *data_args,
            "--out", str(out)]
    assert run_cli(main, argv) == 0
    return json.loads(out.read_text())


def without_time(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k != "eval_seconds"}


@pytest.fixture(scope="module")
def in_python(world) -> dict[str, Any]:
    """The val split loaded and evaluated in Python, as a config's data entry is."""
    model = VLT5.from_pretrained(world["backbone"])
    name = model.load_adapter(world["adapter"])
    records = load_split(world["val"], "vqa")
    metrics, rows = evaluate(model, records, name, 64, model.adapters[name].config.max_length)
    return {"metrics": without_time(metrics), "predictions": rows}


def error_line(capsys) -> str:
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("dept_vl: error: "), err
    return err[0]


def test_vqav2_flags_score_as_the_same_records_loaded_in_python(world, in_python, tmp_path):
    val = world["val"]
    got = run_evaluate(world, tmp_path, "--data", val["path"], "--format", "vqav2",
                       "--annotations", val["annotations"], "--image-dir", val["image_dir"])
    assert without_time(got["metrics"]) == in_python["metrics"]
    assert got["predictions"] == in_python["predictions"]
    assert got["metrics"]["num_questions"] == len(world["question_ids"]) == 14
    assert "vqa_accuracy_by_type" in got["metrics"]


def test_data_as_a_yaml_entry_or_a_yaml_file_reads_the_same(world, in_python, tmp_path):
    val = world["val"]
    text = yaml.safe_dump(val, default_flow_style=True).strip()  # {path: ..., format: ...}
    got = run_evaluate(world, tmp_path, "--data", text)
    assert without_time(got["metrics"]) == in_python["metrics"]
    entry_file = tmp_path / "val.yaml"
    entry_file.write_text(yaml.safe_dump([{k: v for k, v in val.items() if k != "image_dir"}]))
    got = run_evaluate(world, tmp_path, "--data", str(entry_file), "--image-dir",
                       val["image_dir"])  # the flag fills the key the file leaves out
    assert got["predictions"] == in_python["predictions"]


def valid_submission(path: Path, questions_file: str) -> list[dict[str, Any]]:
    """The official VQA results format: a list of {"question_id": int, "answer": str}, exactly
    one per question of the questions file."""
    results = json.loads(path.read_text())
    assert isinstance(results, list)
    for entry in results:
        assert isinstance(entry, dict) and set(entry) == {"question_id", "answer"}, entry
        assert type(entry["question_id"]) is int and isinstance(entry["answer"], str), entry
    ids = [entry["question_id"] for entry in results]
    wanted = [q["question_id"] for q in json.loads(Path(questions_file).read_text())["questions"]]
    assert len(ids) == len(set(ids)), "a question answered twice"
    assert sorted(ids) == sorted(wanted)
    return results


def test_test_split_without_annotations_is_predicted_and_written_as_a_submission(
        world, tmp_path):
    submission = tmp_path / "results" / "vqa_test-dev2015_results.json"
    got = run_evaluate(world, tmp_path, "--data", world["test"], "--image-dir",
                       world["test_images"], "--submission", str(submission))
    metrics = got["metrics"]
    assert "vqa_accuracy" not in metrics and "vqa_accuracy_by_type" not in metrics
    assert metrics["num_predicted"] == metrics["num_unanswered"] == 14
    assert metrics["has_answers"] is False
    assert metrics["submission"] == {"file": str(submission), "answers": 14}
    results = valid_submission(submission, world["test"])
    by_id = {int(row["id"]): row["prediction"] for row in got["predictions"]}
    assert all(entry["answer"] == normalize_answer(by_id[entry["question_id"]])
               for entry in results)
    assert [p.name for p in submission.parent.iterdir()] == [submission.name]  # no temp file


def test_vqa_metrics_score_the_answered_records_and_count_the_unanswered():
    answered = VQARecord("1", "a.png", "what color ?", ("red",))
    unanswered = VQARecord("2", "a.png", "what shape ?", (), unanswered=True)
    metrics = TASKS["vqa"].metrics(["red", "circle"], [answered, unanswered])
    assert metrics == {"vqa_accuracy": 100.0, "vqa_accuracy_by_type": {"all": 100.0},
                       "num_questions": 1, "num_predicted": 2, "num_unanswered": 1,
                       "has_answers": True}
    assert TASKS["vqa"].metrics(["red"], [answered]) == {
        "vqa_accuracy": 100.0, "vqa_accuracy_by_type": {"all": 100.0}, "num_questions": 1}
    with pytest.raises(ValueError):  # a prediction short is a bug, never a shorter split
        TASKS["vqa"].metrics(["red"], [answered, unanswered])


def test_unanswered_records_are_refused_for_training(world, tmp_path, capsys):
    from dept_vl.cli.train import main as train_main

    entry = {"path": world["test"], "format": "vqav2", "image_dir": world["test_images"]}
    argv = ["--backbone", world["backbone"], "--task", "vqa", "--train_file",
            json.dumps(entry), "--output_dir", str(tmp_path / "run"), "--max_steps", "1"]
    assert run_cli(train_main, argv) == 2
    line = error_line(capsys)
    assert f"{world['test']}:questions[0]: question without answers" in line
    assert "train_file of a training run needs answers" in line
    assert not (tmp_path / "run" / "adapter").exists()


def test_submission_is_refused_for_captions_and_for_ids_that_are_not_question_ids(
        world, tmp_path, capsys):
    submission = tmp_path / "results.json"
    coco = world["root"] / "coco"
    argv = ["--backbone", world["backbone"], "--adapter", world["adapter"], "--task", "caption",
            "--data", str(coco / "dataset_coco.json"), "--image-dir", str(coco), "--split",
            "val", "--submission", str(submission)]
    assert run_cli(main, argv) == 2
    line = error_line(capsys)
    assert "--submission writes the VQA results format" in line and "caption record" in line
    rows = [{"image": str(Path(world["test_images"]) / name), "question": "what color ?",
             "answers": ["red"]} for name in sorted(p.name for p in
                                                   Path(world["test_images"]).iterdir())]
    jsonl = tmp_path / "questions.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
    argv[argv.index("--task"):argv.index("--submission")] = ["--data", str(jsonl)]
    assert run_cli(main, argv) == 2
    assert f"{jsonl}:1: id 'questions-1' is not an integer question_id" in error_line(capsys)
    assert not submission.exists()


@pytest.mark.parametrize("data_args, message", [
    (["--data", "{path: q.json, formt: vqav2}"],
     "--data {path: q.json, formt: vqav2}: formt: unknown key (did you mean 'format'?); "
     "allowed: annotations, check_images, column_map, format, image_dir, path, split, task"),
    (["--data", "q.jsonl", "--format", "parquet-ish"],
     "--data q.jsonl: format: must be one of ('auto', 'hf', 'jsonl', 'karpathy', 'vqav2'), "
     "got 'parquet-ish'"),
    (["--data", "{path: q.json, image_dir: a}", "--image-dir", "b"],
     "--data {path: q.json, image_dir: a}: image_dir: given in the entry ('a') and as "
     "--image-dir ('b'); give it once"),
    (["--data", "t.csv", "--column-map", "[q, a]"],
     "--column-map '[q, a]': expected a mapping of field to column"),
    (["--data", "{path: q.json"], "--data {path: q.json: invalid YAML"),
    (["--data", "missing.yaml"], "--data missing.yaml: data entry file not found"),
])
def test_bad_data_arguments_are_one_line_before_the_backbone_loads(data_args, message, world,
                                                                  monkeypatch, capsys):
    """Entries are checked by the config's rule, with its wording, naming the --data value."""
    def never(directory):
        raise AssertionError("the backbone was loaded before --data was checked")

    monkeypatch.setattr(VLT5, "from_pretrained", never)
    assert run_cli(main, ["--backbone", world["backbone"], *data_args]) == 2
    assert error_line(capsys).startswith(f"dept_vl: error: {message}")


def test_features_read_the_same_entries_test_split_and_column_map_included(world, tmp_path,
                                                                         capsys):
    from dept_vl.cli.features import main as features_main

    cache = tmp_path / "cache"
    argv = ["--backbone", world["backbone"], "--cache-dir", str(cache), "--data",
            world["test"], "--image-dir", world["test_images"]]
    assert run_cli(features_main, argv) == 0
    assert "2 images encoded" in capsys.readouterr().out
    table = tmp_path / "table.csv"
    images = sorted(Path(world["test_images"]).iterdir())
    table.write_text("picture,q,a\n" + "".join(f"{p},what color ?,red\n" for p in images))
    argv = ["--backbone", world["backbone"], "--cache-dir", str(cache), "--data", str(table),
            "--column-map", "{image: picture, question: q, answers: a}"]
    assert run_cli(features_main, argv) == 0
    assert "0 images encoded" in capsys.readouterr().out  # the same images, already cached
