"""The training entry point end to end on a tiny corpus: pretraining a tiny backbone, DePT / PT /
LoRA on it, logs and files, resume from a checkpoint, and errors before any step."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dept_vl import VLT5
from dept_vl.data import shapes
from dept_vl.data.records import DataError
from conftest import split, write_config
from dept_vl.train import main


def test_pretraining_writes_a_loadable_backbone_with_its_question_types(backbone):
    model = VLT5.from_pretrained(backbone)
    assert model.metadata["pretrain_question_types"] == ["color", "shape", "exists"]
    assert model.base_model == "tiny-test-backbone"
    results = json.loads((Path(backbone).parent / "eval_results.json").read_text())
    assert results["method"] == "full" and results["steps"] == 4


def dept_config(tmp_path, corpus_dir, backbone, **overrides):
    values = dict(
        method="dept", task="vqa", backbone=backbone,
        train_file=split(corpus_dir, "train", "vqa"), eval_file=split(corpus_dir, "val", "vqa"),
        test_file=split(corpus_dir, "test", "vqa"), output_dir=str(tmp_path / "run"),
        prompt_length=4, rank=2, max_length=24, max_steps=6, batch_size=8, eval_steps=3,
        save_steps=3, logging_steps=1, warmup_steps=1, lr_lowrank=1e-2, seed=1,
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
    assert set(results["vqa_accuracy_by_type"]) == set(shapes.QUESTION_TYPES)
    assert results["reserved_question_types"] == ["count", "size", "spatial"]
    assert "vqa_accuracy_reserved_types" in results and results["steps"] == 6
    meta = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert meta["method"] == "dept" and meta["prompt_length"] == 4 and meta["rank"] == 2
    assert set(load_file(run / "adapter" / "adapter_model.safetensors")) >= {
        "prompt_embeddings", "lowrank_A", "lowrank_B", "visual_projection.linear.weight"}
    rows = (run / "logs" / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,name,value" and any(",train/loss," in r for r in rows)
    assert any(",eval/vqa_accuracy," in r for r in rows)
    assert list((run / "logs").rglob("events.out.tfevents*")), "no TensorBoard log"
    assert (run / "checkpoints" / "checkpoint_3").is_dir()
    after = VLT5.from_pretrained(backbone).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the saved adapter reproduces the reported test accuracy
    model = VLT5.from_pretrained(backbone)
    model.load_adapter(run / "adapter", name="vqa")
    from dept_vl.data.records import load_records
    from dept_vl.evaluate import evaluate
    metrics, _ = evaluate(model, load_records(f"{corpus_dir}/test_vqa.jsonl", "vqa"), "vqa",
                          max_length=24)
    assert metrics["vqa_accuracy"] == pytest.approx(results["vqa_accuracy"])


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
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        main(["--config", config, "--output_dir", str(tmp_path / "empty"),
              "--resume_from_checkpoint", "latest"])


@pytest.mark.parametrize("method", ["pt", "lora"])
def test_other_methods_train(tmp_path, corpus_dir, backbone, method):
    config = dept_config(tmp_path, corpus_dir, backbone, method=method, max_steps=2,
                         eval_file=None, save_steps=100)
    main(["--config", config])
    results = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    assert results["method"] == method and "vqa_accuracy" in results
    meta = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    if method == "pt":
        # equal budget: DePT(4, 2) at s=24, d=32 = 4*32 + 2*(24+32) = 240 = PT with 7.5 → 8 tokens
        assert meta["rank"] == 0 and meta["prompt_length"] == 8
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
    assert meta["task_prefix"] == "caption:"


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
