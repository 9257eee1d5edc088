"""The benchmark suite's --quick version runs end to end and writes its files (no timing is
asserted here: speed targets live in the benchmark tables, never in tests)."""

import json
from pathlib import Path

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
    from dept_vl.data.records import load_records

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
