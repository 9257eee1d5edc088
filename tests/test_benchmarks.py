"""The benchmark suite's --quick version runs end to end and writes its files (no timing is
asserted here: speed targets live in the benchmark tables, never in tests)."""

import json
from pathlib import Path

import pytest

from benchmarks.run import SUITES, main


def test_quick_suite_writes_json_markdown_and_plots(tmp_path):
    out = main(["--suite", "all", "--quick", "--out", str(tmp_path)])
    for name in SUITES:
        assert json.loads((out / f"{name}.json").read_text())["wall_seconds"] >= 0
        assert (out / f"{name}.md").read_text().count("|") > 10
        assert (out / f"{name}.png").stat().st_size > 5_000
    summary = (out / "summary.md").read_text()
    assert all(f"## {name}" in summary for name in SUITES)
    mixed = json.loads((out / "mixed.json").read_text())
    assert mixed["max_abs_difference"] < 1e-4  # mixed batch == single-adapter batches
    features = json.loads((out / "features.json").read_text())
    assert features["max_loss_difference"] < 1e-4  # cached == on-the-fly training
    serving = json.loads((out / "serving.json").read_text())
    assert serving["same_answers"]  # batched serving == one request at a time
    assert max(map(int, serving["batch_sizes"]["batched"])) > 1


def test_allocator_peak_counts_tensors_freed_inside_the_block():
    import torch

    from benchmarks.common import AllocatorPeak

    kept = torch.ones(1)
    with AllocatorPeak() as peak:
        temporary = torch.ones(1_000_000)  # 4,000,000 bytes, freed before the block ends
        del temporary
        kept = torch.ones(250_000)  # 1,000,000 bytes, still held
    assert 4_000_000 <= peak.peak < 4_000_000 + 1_100_000
    assert kept.numel() == 250_000


def test_quick_scale_rehearsal_runs_the_cli_through_every_phase(tmp_path):
    """`--suite scale --quick`: the real train.py on generated VQAv2 files (one process; the
    full setting adds torchrun's two): every phase ran, every measure is there and sane, and
    the run killed after its checkpoint and resumed from `latest` ends where the uninterrupted
    run ends."""
    import math

    out = main(["--suite", "scale", "--quick", "--out", str(tmp_path)])
    results = json.loads((out / "scale.json").read_text())
    assert list(results["phases"]) == ["cache", "train", "killed", "resume", "evaluate"]
    for name, phase in results["phases"].items():
        assert phase["peak_pss_bytes"] > 50e6 and phase["peak_rss_largest_process_bytes"] > 50e6
        assert phase["wall_seconds"] > 0 and phase["returncode"] == (-9 if name == "killed" else 0)
        assert (out / "scale-logs" / f"{name}.log").stat().st_size > 0
    n = results["numbers"]
    assert n["killed"] and n["resume"] == {"max_loss_difference": 0.0,
                                           "max_adapter_difference": 0.0}
    assert n["cache_images"] == results["data"]["images"] == 16
    assert 0 < n["cache_bytes_per_image"] < 100_000 and n["cache_images_per_second"] > 0
    assert 0 < n["checkpoint_bytes"] < 5_000_000 and n["adapter_bytes"] > 0
    for key in ("cli_step_seconds", "compute_step_seconds", "eval_examples_per_second"):
        assert 0 < n[key] < math.inf, key
    assert n["input_pipeline_overhead"] < 1
    assert n["eval_examples"] == results["data"]["questions"]["val2014"] > 0
    assert 0 <= n["vqa_accuracy"] <= 100
    table = (out / "scale.md").read_text()
    assert "input-pipeline overhead" in table and table.count("\n| ") >= 15


def test_scale_data_is_vqav2_and_karpathy_as_the_loaders_read_them(tmp_path):
    from benchmarks.scale_data import vqav2_files, write_dataset
    from dept_vl.data.formats import load_records

    made = write_dataset(tmp_path, images=9, image_size=32)
    assert made["train_images"] + made["val_images"] == 9
    val = vqav2_files(tmp_path, "val2014")
    annotations = json.loads(Path(val["annotations"]).read_text())["annotations"]
    assert {len(a["answers"]) for a in annotations} == {10}
    records = load_records(val["path"], "vqa", "vqav2", image_dir=val["image_dir"],
                           annotations=val["annotations"])
    assert len(records) == made["questions"]["val2014"] == len(annotations)
    assert all(len(r.answers) == 10 for r in records)
    assert records[0].image.endswith(f"val2014/COCO_val2014_{8:012d}.jpg")
    from PIL import Image
    with Image.open(records[0].image) as image:
        assert image.size == (32, 32) and image.format == "JPEG"
    captions = load_records(tmp_path / "coco" / "dataset_coco.json", "caption", "karpathy",
                            image_dir=str(tmp_path / "coco"), split="train")
    assert len(captions) == made["karpathy"]["train"] > 0  # restval counted in train
    assert all(len(c.captions) == 5 for c in captions)


def test_by_objects_pools_seeds_per_object_count(tmp_path):
    from benchmarks.by_objects import counts_by_question, table

    corpus, grid = tmp_path / "shapes", tmp_path / "grid"
    corpus.mkdir()
    captions = [("a.png", "one object : small red circle center"),
                ("b.png", "six objects : ...")]
    (corpus / "test_caption.jsonl").write_text("".join(
        json.dumps({"image": image, "captions": [text, "x"]}) + "\n" for image, text in captions))
    (corpus / "test_vqa.jsonl").write_text("".join(
        json.dumps({"id": qid, "image": image}) + "\n"
        for qid, image in [("a_5", "a.png"), ("b_5", "b.png"), ("b_0", "b.png")]))
    rows = {0: ["center", "top left"], 1: ["center", "center"]}  # seed: predictions of a_5, b_5
    for seed, (pred_a, pred_b) in rows.items():
        cell = grid / "runs" / "full" / f"seed{seed}"
        cell.mkdir(parents=True)
        (cell / "test_predictions.json").write_text(json.dumps([
            {"id": "a_5", "question_type": "spatial", "prediction": pred_a, "answers": ["center"]},
            {"id": "b_5", "question_type": "spatial", "prediction": pred_b, "answers": ["center"]},
            {"id": "b_0", "question_type": "color", "prediction": "red", "answers": ["blue"]}]))
    objects = counts_by_question(corpus)
    assert objects == {"a_5": 1, "b_5": 6, "b_0": 6}
    row = table(grid, objects, "spatial").splitlines()[-1]
    assert row == "| full | 2 | 100.0 (1) | - | - | - | 50.0 (1) | 75.0 |"


def test_val_curves_average_seeds_per_step_and_pair_on_the_seed(tmp_path):
    from benchmarks.val_curves import curves, paired, table

    logs = {("dept", "seed0"): {10: 60.0, 20: 70.0}, ("dept", "seed1"): {10: 50.0},
            ("pt", "seed0"): {10: 55.0, 20: 65.5}, ("pt", "seed1"): {10: 52.0}}
    for (run, seed), points in logs.items():
        folder = tmp_path / "runs" / run / seed / "logs"
        folder.mkdir(parents=True)
        rows = ["step,name,value", "10,train/loss,1.5"]
        rows += [f"{step},eval/vqa_accuracy,{value}" for step, value in points.items()]
        (folder / "metrics.csv").write_text("\n".join(rows) + "\n")
    runs = curves(tmp_path)
    assert table(runs).splitlines()[2:] == ["| dept | 2 | 55.0 | 70.0 (1) |",
                                            "| pt | 2 | 53.5 | 65.5 (1) |"]
    assert paired(runs, "dept", "pt", 10).endswith("seed0 +5.0, seed1 -2.0; mean +1.5")
    assert "no seed reached it" in paired(runs, "dept", "pt", 30)


def test_backbone_axis_pairs_on_the_seed_per_grid_and_takes_a_backbone_as_the_unit(tmp_path):
    from benchmarks.backbone_axis import report

    grids = []
    for index, (backbone, rows) in enumerate({"aaa": {0: (70, 60), 1: (68, 62)},
                                              "bbb": {0: (64, 63), 1: (66, 64)}}.items()):
        grid = tmp_path / f"grid{index}"
        lines = ["name,method,seed,score,reserved_types"]
        for seed, (dept, pt) in rows.items():
            lines += [f"dept,dept,{seed},{dept},{dept - 5}", f"pt,pt,{seed},{pt},{pt - 5}"]
        (grid / "runs" / "dept" / "seed0" / "adapter").mkdir(parents=True)
        (grid / "runs" / "dept" / "seed0" / "adapter" / "adapter_config.json").write_text(
            json.dumps({"backbone_fingerprint": backbone}))
        (grid / "results.csv").write_text("\n".join(lines) + "\n")
        grids.append(grid)
    text = report(grids, "dept", "pt")
    assert f"| {grids[0]} | aaa | 69.0 | 61.0 | +8.0 (-17.4 to +33.4) | 2 |" in text
    assert f"| {grids[1]} | bbb | 65.0 | 63.5 | +1.5 (-4.9 to +7.9) | 2 |" in text
    # the backbone means +8.0 and +1.5: t(1) = 12.71, half-width 12.71 · 4.596 / √2 = 41.3
    assert "across 2 backbones (one mean a backbone): +4.8 (95% CI -36.5 to +46.0): " \
           "no difference measured" in text
    with pytest.raises(SystemExit, match="share the backbone aaa"):
        report([grids[0], grids[0]], "dept", "pt")


def test_backbone_axis_names_the_file_it_cannot_read(tmp_path):
    from benchmarks.backbone_axis import report

    (tmp_path / "results.csv").write_text(  # no score column
        "name,method,seed,accuracy\ndept,dept,0,70\npt,pt,0,60\n")
    with pytest.raises(SystemExit, match="results.csv: not a compare grid's results"):
        report([tmp_path], "dept", "pt")
    (tmp_path / "runs" / "dept" / "seed0" / "adapter").mkdir(parents=True)
    (tmp_path / "runs" / "dept" / "seed0" / "adapter" / "adapter_config.json").write_text("{")
    with pytest.raises(SystemExit, match="adapter_config.json"):
        report([tmp_path], "dept", "pt")
