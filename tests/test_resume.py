"""Resume is exact: a run interrupted after a checkpoint and resumed with `latest` ends with the
adapter (to 1e-6) and the eval_results.json metrics of the run that was never interrupted,
with periodic evaluation, multi-task and k-shot transfer; a real SIGKILL mid-run too."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import dept_vl.training.loop as train_module
from conftest import split, write_config
from dept_vl.errors import CheckpointError, run_cli
from dept_vl.cli.train import main

# what differs between two runs by nature, not by result
TIMING_KEYS = {"train_seconds", "eval_seconds", "saved_to", "skipped"}


class Interrupted(Exception):
    """Stands for a kill right after a checkpoint was written."""


def interrupt_after_checkpoint(monkeypatch, at_step):
    original = train_module.save_checkpoint

    def save_then_stop(accelerator, out, progress, *rest):
        saved = original(accelerator, out, progress, *rest)
        if progress.step == at_step:
            raise Interrupted(saved)
        return saved

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_stop)


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    return value


def adapters(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {str(f.parent.relative_to(run)): load_file(f)
            for f in sorted(run.rglob("adapter_model.safetensors"))}


def assert_same_result(run_a: Path, run_b: Path):
    a, b = adapters(run_a), adapters(run_b)
    assert a and a.keys() == b.keys()
    for name in a:
        assert a[name].keys() == b[name].keys()
        for key in a[name]:
            assert (a[name][key] - b[name][key]).abs().max() <= 1e-6, (name, key)
    results_a = json.loads((run_a / "eval_results.json").read_text())
    results_b = json.loads((run_b / "eval_results.json").read_text())
    assert without_timings(results_a) == without_timings(results_b)


def run_interrupted(config, out, monkeypatch, at_step):
    interrupt_after_checkpoint(monkeypatch, at_step)
    with pytest.raises(Interrupted):
        main(["--config", config, "--output_dir", str(out)])
    assert not (out / "eval_results.json").exists()
    monkeypatch.undo()
    main(["--config", config, "--output_dir", str(out), "--resume_from_checkpoint", "latest"])


def base_values(corpus, backbone, **values):
    defaults = dict(method={"name": "dept", "prompt_length": 4, "rank": 2,
                            "lr": {"prompt": 0.3, "lowrank": 1e-2}},
                    task="vqa", backbone=backbone, max_length=24, max_steps=8, batch_size=8,
                    eval_steps=2, save_steps=3, logging_steps=1, warmup_steps=1, seed=1,
                    eval_batch_size=32, train_file=split(corpus, "train", "vqa"),
                    eval_file=split(corpus, "val", "vqa"), test_file=split(corpus, "test", "vqa"))
    return {**defaults, **values}


def test_resume_with_periodic_eval_ends_with_the_uninterrupted_best_weights(
        tmp_path, corpus_dir, backbone, monkeypatch):
    config = write_config(tmp_path / "c.yaml", **base_values(corpus_dir, backbone))
    main(["--config", config, "--output_dir", str(tmp_path / "straight")])
    best = json.loads((tmp_path / "straight" / "eval_results.json").read_text())["best_eval"]
    assert best, "the run must select on periodic evaluation for this test to mean anything"
    run_interrupted(config, tmp_path / "resumed", monkeypatch, at_step=6)
    assert_same_result(tmp_path / "straight", tmp_path / "resumed")
    # the resumed run's log holds each step once
    rows = (tmp_path / "resumed" / "logs" / "metrics.csv").read_text().splitlines()
    losses = [r.split(",")[0] for r in rows if ",train/loss," in r]
    assert losses == [str(s) for s in range(1, 9)]


def test_a_checkpoint_of_an_earlier_version_resumes_exactly(
        tmp_path, corpus_dir, backbone, monkeypatch):
    """Earlier versions named an adapter's method module `.prompt`: their checkpoints (the
    trained tensors and the best weights) resume under today's `.tuner` names."""
    config = write_config(tmp_path / "c.yaml", **base_values(corpus_dir, backbone))
    main(["--config", config, "--output_dir", str(tmp_path / "straight")])
    out = tmp_path / "resumed"
    interrupt_after_checkpoint(monkeypatch, 6)
    with pytest.raises(Interrupted):
        main(["--config", config, "--output_dir", str(out)])
    monkeypatch.undo()
    checkpoint = out / "checkpoints" / "checkpoint_6"
    for name in ("model.safetensors", "best_weights.safetensors"):
        tensors = load_file(checkpoint / name)
        assert any(".tuner." in key for key in tensors)
        save_file({key.replace(".tuner.", ".prompt."): value for key, value in tensors.items()},
                  checkpoint / name)
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    state["files"] = {name: (checkpoint / name).stat().st_size for name in state["files"]}
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    main(["--config", config, "--output_dir", str(out), "--resume_from_checkpoint",
          str(checkpoint)])  # this one, never an earlier one
    assert_same_result(tmp_path / "straight", out)


def test_resume_of_a_multitask_run_is_exact(tmp_path, corpus_dir, backbone, monkeypatch):
    tasks = {
        "caption": {"task": "caption", "train_file": split(corpus_dir, "train", "caption"),
                    "test_file": split(corpus_dir, "test", "caption")},
        "color": {"task": "vqa", "question_types": ["color"],
                  "train_file": split(corpus_dir, "train", "vqa"),
                  "eval_file": split(corpus_dir, "val", "vqa"),
                  "test_file": split(corpus_dir, "test", "vqa")},
    }
    values = base_values(corpus_dir, backbone, tasks=tasks, adapter_per_task=True,
                         train_file=None, eval_file=None, test_file=None)
    config = write_config(tmp_path / "c.yaml", **values)
    main(["--config", config, "--output_dir", str(tmp_path / "straight")])
    run_interrupted(config, tmp_path / "resumed", monkeypatch, at_step=3)
    assert_same_result(tmp_path / "straight", tmp_path / "resumed")


def test_resume_of_a_kshot_transfer_run_is_exact(tmp_path, corpus_dir, backbone, monkeypatch):
    source = write_config(tmp_path / "src.yaml", **base_values(
        corpus_dir, backbone, max_steps=3, eval_file=None, test_file=None,
        output_dir=str(tmp_path / "src")))
    main(["--config", source])
    values = base_values(corpus_dir, backbone, question_types=["count"], k_shot=2,
                         init_from=str(tmp_path / "src" / "adapter"))
    config = write_config(tmp_path / "c.yaml", **values)
    main(["--config", config, "--output_dir", str(tmp_path / "straight")])
    run_interrupted(config, tmp_path / "resumed", monkeypatch, at_step=6)
    assert_same_result(tmp_path / "straight", tmp_path / "resumed")


KILLER = textwrap.dedent("""
    import os, signal, sys
    import dept_vl.training.loop as train

    kill_at = int(os.environ["KILL_AT"])
    original = train.save_checkpoint
    save_state = None

    def save(accelerator, out, progress, *rest):
        # at the second checkpoint, die inside the save: accelerate's files are written, the
        # trainer state is not
        if progress.step == 2 * kill_at:
            real = accelerator.save_state
            def die_after(*args, **kwargs):
                real(*args, **kwargs)
                os.kill(os.getpid(), signal.SIGKILL)
            accelerator.save_state = die_after
        return original(accelerator, out, progress, *rest)

    train.save_checkpoint = save
    from dept_vl.cli.train import main
    main(sys.argv[1:])
""")


def test_a_run_killed_while_writing_a_checkpoint_resumes_from_the_last_complete_one(
        tmp_path, corpus_dir, backbone, caplog):
    values = base_values(corpus_dir, backbone, eval_steps=100, eval_file=None)
    config = write_config(tmp_path / "c.yaml", **values)
    main(["--config", config, "--output_dir", str(tmp_path / "straight")])
    out = tmp_path / "killed"
    env = {**os.environ, "KILL_AT": "3"}
    killed = subprocess.run([sys.executable, "-c", KILLER, "--config", config,
                             "--output_dir", str(out)], env=env, capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint_3", "checkpoint_6.partial"]
    assert not (out / "adapter").exists() and not (out / "eval_results.json").exists()
    main(["--config", config, "--output_dir", str(out), "--resume_from_checkpoint", "latest"])
    assert_same_result(tmp_path / "straight", out)


def test_latest_skips_an_incomplete_checkpoint_with_a_warning(tmp_path, corpus_dir, backbone,
                                                              caplog):
    values = base_values(corpus_dir, backbone, eval_steps=100, eval_file=None, save_steps=2)
    config = write_config(tmp_path / "c.yaml", **values)
    main(["--config", config, "--output_dir", str(tmp_path / "straight")])
    run = tmp_path / "run"
    main(["--config", config, "--output_dir", str(run), "--checkpoints_total_limit", "5"])
    newest = run / "checkpoints" / "checkpoint_6"
    # a file of the newest checkpoint cut short, and a checkpoint without its trainer state
    weights = next(newest.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    (run / "checkpoints" / "checkpoint_4" / "trainer_state.json").unlink()
    shutil.rmtree(run / "adapter")
    caplog.set_level("WARNING")
    main(["--config", config, "--output_dir", str(run), "--resume_from_checkpoint", "latest"])
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "checkpoint_6" in warned and "bytes" in warned and "checkpoint_4" in warned
    assert_same_result(tmp_path / "straight", run)


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"step": "three"}', b"[]"])
def test_a_corrupt_trainer_state_is_a_clear_error_naming_it(tmp_path, corpus_dir, backbone,
                                                           content, capsys):
    values = base_values(corpus_dir, backbone, eval_steps=100, eval_file=None, test_file=None,
                         max_steps=4, save_steps=2)
    config = write_config(tmp_path / "c.yaml", **values)
    run = tmp_path / "run"
    main(["--config", config, "--output_dir", str(run)])
    state = run / "checkpoints" / "checkpoint_2" / "trainer_state.json"
    state.write_bytes(content)
    argv = ["--config", config, "--output_dir", str(run), "--resume_from_checkpoint",
            str(state.parent)]
    with pytest.raises(CheckpointError, match="trainer_state.json"):
        main(argv)
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()  # progress bars, then the error
    assert err[-1].startswith("dept_vl: error:") and "checkpoint_2" in err[-1]
    assert "trainer_state.json" in err[-1]
    assert sum(line.startswith("dept_vl: error") for line in err) == 1
    # latest has no other checkpoint to fall back to here: a clear error too
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        main(["--config", config, "--output_dir", str(run), "--resume_from_checkpoint", "latest"])


def test_resuming_a_finished_runs_checkpoint_restores_the_best_weights(tmp_path, corpus_dir,
                                                                        backbone):
    """The same finding without any hook (this runs on the code before the fix too, where the
    resumed run kept the resume point's weights as 'best': max difference 0.77)."""
    config = write_config(tmp_path / "c.yaml", **base_values(corpus_dir, backbone))
    main(["--config", config, "--output_dir", str(tmp_path / "straight")])
    run = tmp_path / "again"
    main(["--config", config, "--output_dir", str(run)])
    shutil.rmtree(run / "adapter")
    main(["--config", config, "--output_dir", str(run), "--resume_from_checkpoint",
          str(run / "checkpoints" / "checkpoint_6")])
    assert_same_result(tmp_path / "straight", run)


def test_resume_with_other_settings_is_refused_naming_them(tmp_path, corpus_dir, backbone,
                                                            caplog):
    """A resume with another learning rate or schedule would end neither where the
    checkpoint's run ends nor where a fresh run would: refused before any step. Bookkeeping
    (logging, evaluation batch, checkpoint keys) may differ."""
    values = base_values(corpus_dir, backbone, eval_steps=100, eval_file=None, max_steps=4,
                         save_steps=2)
    config = write_config(tmp_path / "c.yaml", **values)
    main(["--config", config, "--output_dir", str(tmp_path / "straight")])
    run = tmp_path / "run"
    main(["--config", config, "--output_dir", str(run)])
    checkpoint = run / "checkpoints" / "checkpoint_2"
    resume = ["--config", config, "--output_dir", str(run), "--resume_from_checkpoint", "latest"]
    before = (run / "eval_results.json").read_bytes()
    with pytest.raises(CheckpointError, match=r"checkpoint_2: made with other settings.*"
                       r"max_steps: 4 → 6; method.lr.prompt: 0.3 → 0.2"):
        main([*resume, "--method.lr.prompt", "0.2", "--max_steps", "6"])
    assert (run / "eval_results.json").read_bytes() == before  # nothing trained or written
    main([*resume, "--logging_steps", "2", "--eval_batch_size", "16",
          "--checkpoints_total_limit", "3"])
    assert_same_result(tmp_path / "straight", run)
    # a checkpoint of an older dept_vl (no settings recorded) resumes with a warning
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    del state["settings"]
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    caplog.set_level("WARNING")
    main([*resume, "--method.lr.prompt", "0.2"])
    assert "did not record the run's settings" in caplog.text
