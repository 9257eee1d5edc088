"""The experiment grids' --quick versions run end to end and write their tables and plots."""

import csv
import json
from pathlib import Path

import pytest

from research import experiments
from dept_vl.training.rules import ConfigError
from dept_vl.errors import CheckpointError
from research.experiments import load_experiment, main, merged

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
    assert "## Claims" in report and " − scratch: " in report  # two seeds: intervals given
    assert (out / "results.png").stat().st_size > 10_000
    # a second call reads the finished runs back instead of training again
    before = (out / "results.csv").read_text()
    main(["fewshot", "--config", "configs/fewshot_shapes.yaml", "--quick",
          "--output_dir", str(out)])
    assert (out / "results.csv").read_text() == before


def test_compare_quick_grid_end_to_end(tmp_path, monkeypatch):
    """With two workers: the cells run in two processes at once and land in grid order."""
    monkeypatch.chdir(REPO)
    out = main(["compare", "--config", "configs/compare_shapes.yaml", "--quick",
                "--output_dir", str(tmp_path / "compare"), "--workers", "2"])
    rows = read_csv(out / "results.csv")
    assert [r["name"] for r in rows] == ["dept", "dept", "pt", "pt", "adept", "adept", "lora",
                                         "full"]
    params = {r["name"]: int(r["trainable_parameters"]) for r in rows}
    assert params["dept"] == params["pt"] < params["full"]
    assert abs(params["adept"] - params["dept"]) < 32  # within one prompt token (d = 32)
    report = (out / "results.md").read_text()
    assert "| dept | dept |" in report and "dept − pt overall: " in report
    assert "## Claims" in report
    assert (out / "results.png").stat().st_size > 10_000


def test_compare_cell_cut_short_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    """A cell stopped right after a checkpoint goes on from it at the next call (a grid split
    over several device calls), and ends with the metrics of the cell never cut short."""
    import dept_vl.training.loop as train_module

    monkeypatch.chdir(REPO)
    one_cell = ["--set", "runs=[{name: dept, method: dept}]", "--set", "seeds=[0]",
                "--set", "pairs=[]", "--set", "train.save_steps=2"]

    def grid(out):
        return ["compare", "--config", "configs/compare_shapes.yaml", "--quick",
                "--output_dir", str(out), *one_cell]

    main(grid(tmp_path / "straight"))
    save = train_module.save_checkpoint

    def save_then_stop(accelerator, out, progress, *rest):
        saved = save(accelerator, out, progress, *rest)
        raise KeyboardInterrupt(saved)

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        main(grid(tmp_path / "cut"))
    cell = tmp_path / "cut" / "runs" / "dept" / "seed0"
    assert not (cell / "eval_results.json").exists()
    monkeypatch.setattr(train_module, "save_checkpoint", save)
    with pytest.raises(CheckpointError, match="method.lr.prompt: 0.3 → 0.2"):  # not this run
        main([*grid(tmp_path / "cut"), "--set", "train.method.lr.prompt=0.2"])
    main(grid(tmp_path / "cut"))
    resumed = json.loads((cell / "eval_results.json").read_text())
    straight = json.loads((tmp_path / "straight" / "runs" / "dept" / "seed0" /
                           "eval_results.json").read_text())
    assert resumed["resumed"] and not straight["resumed"]
    for key in ("vqa_accuracy", "vqa_accuracy_by_type", "steps"):
        assert resumed[key] == straight[key], key
    timing = {"eval_seconds"}
    assert ({k: v for k, v in resumed["best_eval"].items() if k not in timing}
            == {k: v for k, v in straight["best_eval"].items() if k not in timing})


def test_a_finished_cell_is_read_back_only_with_the_settings_it_ran_with(tmp_path, monkeypatch,
                                                                         capsys):
    """A grid re-run into the same output_dir with another setting must not report the old
    runs as the new ones; results written before settings were recorded are read unchecked."""
    monkeypatch.chdir(REPO)
    out = tmp_path / "grid"
    grid = ["compare", "--config", "configs/compare_shapes.yaml", "--quick", "--output_dir",
            str(out), "--set", "runs=[{name: dept, method: dept}]", "--set", "seeds=[0]",
            "--set", "pairs=[]"]
    main(grid)
    done = out / "runs" / "dept" / "seed0" / "eval_results.json"
    first = json.loads(done.read_text())
    assert first["settings"]["method"]["lr"]["prompt"] == 0.3
    assert "output_dir" not in first["settings"]
    with pytest.raises(ConfigError, match=r"seed0/eval_results.json: this run was made with "
                       r"other settings.*\(method.lr.prompt: 0.3 → 0.2\); use another "
                       r"--output_dir"):
        main([*grid, "--set", "train.method.lr.prompt=0.2"])
    main([*grid, "--set", "train.logging_steps=7"])  # bookkeeping: read back
    assert json.loads(done.read_text()) == first
    # the grid's backbone, pretrained with other settings than the experiment file's now
    spec = load_experiment("configs/compare_shapes.yaml", True, str(out),
                           ["backbone.overrides.method.lr.backbone=0.001"])
    with pytest.raises(ConfigError, match=r"backbone/eval_results.json: .*method.lr.backbone: "
                                          r"0.0005 → 0.001"):
        experiments.ensure_backbone(spec)
    legacy = {k: v for k, v in first.items() if k != "settings"}
    done.write_text(json.dumps(legacy))
    capsys.readouterr()
    main([*grid, "--set", "train.method.lr.prompt=0.2"])
    assert "read back unchecked" in capsys.readouterr().out
    assert json.loads(done.read_text()) == legacy
    done.write_text("{not json")  # a damaged results file: one error naming it
    with pytest.raises(ConfigError, match=r"seed0/eval_results.json: .*JSON"):
        main(grid)


def test_experiment_config_errors_and_quick_merge(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_experiment(tmp_path / "missing.yaml", False, None)
    (tmp_path / "bad.yaml").write_text("output_dir: x\n")
    with pytest.raises(ConfigError, match="missing key 'corpus'"):
        load_experiment(tmp_path / "bad.yaml", False, None)
    assert merged({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": 5}}) == {"a": {"b": 5, "c": 2},
                                                                     "d": 3}
    # a key no grid reads is refused, with the closest one named; so is one of the other grid
    (tmp_path / "typo.yaml").write_text("output_dir: x\ncorpus: {dir: c}\nbackbone: {}\n"
                                        "seeds: [0]\nseed: [1]\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: seed: not a key of a grid file \(did you "
                                          r"mean 'seeds'\?\)"):
        load_experiment(tmp_path / "typo.yaml", False, None)
    (tmp_path / "other.yaml").write_text("output_dir: x\ncorpus: {dir: c}\nbackbone: {}\n"
                                         "seeds: [0]\nshots: [4]\nquick: {runs: []}\n")
    with pytest.raises(ConfigError, match=r"other.yaml: shots: not a key of a compare grid"):
        load_experiment(tmp_path / "other.yaml", False, None, grid="compare")
    with pytest.raises(ConfigError, match=r"other.yaml: quick.runs: not a key of a fewshot grid"):
        load_experiment(tmp_path / "other.yaml", False, None, grid="fewshot")


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


def compare_row(name, seed, score, reserved=None, types=None, params=100):
    """A comparison row as run_compare makes it from a run's eval_results.json."""
    results = {"method": name.split("-")[0], "task": "vqa", "vqa_accuracy": score,
               "trainable_parameters": params, "train_seconds": 1.0, "wall_seconds": 2.0}
    if reserved is not None:
        results.update(vqa_accuracy_reserved_types=reserved,
                       reserved_question_types=["count", "relation"])
    if types is not None:
        results["vqa_accuracy_by_type"] = types
    return experiments.compare_row(name, seed, results, {})


def test_compare_report_has_a_column_per_question_type_and_one_for_reserved_types():
    rows = [compare_row("dept", s, 80.0 + s, 60.0 + s,
                        {"color": 90.0 + s, "count": 60.0, "spatial": 70.0}) for s in range(5)]
    rows += [compare_row("pt", s, 79.0, 50.0, {"color": 88.0, "count": 50.0, "spatial": 71.0})
             for s in range(5)]
    report = experiments.compare_report(rows, {"seeds": list(range(5))})
    header = next(line for line in report.splitlines() if line.startswith("| run |"))
    assert header == ("| run | method | trainable params | vqa_accuracy (mean ± std) | "
                      "reserved types | color | count (reserved) | spatial | seeds | "
                      "wall s / run |")
    # dept's color over seeds 90..94: mean 92.0, sample std 1.58
    assert ("| dept | dept | 100 | 82.0 ± 1.6 | 62.0 ± 1.6 | 92.0 ± 1.6 | 60.0 ± 0.0 | "
            "70.0 ± 0.0 | 5 |") in report
    assert "reserved types (the question types the backbone never saw in pretraining: count, " \
           "relation)" in report


def test_compare_pairs_on_overall_and_reserved_scores_and_writes_the_claims():
    # overall: +1 every seed (dept ahead); reserved: +3, -2, +2 (interval straddles zero)
    rows = [compare_row("dept", s, 80.0 + s, r) for s, r in enumerate([63.0, 58.0, 62.0])]
    rows += [compare_row("pt", s, 79.0 + s, 60.0) for s in range(3)]
    rows += [compare_row("full", s, 95.0, 90.0, params=10_000) for s in range(3)]
    rows += [compare_row("dept-m5", 0, 70.0, 40.0)]  # one seed: no automatic pair
    report = experiments.compare_report(rows, {"seeds": [0, 1, 2]})
    overall, reserved = report.split("### Overall (vqa_accuracy)")[1].split("### Reserved types")
    assert "| dept − pt | +1.00, +1.00, +1.00 | +1.00 | +1.00 to +1.00 | dept ahead |" in overall
    assert "full" not in overall and "dept-m5" not in overall  # other budget, single seed
    assert "| dept − pt | +3.00, -2.00, +2.00 | +1.00 |" in reserved
    assert reserved.split("## Claims")[0].rstrip().endswith("no difference measured |")
    claims = report.split("## Claims")[1]
    assert "- dept − pt overall: +1.0 (95% CI +1.0 to +1.0, 3 seeds): dept ahead" in claims
    # sd of (3, -2, 2) is sqrt(7): half-width 4.303 * 2.646 / sqrt(3) = 6.57
    assert "- dept − pt on reserved types: +1.0 (95% CI -5.6 to +7.6, 3 seeds): no difference " \
           "measured" in claims
    # `pairs:` picks pairs across budgets (full fine-tuning vs PT), and any order
    spec = {"seeds": [0, 1, 2], "pairs": [["pt", "full"]], "runs": [], "source": "x.yaml"}
    report = experiments.compare_report(rows, spec)
    assert "- pt − full on reserved types: -30.0 (95% CI -30.0 to -30.0, 3 seeds): full ahead" \
        in report and "dept − pt" not in report


def test_compare_pairs_must_name_runs():
    spec = {"source": "configs/c.yaml", "runs": [{"name": "dept"}, {"name": "pt"}]}
    experiments.check_pairs({**spec, "pairs": [["dept", "pt"]]})
    for bad in (["dept", "ptt"], ["dept"], "dept-pt"):
        with pytest.raises(ConfigError, match=r"configs/c.yaml: pairs\[0\]"):
            experiments.check_pairs({**spec, "pairs": [bad]})


def fewshot_rows(target, init, scores, method="dept", k=16):
    return [{"target": target, "method": method, "k": k, "init": init, "seed": seed,
             "score": score, "selected_source": "", "trainable_parameters": 10,
             "train_seconds": 1.0, "wall_seconds": 1.0} for seed, score in scores.items()]


def test_fewshot_report_pairs_each_init_with_scratch_on_the_seed():
    # seeds spread scratch widely (50..70), but transfer gains +2 on every seed: paired, that is
    # a clear win although the means differ by less than a seed std; rows come in any order
    rows = (fewshot_rows("count", "transferred", {2: 72.0, 0: 52.0, 1: 62.0})
            + fewshot_rows("count", "scratch", {0: 50.0, 1: 60.0, 2: 70.0})
            + fewshot_rows("count", "auto", {0: 47.0, 1: 58.0, 2: 68.0})
            + fewshot_rows("count", "source:shared", {0: 99.0})
            + fewshot_rows("size", "scratch", {0: 50.0}) + fewshot_rows("size", "transferred",
                                                                        {0: 55.0}))
    spec = {"targets": {"count": {}, "size": {}}, "sources": {"tasks": {"color": {}}},
            "seeds": [0, 1, 2]}
    report = experiments.fewshot_report(rows, spec)
    table = report.split("## Transfer vs scratch")[1].split("## Claims")[0]
    assert "| count | dept | 16 | transferred − scratch | +2.00, +2.00, +2.00 | +2.00 | " \
           "+2.00 to +2.00 | transfer ahead |" in table
    # auto: -3, -2, -2: mean -2.33, sd 0.577, half-width 4.303 * 0.577 / sqrt(3) = 1.43
    assert ("| count | dept | 16 | auto − scratch | -3.00, -2.00, -2.00 | -2.33 | "
            "-3.77 to -0.90 | scratch ahead |") in table
    assert table.index("transferred − scratch") < table.index("auto − scratch")
    assert "source:" not in table
    claims = report.split("## Claims")[1]
    assert "- size, dept, k = 16: transferred − scratch: +5.0 (1 seed): needs >= 2 seeds" \
        in claims
    spread = fewshot_rows("count", "scratch", {0: 50.0, 1: 60.0}) + fewshot_rows(
        "count", "transferred", {0: 55.0, 1: 58.0})
    assert "no difference measured" in experiments.fewshot_report(spread, spec)


def test_fewshot_inits_of_a_seed_draw_the_same_k_shot_examples(tmp_path):
    """scratch, transferred and auto differ only in their init keys, so one seed gives them one
    k-shot draw (train and dev); another seed draws other examples."""
    from PIL import Image

    from dept_vl.training.config_loading import load_config
    from dept_vl.training.taskdata import load_tasks

    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    for split in ("train", "val", "test"):
        (tmp_path / f"{split}.jsonl").write_text("".join(
            json.dumps({"id": f"{split}{i}", "image": "x.png", "question": f"q{i}?",
                        "answers": [str(i % 3)], "question_type": "count"}) + "\n"
            for i in range(30)))
    spec = load_experiment(REPO / "configs/fewshot_shapes.yaml", True, str(tmp_path / "out"))
    base = {**experiments.base_values(spec, "runs/backbone"), "corpus": None}
    target = {"task": "vqa", "question_types": ["count"],
              **{f"{key}_file": str(tmp_path / f"{split}.jsonl")
                 for key, split in (("train", "train"), ("eval", "val"), ("test", "test"))}}
    inits = experiments.fewshot_inits(spec, "dept", 2, {"shared": "a", "color": "b"})

    def draw(init, seed):
        values = experiments.fewshot_values(spec, base, target, inits[init], "dept", 2, seed)
        cfg = load_config(None, values)
        task = load_tasks(cfg)[0][0]
        return [r.id for r in task.train], [r.id for r in task.eval], cfg.to_dict()

    scratch = draw("scratch", 1)
    assert len(scratch[0]) == 6 and len(scratch[1]) == 6  # k = 2 of each of 3 answers
    for init in ("transferred", "auto"):
        other = draw(init, 1)
        assert other[:2] == scratch[:2]
        changed = {key for key in other[2] if other[2][key] != scratch[2][key]}
        assert changed and changed <= {"init_from", "init_select"}
    assert draw("scratch", 2)[:2] != scratch[:2]
