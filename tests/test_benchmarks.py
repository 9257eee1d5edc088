"""The benchmark suite's --quick version runs end to end and writes its files (no timing is
asserted here: speed targets live in the benchmark tables, never in tests)."""

import json

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
