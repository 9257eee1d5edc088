"""Scale-out parity and small checkpoints.

Two processes (torchrun, gloo on CPU) at the same global batch train what one process trains:
the same loss curve and adapter to float tolerance, the same periodic and test metrics (the
evaluation sharded over both processes gives exactly the single-process predictions). A
checkpoint of an adapter method holds what trains, not the frozen backbone, and a 2-process
run resumed from it ends where the uninterrupted one does."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import split, write_config
from dept_vl import VLT5
from dept_vl.training.checkpoints import MODEL_FILE
from dept_vl.errors import CheckpointError
from dept_vl.cli.train import main

ROOT = Path(__file__).resolve().parent.parent


def config(tmp_path, corpus_dir, backbone, name, **overrides):
    values = dict(
        method={"name": "dept", "prompt_length": 4, "rank": 2, "lr": {"lowrank": 1e-2}},
        task="vqa", backbone=backbone, output_dir=str(tmp_path / name),
        train_file=split(corpus_dir, "train", "vqa"), eval_file=split(corpus_dir, "val", "vqa"),
        test_file=split(corpus_dir, "test", "vqa"), max_length=24,
        max_steps=6, batch_size=8, eval_batch_size=7, eval_steps=3, save_steps=3,
        logging_steps=1, warmup_steps=1, seed=1, max_eval_examples=40,
    )
    values.update(overrides)
    return write_config(tmp_path / f"{name}.yaml", **values)


def losses(run: Path) -> list[float]:
    with open(run / "logs" / "metrics.csv") as f:
        return [float(r["value"]) for r in csv.DictReader(f) if r["name"] == "train/loss"]


def metrics(run: Path, prefix: str) -> dict[str, str]:
    with open(run / "logs" / "metrics.csv") as f:
        return {(r["step"], r["name"]): r["value"] for r in csv.DictReader(f)
                if r["name"].startswith(prefix) and not r["name"].endswith("seconds")}


def without_seconds(value):
    if isinstance(value, dict):
        return {k: without_seconds(v) for k, v in value.items() if not k.endswith("seconds")}
    return value


def torchrun(args: list[str], env: dict[str, str]) -> None:
    # --standalone: a free rendezvous port of its own (tests may run beside other torchruns)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", str(ROOT / "dept_vl" / "train.py"), *args]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus_dir, backbone):
    """The same DePT run in one process and in two (with a resume from step 3's checkpoint)."""
    tmp_path = tmp_path_factory.mktemp("parity")
    main(["--config", config(tmp_path, corpus_dir, backbone, "one")])
    two = config(tmp_path, corpus_dir, backbone, "two")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    torchrun(["--config", two], env)
    # the two-process checkpoint at step 3, resumed by two processes, ends where both others do
    resumed = tmp_path / "resumed"
    torchrun(["--config", two, "--output_dir", str(resumed), "--resume_from_checkpoint",
              str(tmp_path / "two" / "checkpoints" / "checkpoint_3")], env)
    return tmp_path


def test_two_processes_train_the_loss_curve_and_adapter_of_one(runs):
    one, two = losses(runs / "one"), losses(runs / "two")
    assert len(one) == len(two) == 6
    assert torch.allclose(torch.tensor(one), torch.tensor(two), rtol=1e-4, atol=1e-5), (one, two)
    a = load_file(runs / "one" / "adapter" / "adapter_model.safetensors")
    b = load_file(runs / "two" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-5), key


def test_sharded_evaluation_gives_the_single_process_metrics(runs):
    assert metrics(runs / "one", "eval/") == metrics(runs / "two", "eval/")
    one = json.loads((runs / "one" / "eval_results.json").read_text())
    two = json.loads((runs / "two" / "eval_results.json").read_text())
    assert "vqa_accuracy" in one and one["best_eval"]
    for key in ("vqa_accuracy", "vqa_accuracy_by_type", "num_questions", "best_eval"):
        assert without_seconds(one[key]) == without_seconds(two[key]), key
    assert (json.loads((runs / "one" / "test_predictions.json").read_text())
            == json.loads((runs / "two" / "test_predictions.json").read_text()))


def test_a_run_resumed_in_two_processes_ends_where_the_uninterrupted_one_does(runs):
    a = load_file(runs / "two" / "adapter" / "adapter_model.safetensors")
    b = load_file(runs / "resumed" / "adapter" / "adapter_model.safetensors")
    for key in a:
        assert (a[key] - b[key]).abs().max() <= 1e-6, key
    assert losses(runs / "resumed") == losses(runs / "two")[3:]


def test_a_checkpoint_of_an_adapter_method_holds_only_what_trains(runs, backbone):
    checkpoint = runs / "two" / "checkpoints" / "checkpoint_3"
    saved = load_file(checkpoint / MODEL_FILE)
    bare = {n: p.numel() for n, p in VLT5.from_pretrained(backbone).named_parameters()}
    assert not set(saved) & set(bare)  # nothing of the frozen backbone
    assert {n.split(".", 2)[2] for n in saved} == {
        "tuner.prompt_embeddings", "tuner.lowrank_A", "tuner.lowrank_B",
        "projection.linear.weight", "projection.linear.bias", "projection.norm.weight",
        "projection.norm.bias"}
    assert sum(t.numel() for t in saved.values()) < sum(bare.values()) / 10


def test_full_fine_tuning_checkpoints_keep_the_whole_model(tmp_path, corpus_dir, backbone):
    main(["--config", config(tmp_path, corpus_dir, backbone, "full", method="full", max_steps=3,
                             save_steps=2, eval_file=None, test_file=None)])
    saved = load_file(tmp_path / "full" / "checkpoints" / "checkpoint_2" / MODEL_FILE)
    model = VLT5.from_pretrained(backbone)
    assert {n for n, _ in model.named_parameters()} <= set(saved)


def test_a_checkpoint_lacking_a_trained_tensor_is_refused_naming_it(tmp_path, corpus_dir,
                                                                   backbone):
    path = config(tmp_path, corpus_dir, backbone, "run", max_steps=3, save_steps=2,
                  eval_file=None, test_file=None)
    main(["--config", path])
    model_file = tmp_path / "run" / "checkpoints" / "checkpoint_2" / MODEL_FILE
    saved = load_file(model_file)
    dropped = sorted(saved)[0]
    del saved[dropped]
    save_file(saved, model_file)
    state = tmp_path / "run" / "checkpoints" / "checkpoint_2" / "trainer_state.json"
    listed = json.loads(state.read_text())
    listed["files"][MODEL_FILE] = model_file.stat().st_size
    state.write_text(json.dumps(listed))
    with pytest.raises(CheckpointError, match=f"{model_file}.*{dropped}"):
        main(["--config", path, "--resume_from_checkpoint", "latest"])
