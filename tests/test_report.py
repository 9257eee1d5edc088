"""`dept-vl-report`: the README's results tables from runs' eval_results.json."""

import json

from dept_vl.cli.report import main


def test_report_prints_a_vqa_and_a_caption_table_from_single_and_multi_job_runs(tmp_path, capsys):
    single, jobs = tmp_path / "single", tmp_path / "jobs"
    single.mkdir()
    (single / "eval_results.json").write_text(json.dumps({
        "task": "vqa", "method": "dept", "trainable_parameters": 12345, "vqa_accuracy": 55.123,
        "vqa_accuracy_by_type": {"color": 3, "count": 4.56}, "train_seconds": 12.3,
        "vqa_accuracy_reserved_types": 1.0}))
    for job, values in {"b": {"task": "vqa", "method": "pt", "trainable_parameters": 1000,
                              "vqa_accuracy_by_type": {"shape": 3}},
                        "a": {"task": "caption", "method": "full", "trainable_parameters": 7,
                              "bleu4": 0.5, "cider": 3}}.items():
        (jobs / job).mkdir(parents=True)
        (jobs / job / "eval_results.json").write_text(json.dumps(values))
    main([str(single), str(jobs)])
    assert capsys.readouterr().out == (
        "VQA (test split, accuracy %)\n\n"
        "| method | trainable params | VQA acc | reserved types | pretrained types | color | count "
        "| shape | train s |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
        "| dept | 12,345 | 55.1 | 1.0 | – | 3.0 | 4.6 | – | 12.3 |\n"
        "| pt | 1,000 | – | – | – | – | – | 3.0 | – |\n\n"
        "Captioning (test split)\n\n"
        "| method | trainable params | BLEU-4 | CIDEr | train s |\n"
        "|---|---|---|---|---|\n"
        "| full | 7 | 0.5 | 3.0 | – |\n\n")


def test_report_of_an_unfinished_run_is_a_one_line_error(tmp_path):
    import subprocess
    import sys

    (tmp_path / "vqa").mkdir()
    done = subprocess.run([sys.executable, "-m", "dept_vl.cli.report", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (f"dept_vl: error: {tmp_path}: no eval_results.json "
                                   "(did the run finish?)")


def test_a_run_that_measured_the_frozen_backbone_gets_its_row_first(tmp_path, capsys):
    (tmp_path / "eval_results.json").write_text(json.dumps({
        "task": "vqa", "method": "dept", "trainable_parameters": 10, "vqa_accuracy": 90.0,
        "vqa_accuracy_by_type": {"color": 99.0, "count": 80.0},
        "frozen_backbone": {"vqa_accuracy": 70.0,
                            "vqa_accuracy_by_type": {"color": 98.0, "count": 1.0}}}))
    main([str(tmp_path)])
    rows = capsys.readouterr().out.splitlines()
    assert rows[4] == "| frozen backbone, no adapter | 0 | 70.0 | – | – | 98.0 | 1.0 | – |"
    assert rows[5] == "| dept | 10 | 90.0 | – | – | 99.0 | 80.0 | – |"


def test_a_registered_task_gets_its_own_table_from_its_spec(tmp_path, capsys, monkeypatch):
    """The report asks each result's TaskSpec how to lay it out: a task registered elsewhere
    (here a copy of captioning with no report settings) gets a table titled by its label,
    with its selection metric."""
    import dataclasses

    from dept_vl import tasks

    short = dataclasses.replace(tasks.TASKS["caption"], prefix="short:", label="short captions",
                                report_title="", report_columns=())
    monkeypatch.setitem(tasks.TASKS, "short_caption", short)
    (tmp_path / "eval_results.json").write_text(json.dumps({
        "task": "short_caption", "method": "dept", "trainable_parameters": 5, "cider": 7.25}))
    main([str(tmp_path)])
    assert capsys.readouterr().out == (
        "short captions (test split)\n\n| method | trainable params | cider | train s |\n"
        "|---|---|---|---|\n| dept | 5 | 7.2 | – |\n\n")
