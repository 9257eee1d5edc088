"""The experiment grids' --quick versions run end to end and write their tables and plots."""

import csv
from pathlib import Path

import pytest

from dept_vl.config import ConfigError
from dept_vl.experiments import load_experiment, main, merged

REPO = Path(__file__).resolve().parent.parent


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_fewshot_quick_grid_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the config names configs/backbone_shapes.yaml
    out = main(["fewshot", "--config", "configs/fewshot_shapes.yaml", "--quick",
                "--output_dir", str(tmp_path / "fewshot")])
    rows = read_csv(out / "results.csv")
    spec = load_experiment(REPO / "configs/fewshot_shapes.yaml", True, None)
    grid = (len(spec["targets"]) * len(spec["shots"]) * len(spec["seeds"]) * len(spec["methods"])
            * len(spec["inits"]))
    sweep = len(spec["targets"]) * len(spec["seeds"]) * 5  # shared + 4 per-task sources, dept
    assert len(rows) == grid + sweep
    assert {r["init"] for r in rows} >= {"scratch", "transferred", "auto", "source:shared"}
    assert all(0 <= float(r["score"]) <= 100 for r in rows)
    auto = [r for r in rows if r["init"] == "auto"]
    assert all(r["selected_source"] in {"shared", "caption", "color", "exists", "shape"}
               for r in auto)
    report = (out / "results.md").read_text()
    assert "## Transfer vs scratch" in report and "## Auto-selection vs every source" in report
    assert (out / "results.png").stat().st_size > 10_000
    # a second call reads the finished runs back instead of training again
    before = (out / "results.csv").read_text()
    main(["fewshot", "--config", "configs/fewshot_shapes.yaml", "--quick",
          "--output_dir", str(out)])
    assert (out / "results.csv").read_text() == before


def test_compare_quick_grid_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    out = main(["compare", "--config", "configs/compare_shapes.yaml", "--quick",
                "--output_dir", str(tmp_path / "compare")])
    rows = read_csv(out / "results.csv")
    assert [r["name"] for r in rows] == ["dept", "dept", "pt", "pt", "adept", "adept", "lora",
                                         "full"]
    params = {r["name"]: int(r["trainable_parameters"]) for r in rows}
    assert params["dept"] == params["pt"] < params["full"]
    assert abs(params["adept"] - params["dept"]) < 32  # within one prompt token (d = 32)
    assert "| dept | dept |" in (out / "results.md").read_text()
    assert (out / "results.png").stat().st_size > 10_000


def test_experiment_config_errors_and_quick_merge(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_experiment(tmp_path / "missing.yaml", False, None)
    (tmp_path / "bad.yaml").write_text("output_dir: x\n")
    with pytest.raises(ConfigError, match="missing key 'corpus'"):
        load_experiment(tmp_path / "bad.yaml", False, None)
    assert merged({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": 5}}) == {"a": {"b": 5, "c": 2},
                                                                     "d": 3}


def test_set_changes_keys_of_the_experiment_file_and_refuses_typos(tmp_path):
    config = Path(__file__).resolve().parent.parent / "configs" / "fewshot_shapes.yaml"
    spec = load_experiment(config, False, str(tmp_path / "out"),
                           ["shots=[16]", "train.num_threads=1", "fewshot.max_steps=7"])
    assert spec["shots"] == [16] and spec["train"]["num_threads"] == 1
    assert spec["fewshot"]["max_steps"] == 7 and spec["fewshot"]["batch_size"] == 16
    with pytest.raises(ConfigError, match=r"--set 'shot=\[16\]'.*has no key 'shot'"):
        load_experiment(config, False, None, ["shot=[16]"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_experiment(config, False, None, ["shots"])
    with pytest.raises(ConfigError, match="'seeds' is not a mapping"):
        load_experiment(config, False, None, ["seeds.x=1"])


def test_paired_differences_claim_a_difference_only_when_the_interval_excludes_zero():
    from dept_vl.experiments import paired_differences, paired_report

    def rows(name, scores, params=100):
        return [{"name": name, "seed": s, "score": v, "trainable_parameters": params}
                for s, v in enumerate(scores)]

    grid = (rows("a", [86.0, 86.1, 85.9]) + rows("b", [85.0, 85.0, 85.0])
            + rows("c", [85.0, 87.0, 84.0]) + rows("big", [99.0, 99.0, 99.0], params=200)
            + rows("once", [90.0]))
    pairs = {p["pair"]: p for p in paired_differences(grid)}
    assert set(pairs) == {"a − b", "a − c", "b − c"}  # other budgets and single seeds left out
    ab = pairs["a − b"]
    assert ab["diffs"] == pytest.approx([1.0, 1.1, 0.9]) and ab["mean"] == pytest.approx(1.0)
    # sd 0.1, t(2 df) = 4.303: half-width 4.303 * 0.1 / sqrt(3) = 0.248
    assert (ab["low"], ab["high"]) == pytest.approx((0.7516, 1.2484), abs=1e-3)
    report = paired_report(grid)
    assert "| a − b | +1.00, +1.10, +0.90 | +1.00 | +0.75 to +1.25 | first ahead |" in report
    assert "| b − c |" in report and "no difference measured" in report
    assert paired_report(rows("x", [1.0, 2.0]) + rows("y", [1.0])) == ""
