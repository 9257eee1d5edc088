"""Multi-task source training (shared or per-task adapters), k-shot runs, and target runs that
start from saved source adapters (training goes on from them)."""

import json
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

from conftest import split, write_config
from dept_vl.training.rules import ConfigError
from dept_vl.cli.train import main
from dept_vl.training.taskdata import task_schedule


def source_tasks(corpus):
    return {
        "caption": {"task": "caption", "train_file": split(corpus, "train", "caption"),
                    "test_file": split(corpus, "test", "caption")},
        "color": {"task": "vqa", "question_types": ["color"],
                  "train_file": split(corpus, "train", "vqa"),
                  "test_file": split(corpus, "test", "vqa")},
        "exists": {"task": "vqa", "question_types": ["exists"],
                   "train_file": split(corpus, "train", "vqa")},
    }


def run_config(tmp_path, backbone, name, **values):
    defaults = dict(method={"name": "dept", "prompt_length": 4, "rank": 2,
                            "lr": {"lowrank": 1e-2}},
                    backbone=backbone, output_dir=str(tmp_path / name), max_length=24,
                    max_steps=6, batch_size=8, eval_steps=3, save_steps=100, logging_steps=1,
                    warmup_steps=1, seed=1, eval_batch_size=32)
    return write_config(tmp_path / f"{name}.yaml", **{**defaults, **values})


@pytest.mark.parametrize("per_task", [False, True])
def test_multitask_source_training(tmp_path, corpus_dir, backbone, per_task):
    config = run_config(tmp_path, backbone, "src", tasks=source_tasks(corpus_dir),
                        adapter_per_task=per_task)
    main(["--config", config])
    run = tmp_path / "src"
    results = json.loads((run / "eval_results.json").read_text())
    assert set(results["tasks"]) == {"caption", "color"}  # exists has no test_file
    assert "cider" in results["tasks"]["caption"]
    assert set(results["tasks"]["color"]["vqa_accuracy_by_type"]) == {"color"}
    if per_task:
        adapters = sorted(p.name for p in (run / "adapters").iterdir())
        assert adapters == ["caption", "color", "exists"]
        meta = json.loads((run / "adapters" / "caption" / "adapter_config.json").read_text())
        assert meta["task"] == "caption"
    else:
        assert (run / "adapter" / "adapter_model.safetensors").is_file()
        assert not (run / "adapters").exists()


def test_task_schedule_follows_size_and_temperature():
    proportional = Counter(task_schedule([300, 100], 1.0, seed=0, length=4000))
    assert 0.72 < proportional[0] / 4000 < 0.78
    flat = Counter(task_schedule([300, 100], 100.0, seed=0, length=4000))
    assert 0.46 < flat[0] / 4000 < 0.54
    assert task_schedule([5, 5], 1.0, 3, 50) == task_schedule([5, 5], 1.0, 3, 50)
    assert task_schedule([7], 1.0, 0, 5) == [0] * 5


def test_kshot_target_run_goes_on_from_a_saved_source(tmp_path, corpus_dir, backbone):
    main(["--config", run_config(tmp_path, backbone, "src", train_file=split(corpus_dir, "train", "vqa"))])
    source = load_file(tmp_path / "src" / "adapter" / "adapter_model.safetensors")
    # zero steps: the target adapter is exactly the source (loaded for further training)
    zero = run_config(tmp_path, backbone, "zero", train_file=split(corpus_dir, "train", "vqa"),
                      question_types=["count"], k_shot=2, max_steps=0,
                      init_from=str(tmp_path / "src" / "adapter"))
    main(["--config", zero])
    started = load_file(tmp_path / "zero" / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(started[k], source[k]) for k in source)
    # some steps: it trains on from there
    target = run_config(tmp_path, backbone, "tgt", train_file=split(corpus_dir, "train", "vqa"),
                        eval_file=split(corpus_dir, "val", "vqa"),
                        test_file=split(corpus_dir, "test", "vqa"), question_types=["count"],
                        k_shot=2, init_from=str(tmp_path / "src" / "adapter"))
    main(["--config", target])
    trained = load_file(tmp_path / "tgt" / "adapter" / "adapter_model.safetensors")
    assert not torch.equal(trained["prompt_embeddings"], source["prompt_embeddings"])
    results = json.loads((tmp_path / "tgt" / "eval_results.json").read_text())
    assert results["k_shot"] == 2 and set(results["vqa_accuracy_by_type"]) == {"count"}
    init = json.loads((tmp_path / "tgt" / "init.json").read_text())
    assert init["default"]["selected"] == str(tmp_path / "src" / "adapter")


def test_auto_selection_scores_every_source_on_the_kshot_examples(tmp_path, corpus_dir, backbone):
    main(["--config", run_config(tmp_path, backbone, "src", tasks=source_tasks(corpus_dir),
                                 adapter_per_task=True, max_steps=3)])
    config = run_config(tmp_path, backbone, "auto", train_file=split(corpus_dir, "train", "vqa"),
                        question_types=["count"], k_shot=2, max_steps=1,
                        init_from=str(tmp_path / "src" / "adapters"), init_select="best")
    main(["--config", config])
    init = json.loads((tmp_path / "auto" / "init.json").read_text())["default"]
    scores = init["scores"]
    assert len(scores) == 4 and "scratch" in scores  # three sources and scratch
    best = min((v, k) for k, v in scores.items() if k != "scratch")[1]
    assert init["selected"] == best


def test_transfer_and_multitask_config_errors(tmp_path, backbone):
    with pytest.raises(ConfigError, match="init_from: only adapters"):
        main(["--config", run_config(tmp_path, backbone, "x", method="full", init_from="a")])
    with pytest.raises(ConfigError, match="adapter_per_task: needs `tasks:`"):
        main(["--config", run_config(tmp_path, backbone, "x", adapter_per_task=True)])
    with pytest.raises(ConfigError, match="init_parts"):
        main(["--config", run_config(tmp_path, backbone, "x", init_parts=["bias"])])
    with pytest.raises(ConfigError, match="tasks.bad: needs train_file"):
        main(["--config", run_config(tmp_path, backbone, "x", tasks={"bad": {"task": "vqa"}})])
