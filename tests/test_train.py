"""The training entry point end to end on a tiny corpus: pretraining a tiny backbone, DePT / PT /
LoRA on it, logs and files, resume from a checkpoint, and errors before any step."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dept_vl import VLT5
from dept_vl.data import shapes
from dept_vl.data.bad_data import DataError
from dept_vl.errors import CheckpointError
from conftest import split, write_config
from dept_vl.cli.train import main


def test_pretraining_writes_a_loadable_backbone_with_its_question_types(backbone):
    model = VLT5.from_pretrained(backbone)
    assert model.metadata["pretrain_question_types"] == ["color", "shape", "exists"]
    assert model.base_model == "tiny-test-backbone"
    results = json.loads((Path(backbone).parent / "eval_results.json").read_text())
    assert results["method"] == "full" and results["steps"] == 4
    # built from `model:`, it started from no backbone directory; saved_to names the one it wrote
    assert results["backbone"] is None and results["saved_to"] == str(backbone)


def dept_config(tmp_path, corpus_dir, backbone, **overrides):
    values = dict(
        method={"name": "dept", "prompt_length": 4, "rank": 2, "lr": {"lowrank": 1e-2}},
        task="vqa", backbone=backbone,
        train_file=split(corpus_dir, "train", "vqa"), eval_file=split(corpus_dir, "val", "vqa"),
        test_file=split(corpus_dir, "test", "vqa"), output_dir=str(tmp_path / "run"),
        max_length=24, max_steps=6, batch_size=8, eval_steps=3,
        save_steps=3, logging_steps=1, warmup_steps=1, seed=1,
    )
    values.update(overrides)
    return write_config(tmp_path / "dept.yaml", **values)


def test_dept_training_leaves_adapter_results_logs_and_an_untouched_backbone(
        tmp_path, corpus_dir, backbone):
    before = {k: v.clone() for k, v in VLT5.from_pretrained(backbone).state_dict().items()}
    main(["--config", dept_config(tmp_path, corpus_dir, backbone)])
    run = tmp_path / "run"
    results = json.loads((run / "eval_results.json").read_text())
    assert 0 <= results["vqa_accuracy"] <= 100
    assert set(results["vqa_accuracy_by_type"]) == set(shapes.TYPE_SETS["default"])
    assert results["reserved_question_types"] == sorted(
        set(shapes.TYPE_SETS["default"]) - {"color", "shape", "exists"})
    assert "frozen_backbone" not in results  # evaluate_frozen is off by default
    assert "vqa_accuracy_reserved_types" in results and results["steps"] == 6
    assert results["backbone"] == backbone
    meta = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert meta["method"] == "dept" and meta["prompt_length"] == 4 and meta["rank"] == 2
    assert set(load_file(run / "adapter" / "adapter_model.safetensors")) >= {
        "prompt_embeddings", "lowrank_A", "lowrank_B", "visual_projection.linear.weight"}
    rows = (run / "logs" / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,name,value" and any(",train/loss," in r for r in rows)
    assert any(",eval/vqa_accuracy," in r for r in rows)
    # a metric by question type is one scalar per type
    assert any(",eval/vqa_accuracy_by_type/count," in r for r in rows)
    assert list((run / "logs").rglob("events.out.tfevents*")), "no TensorBoard log"
    assert (run / "checkpoints" / "checkpoint_3").is_dir()
    after = VLT5.from_pretrained(backbone).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the saved adapter reproduces the reported test accuracy
    model = VLT5.from_pretrained(backbone)
    model.load_adapter(run / "adapter", name="vqa")
    from dept_vl.data.formats import load_records
    from dept_vl.evaluate import evaluate
    metrics, _ = evaluate(model, load_records(f"{corpus_dir}/test_vqa.jsonl", "vqa"), "vqa",
                          max_length=24)
    assert metrics["vqa_accuracy"] == pytest.approx(results["vqa_accuracy"])


def test_evaluate_frozen_tests_the_backbone_without_its_adapter_beside_the_run(
        tmp_path, corpus_dir, backbone):
    main(["--config", dept_config(tmp_path, corpus_dir, backbone, evaluate_frozen=True)])
    frozen = json.loads((tmp_path / "run" / "eval_results.json").read_text())["frozen_backbone"]
    model = VLT5.from_pretrained(backbone)  # no adapter at all
    from dept_vl.data.formats import load_records
    from dept_vl.evaluate import evaluate
    metrics, _ = evaluate(model, load_records(f"{corpus_dir}/test_vqa.jsonl", "vqa"), None,
                          max_length=24)
    assert frozen["vqa_accuracy"] == pytest.approx(metrics["vqa_accuracy"])
    assert frozen["vqa_accuracy_by_type"] == pytest.approx(metrics["vqa_accuracy_by_type"])
    assert "vqa_accuracy_reserved_types" in frozen


def test_resume_from_checkpoint_continues_to_the_same_weights(tmp_path, corpus_dir, backbone):
    config = dept_config(tmp_path, corpus_dir, backbone, eval_file=None, test_file=None)
    main(["--config", config])
    uninterrupted = load_file(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
    # a second run that stops at the checkpoint (step 3), then resumes from it to step 6
    resumed_dir = tmp_path / "resumed"
    main(["--config", config, "--output_dir", str(resumed_dir), "--max_steps", "6",
          "--save_steps", "3"])
    checkpoint = resumed_dir / "checkpoints" / "checkpoint_3"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["step"] == 3
    (resumed_dir / "adapter").rename(resumed_dir / "adapter-first")
    main(["--config", config, "--output_dir", str(resumed_dir),
          "--resume_from_checkpoint", "latest"])
    results = json.loads((resumed_dir / "eval_results.json").read_text())
    assert results["steps"] == 6
    resumed = load_file(resumed_dir / "adapter" / "adapter_model.safetensors")
    for key in uninterrupted:
        torch.testing.assert_close(resumed[key], uninterrupted[key], atol=1e-6, rtol=1e-5)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        main(["--config", config, "--output_dir", str(tmp_path / "empty"),
              "--resume_from_checkpoint", "latest"])


@pytest.mark.parametrize("method", [{"name": "pt", "prompt_length": 8}, "lora"])
def test_other_methods_train(tmp_path, corpus_dir, backbone, method):
    config = dept_config(tmp_path, corpus_dir, backbone, method=method, max_steps=2,
                         eval_file=None, save_steps=100)
    method = method if isinstance(method, str) else method["name"]
    main(["--config", config])
    results = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    assert results["method"] == method and "vqa_accuracy" in results
    meta = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    if method == "pt":  # the block's length, not DePT's
        assert meta["method"] == "pt" and meta["prompt_length"] == 8
    else:
        assert meta["method"] == "lora" and meta["trainable_parameters"] > 0


def test_caption_training_reports_bleu_and_cider(tmp_path, corpus_dir, backbone):
    config = dept_config(
        tmp_path, corpus_dir, backbone, task="caption", max_steps=2, save_steps=100,
        train_file=split(corpus_dir, "train", "caption"),
        eval_file=split(corpus_dir, "val", "caption"), test_file=split(corpus_dir, "test", "caption"))
    main(["--config", config])
    results = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    assert {"bleu4", "cider", "num_images"} <= set(results)
    meta = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert meta["task"] == "caption"


def test_bad_rows_and_images_stop_the_run_before_training(tmp_path, corpus_dir, backbone):
    bad = tmp_path / "bad.jsonl"
    good = Path(corpus_dir, "train_vqa.jsonl").read_text().splitlines()[0]
    row = json.loads(good)
    row["image"] = str(Path(corpus_dir) / row["image"])
    bad.write_text(json.dumps(row) + "\n" + '{"image": "x.png", "answers": ["red"]}\n')
    config = dept_config(tmp_path, corpus_dir, backbone, train_file=str(bad))
    with pytest.raises(DataError, match=r"bad.jsonl:2: missing field 'question'"):
        main(["--config", config])
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png")
    row["image"] = str(corrupt)
    bad.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: cannot read image .*corrupt.png"):
        main(["--config", config])
    assert not (tmp_path / "run").exists() or not (tmp_path / "run" / "adapter").exists()


def test_length_grouped_batches_train(tmp_path, corpus_dir, backbone):
    config = dept_config(tmp_path, corpus_dir, backbone, max_steps=3, eval_file=None,
                         save_steps=100, group_by_length=True)
    main(["--config", config])
    assert json.loads((tmp_path / "run" / "eval_results.json").read_text())["steps"] == 3


# ---------------------------------------------------------------- nothing lost, nothing wrong
def nan_after(monkeypatch, calls):
    """The model's loss turns NaN from its `calls`-th forward pass on (a diverging run)."""
    from dept_vl.model import VLT5 as Model

    forward, seen = Model.forward, {"n": 0}

    def diverging(self, *args, **kwargs):
        output = forward(self, *args, **kwargs)
        seen["n"] += 1
        if seen["n"] >= calls and output.loss is not None:
            output.loss = output.loss * float("nan")
        return output

    monkeypatch.setattr(Model, "forward", diverging)


def test_a_nan_loss_stops_the_run_with_an_error_and_saves_nothing(
        tmp_path, corpus_dir, backbone, monkeypatch, capsys):
    from dept_vl.errors import TrainingError, run_cli

    config = dept_config(tmp_path, corpus_dir, backbone, eval_file=None, save_steps=2)
    nan_after(monkeypatch, 4)  # steps 1-3 are fine, step 4's loss is NaN
    with pytest.raises(TrainingError, match=r"step 4: the training loss is nan.*checkpoint_2"):
        main(["--config", config])
    run = tmp_path / "run"
    assert not (run / "adapter").exists() and not (run / "eval_results.json").exists()
    assert (run / "checkpoints" / "checkpoint_2" / "trainer_state.json").is_file()
    assert run_cli(main, ["--config", config, "--output_dir", str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # progress bars, then the error
    assert err[-1].startswith("dept_vl: error: step ") and "training loss is nan" in err[-1]
    assert sum(line.startswith("dept_vl: error") for line in err) == 1


def test_the_adapter_is_saved_before_test_evaluation_can_fail(
        tmp_path, corpus_dir, backbone, monkeypatch):
    import dept_vl.training.loop as train_module
    from dept_vl.errors import TrainingError

    test_image = Path(corpus_dir, json.loads(
        Path(corpus_dir, "test_vqa.jsonl").read_text().splitlines()[0])["image"])
    original_bytes = test_image.read_bytes()
    save = train_module.save_result_model

    def save_then_damage(*args, **kwargs):
        saved = save(*args, **kwargs)
        test_image.write_bytes(original_bytes[:40])  # the disk changes under a running job
        return saved

    monkeypatch.setattr(train_module, "save_result_model", save_then_damage)
    try:
        with pytest.raises(TrainingError, match=r"test evaluation failed.*saved in .*adapter"):
            main(["--config", dept_config(tmp_path, corpus_dir, backbone, eval_file=None)])
    finally:
        test_image.write_bytes(original_bytes)
    run = tmp_path / "run"
    assert not (run / "eval_results.json").exists()
    VLT5.from_pretrained(backbone).load_adapter(run / "adapter", name="vqa")


def test_the_logged_training_loss_is_the_mean_over_processes(
        tmp_path, corpus_dir, backbone, monkeypatch):
    from accelerate import Accelerator

    calls = []

    def reduce(self, tensor, reduction="sum", scale=1.0):
        calls.append(reduction)
        return torch.full_like(tensor, 42.0)  # what the other ranks would have made of it

    monkeypatch.setattr(Accelerator, "reduce", reduce)
    main(["--config", dept_config(tmp_path, corpus_dir, backbone, eval_file=None,
                                  test_file=None, max_steps=2, save_steps=100)])
    rows = (tmp_path / "run" / "logs" / "metrics.csv").read_text().splitlines()
    assert [r for r in rows if ",train/loss," in r] == ["1,train/loss,42.0", "2,train/loss,42.0"]
    assert set(calls) == {"mean"}


def test_flags_naming_data_without_a_config_make_one_run_of_that_data(
        tmp_path, corpus_dir, backbone, monkeypatch):
    monkeypatch.chdir(tmp_path)
    results = main(["--method", "dept", "--backbone", backbone, "--task", "vqa",
                    "--train_file", f"{corpus_dir}/train_vqa.jsonl",
                    "--test_file", f"{corpus_dir}/test_vqa.jsonl", "--output_dir", "mine",
                    "--method.prompt_length", "4", "--method.rank", "2", "--max_length", "24",
                    "--max_steps", "2", "--batch_size", "8", "--save_steps", "100"])
    assert list(results) == [""] and results[""]["method"] == "dept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no quickstart corpus
    assert (tmp_path / "mine" / "adapter").is_dir() and not (tmp_path / "mine" / "vqa").exists()


def test_which_config_flags_use(tmp_path):
    from dept_vl.training.rules import ConfigError
    from dept_vl.cli.train import DEFAULT_CONFIG, config_path

    assert config_path(["--max_steps", "5"]) == (str(DEFAULT_CONFIG), ["--max_steps", "5"])
    assert config_path(["--train-file=a.jsonl"]) == (None, ["--train-file=a.jsonl"])
    assert config_path(["--config=x.yaml", "--seed", "1"]) == ("x.yaml", ["--seed", "1"])
    with pytest.raises(ConfigError, match="--config: needs a YAML file"):
        config_path(["--config"])
    with pytest.raises(ConfigError, match="train_file: no training data given"):
        main(["--eval_file", "val.jsonl", "--backbone", "b", "--output_dir", str(tmp_path)])


def test_data_without_question_types_reports_no_reserved_types(tmp_path, corpus_dir, backbone):
    rows = []
    for line in Path(corpus_dir, "test_vqa.jsonl").read_text().splitlines():
        row = json.loads(line)
        row.pop("question_type", None)
        row["image"] = str(Path(corpus_dir, row["image"]))
        rows.append(json.dumps(row))
    untyped = tmp_path / "untyped.jsonl"
    untyped.write_text("\n".join(rows) + "\n")
    main(["--config", dept_config(tmp_path, corpus_dir, backbone, eval_file=None, max_steps=1,
                                  test_file=str(untyped), save_steps=100)])
    results = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    assert "vqa_accuracy" in results
    assert not {"vqa_accuracy_reserved_types", "vqa_accuracy_pretrained_types",
                "reserved_question_types"} & set(results)


def test_reserved_types_count_only_typed_questions():
    """The VQA task's own report (its TaskSpec's type_report); a task without one, or a
    backbone that records no pretraining types, has none."""
    from types import SimpleNamespace

    from dept_vl.training.results import reserved_type_report

    rows = [{"answers": ["red"], "prediction": "red", "question_type": "color"},
            {"answers": ["2"], "prediction": "3", "question_type": "count"},
            {"answers": ["yes"], "prediction": "yes", "question_type": None}]
    model = SimpleNamespace(metadata={"pretrain_question_types": ["color"]})
    report = reserved_type_report("vqa", {"vqa_accuracy": 66.7}, rows, model)
    assert report == {"reserved_question_types": ["count"], "vqa_accuracy_reserved_types": 0.0,
                      "vqa_accuracy_pretrained_types": 100.0}
    assert reserved_type_report("caption", {"cider": 1.0}, rows, model) == {}
    assert reserved_type_report("vqa", {"vqa_accuracy": 66.7}, rows,
                                SimpleNamespace(metadata={})) == {}


def test_on_bad_data_skip_drops_counts_and_lists_bad_rows_and_images(
        tmp_path, corpus_dir, backbone, capsys):
    lines = Path(corpus_dir, "train_vqa.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    for row in rows:
        row["image"] = str(Path(corpus_dir, row["image"]))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(Path(rows[0]["image"]).read_bytes()[:60])
    bad = [json.dumps({**rows[0], "id": "no-image", "image": str(tmp_path / "missing.png")}),
           "{not json",
           json.dumps({**rows[1], "id": "broken", "image": str(truncated)}),
           json.dumps({k: v for k, v in rows[2].items() if k != "question"} | {"id": "noq"})]
    data = tmp_path / "scraped.jsonl"
    data.write_text("\n".join([json.dumps(r) for r in rows[3:]] + bad) + "\n")
    config = dept_config(tmp_path, corpus_dir, backbone, train_file=str(data), eval_file=None,
                         max_steps=1, save_steps=100)
    with pytest.raises(DataError, match=r"scraped.jsonl:\d+"):
        main(["--config", config])  # the default policy stops before training
    assert not (tmp_path / "run" / "adapter").exists()
    main(["--config", config, "--on_bad_data", "skip"])
    run = tmp_path / "run"
    skipped = [json.loads(line) for line in (run / "skipped.jsonl").read_text().splitlines()]
    first_bad = len(rows) - 3 + 1
    assert {s["source"] for s in skipped} == {f"{data}:{first_bad + i}" for i in range(4)}
    results = json.loads((run / "eval_results.json").read_text())
    assert results["skipped"]["total"] == 4 and sum(results["skipped"]["by_reason"].values()) == 4
    assert "4 rows or images skipped" in capsys.readouterr().out


def test_dry_run_of_a_hub_backbone_offline_is_one_line_naming_it(capsys, monkeypatch):
    from dept_vl.errors import run_cli

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = str(Path(__file__).resolve().parent.parent / "configs" / "vqav2_t5base_vit.yaml")
    # (in-process, so the accelerator state of earlier tests stays: no bf16 here)
    assert run_cli(main, ["--config", config, "--dry_run", "true", "--mixed_precision", "no"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dept_vl: error:") and "t5-base" in err[0]
