"""The pieces `train.py` stands on: data from config entries, the backbone (loaded, bootstrapped
or fresh), per-method trainable parameters and optimizer groups, the CSV tracker, and the
small state a checkpoint needs beyond what `accelerator.save_state` keeps."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from accelerate.tracking import GeneralTracker, on_main_process
from accelerate.utils import set_seed
from safetensors.torch import save_file
from transformers import T5Config

from dept_vl.config import ConfigError, TrainConfig
from dept_vl.data import shapes
from dept_vl.data.fewshot import sample_kshot
from dept_vl.data.records import (
    DataError, Record, VQARecord, load_records, skip_summary, validate_images,
)
from dept_vl.methods import get_method
from dept_vl.methods.base import MethodConfig
from dept_vl.methods.base import group as method_group
from dept_vl.errors import CheckpointError, TrainingError
from dept_vl.files import (
    atomic_write_json, atomic_write_text, read_json_object, read_safetensors, replace_dir,
)
from dept_vl.model import VLT5, load_tokenizer
from dept_vl.tasks import get_task
from dept_vl.tokenization import build_word_tokenizer
from dept_vl.vision import VisionConfig

ADAPTER_NAME = "default"
logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- data
def ensure_corpus(cfg: TrainConfig) -> None:
    """Write the built-in corpus when the config asks for one that is not on disk yet."""
    if not cfg.corpus:
        return
    spec = {"n_images": 3000, "seed": 0, "image_size": 64, **cfg.corpus}
    out = spec.pop("dir")
    if not shapes.corpus_matches(out, **spec):
        print(f"[dept_vl] writing the built-in corpus to {out} ({spec})", flush=True)
        shapes.write_corpus(out, **spec)


def load_split(entry: Any, task: str, question_types: list[str] | None = None,
               skipped: list[dict[str, Any]] | None = None) -> list[Record]:
    """Records from a config entry: a path, a mapping of load_records options, or a list of them;
    VQA records kept only for `question_types` (None: all).

    Every image is decoded now, before any step is taken. With `skipped` (on_bad_data: skip)
    bad rows and undecodable images are dropped and listed there; without it the first one
    is an error naming its file and line.
    """
    if entry is None:
        return []
    entries = entry if isinstance(entry, list) else [entry]
    records: list[Record] = []
    for item in entries:
        options = dict(item) if isinstance(item, dict) else {"path": item}
        path = options.pop("path")
        kind = options.pop("task", task)
        records += load_records(path, kind, options.pop("format", "auto"), skipped=skipped,
                                **options)
    if question_types is not None:
        wanted = set(question_types)
        records = [r for r in records if not isinstance(r, VQARecord) or r.question_type in wanted]
    return validate_images(records, skipped=skipped)


@dataclass
class TaskData:
    """One task of a run: its records and the adapter that learns it (None: lora / full)."""

    name: str
    kind: str  # vqa | caption: prefix, decoding, metric
    adapter: str | None
    spec: dict[str, Any]  # train_file, eval_file, test_file, question_types
    train: list[Record] = field(default_factory=list)
    eval: list[Record] = field(default_factory=list)
    test: list[Record] = field(default_factory=list)


def plan_tasks(cfg: TrainConfig) -> list[TaskData]:
    """The run's tasks, without records: `tasks:`, or the single `task` with its files."""
    specs = cfg.tasks or {cfg.task: {"task": cfg.task, "train_file": cfg.train_file,
                                     "eval_file": cfg.eval_file, "test_file": cfg.test_file,
                                     "question_types": cfg.question_types}}
    tasks = []
    for name, spec in specs.items():
        kind = spec.get("task", cfg.task)
        get_task(kind)
        if spec.get("train_file") is None and not cfg.dry_run:
            raise ConfigError(f"train_file{f' of task {name!r}' if cfg.tasks else ''}: no "
                              "training data given")
        adapter = None
        if get_method(cfg.method).kind != "backbone":
            adapter = name if cfg.adapter_per_task else ADAPTER_NAME
        tasks.append(TaskData(name, kind, adapter, spec))
    return tasks


def load_tasks(cfg: TrainConfig) -> tuple[list[TaskData], list[Record], list[dict[str, Any]]]:
    """The run's tasks with their records, k-shot sampled when `k_shot` is set; every
    training record before question-type filtering (what a new tokenizer must cover); and the
    rows and images dropped by `on_bad_data: skip` (each once, with its reason)."""
    tasks, unfiltered = plan_tasks(cfg), []
    skipped: list[dict[str, Any]] | None = [] if cfg.on_bad_data == "skip" else None
    for task in tasks:
        spec, types = task.spec, task.spec.get("question_types")
        every = load_split(spec["train_file"], task.kind, None, skipped)
        unfiltered += every
        task.train = every if types is None else [
            r for r in every if not isinstance(r, VQARecord) or r.question_type in set(types)]
        task.eval = load_split(spec.get("eval_file"), task.kind, types, skipped)
        task.test = load_split(spec.get("test_file"), task.kind, types, skipped)
        if not task.train:
            raise DataError(f"train_file of task {task.name!r}: no training records (check the "
                            "path and question_types)")
        if cfg.k_shot is not None:
            task.train = sample_kshot(task.train, cfg.k_shot, cfg.seed)
            task.eval = sample_kshot(task.eval, cfg.k_shot, cfg.seed) if task.eval else []
    return tasks, unfiltered, _unique(skipped or [])


def _unique(skipped: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A data file named by several tasks or splits is read again each time: list each bad row
    once."""
    seen, unique = set(), []
    for entry in skipped:
        key = (entry["source"], entry["reason"])
        if key not in seen:
            seen.add(key)
            unique.append(entry)
    return unique


def write_skipped(out: Path, skipped: list[dict[str, Any]]) -> dict[str, Any]:
    """`skipped.jsonl` (one row per dropped row or image) and its summary by reason."""
    atomic_write_text(out / "skipped.jsonl", "".join(json.dumps(e) + "\n" for e in skipped))
    return {**skip_summary(skipped), "file": str(out / "skipped.jsonl")}


def task_schedule(sizes: Sequence[int], temperature: float, seed: int, length: int) -> list[int]:
    """Which task each micro-batch comes from: p(task) ∝ size^(1/temperature), seeded, fixed in
    advance (a resumed run replays the same schedule)."""
    if temperature <= 0:
        raise ConfigError(f"task_sampling_temperature: must be positive, got {temperature}")
    if len(sizes) == 1:
        return [0] * length
    weights = [size ** (1 / temperature) for size in sizes]
    return random.Random(seed).choices(range(len(sizes)), weights=weights, k=length)


class TaskStream:
    """Endless batches from one task's prepared loader. Epoch e is shuffled with `seed + e`, and
    a stream that already gave `consumed` batches (a resume) skips them, so resumed and
    uninterrupted runs see the same batches."""

    def __init__(self, loader: Any, accelerator: Any, seed: int, consumed: int = 0):
        self.loader, self.accelerator, self.seed = loader, accelerator, seed
        self.epoch, self.skip = divmod(consumed, len(loader))
        self._batches: Iterator | None = None

    def __iter__(self) -> "TaskStream":
        return self

    def __next__(self) -> dict[str, Any]:
        if not self.skip:
            return self._next()
        # a resume mid-epoch: the epoch's shuffle is drawn again from its seed, then the global
        # RNG goes back to the state the checkpoint restored, as if never interrupted
        with preserved_rng():
            return self._next()

    def _next(self) -> dict[str, Any]:
        while True:
            if self._batches is None:
                set_seed(self.seed + self.epoch)
                loader = self.loader
                if self.skip:
                    loader = self.accelerator.skip_first_batches(self.loader, self.skip)
                    self.skip = 0
                self._batches = iter(loader)
            try:
                return next(self._batches)
            except StopIteration:
                self._batches = None
                self.epoch += 1


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Python's, numpy's and torch's global RNG states are what they were before the block."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
        yield
    random.setstate(python_state)
    np.random.set_state(numpy_state)


def corpus_texts(records: list[Record]) -> list[str]:
    """Every question, answer and caption: what a tokenizer built here must cover."""
    texts = [get_task(task).prefix for task in ("vqa", "caption")]
    for record in records:
        if isinstance(record, VQARecord):
            texts += [record.question, *record.answers]
        else:
            texts += list(record.captions)
    return texts


# ---------------------------------------------------------------------------- model
def build_model(cfg: TrainConfig, tokenizer_records: list[Record]) -> VLT5:
    """The backbone this run starts from: loaded from `cfg.backbone`, or built from `cfg.model`:
    `t5` a hub name / local directory (pretrained weights and tokenizer) or a mapping of
    T5Config fields (fresh weights, word-level tokenizer learnt from the training texts);
    `vision` the VisionConfig fields of a timm model."""
    if cfg.model is None:
        return VLT5.from_pretrained(cfg.backbone)
    spec = dict(cfg.model)
    unknown = sorted(set(spec) - {"name", "t5", "vision", "num_visual_tokens", "tokenizer"})
    if unknown or "t5" not in spec or "vision" not in spec:
        raise ConfigError(f"model: needs keys t5 and vision (optional: name, num_visual_tokens, "
                          f"tokenizer); unknown keys {unknown}")
    vision = spec["vision"]
    vision = VisionConfig(**vision) if isinstance(vision, dict) else VisionConfig(model_name=vision)
    t5 = spec["t5"]
    tokenizer = spec.get("tokenizer")
    if isinstance(t5, dict):
        if tokenizer is None:
            tokenizer = build_word_tokenizer(corpus_texts(tokenizer_records))
        else:
            tokenizer = load_tokenizer(tokenizer)
        t5 = T5Config(
            vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
            **t5,
        )
    model = VLT5.from_components(t5, vision, tokenizer=tokenizer,
                                 num_visual_tokens=spec.get("num_visual_tokens"),
                                 max_text_length=cfg.max_length)
    model.base_model = spec.get("name") or model.base_model or "dept_vl-backbone"
    return model


def adapter_config(cfg: TrainConfig, d_model: int, task: str | None = None) -> MethodConfig:
    """The config of `cfg.method` (looked up in the registry) as the run's keys describe it."""
    method = get_method(cfg.method)
    try:
        return method.config_class.from_train_config(cfg, d_model, task or cfg.task)
    except ValueError as error:  # the config dataclass checks the shape the run's keys set
        raise ConfigError(f"method {cfg.method}: {error}") from None


def learning_rates(cfg: TrainConfig) -> dict[str, float]:
    """Learning rate by role, for `MethodModule.param_groups`: the prompt, the second DePT-style
    rate (DePT's A·B, ADePT's offset network), and the rate of methods that change weights."""
    return {"prompt": cfg.lr_prompt, "lowrank": cfg.lr_lowrank, "weights": cfg.lr,
            "projection": cfg.lr_projection}


def setup_method(model: VLT5, cfg: TrainConfig, tasks: Sequence[TaskData]) -> list[dict[str, Any]]:
    """Make exactly the method's parameters trainable (one adapter per distinct `task.adapter`;
    a backbone method unfreezes everything); return the optimizer groups, merged by name
    across adapters."""
    if get_method(cfg.method).kind == "backbone":
        model.unfreeze_backbone()
        return [{"name": "all", "params": [p for p in model.parameters() if p.requires_grad],
                 "lr": cfg.lr, "weight_decay": cfg.weight_decay}]
    groups: dict[str, dict[str, Any]] = {}
    kinds: dict[str, str] = {}  # adapter → the task kind of its first task
    for task in tasks:
        kinds.setdefault(task.adapter, task.kind)
    lrs = learning_rates(cfg)
    for index, (name, kind) in enumerate(kinds.items()):
        generator = torch.Generator().manual_seed(cfg.seed + index)
        adapter = model.add_adapter(name, adapter_config(cfg, model.d_model, kind),
                                    train_projection=cfg.train_projection, generator=generator)
        found = adapter.prompt.param_groups(lrs)
        if adapter.projection is not None:
            found += method_group("projection", list(adapter.projection.parameters()),
                                  cfg.lr_projection, cfg.weight_decay)
        for group in found:
            if group["name"] in groups:
                groups[group["name"]]["params"] += group["params"]
            else:
                groups[group["name"]] = group
    return list(groups.values())


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of what training changes, to keep the best evaluation's weights in memory."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def restore_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def save_result_model(model: VLT5, cfg: TrainConfig, out: Path, metrics: dict[str, Any] | None,
                      command: str) -> Path:
    """What a run leaves behind: `adapter/` (any adapter method), `adapters/<task>/` (one
    adapter per task) or `model/` (a backbone method: full). `metrics` are the test metrics, by
    task when there are tasks (None: saved before the test evaluation, without them).
    Non-finite weights are refused."""
    check_finite(model)
    metrics = metrics or {}
    if cfg.adapter_per_task:
        target = out / "adapters"
        for name in model.adapters:
            model.save_adapter(name, target / name, metrics=metrics.get(name), command=command)
    elif get_method(cfg.method).kind != "backbone":
        target = out / "adapter"
        model.save_adapter(ADAPTER_NAME, target, metrics=metrics, command=command)
    else:
        target = out / "model"
        model.save_pretrained(target)
    return target


def check_finite(model: torch.nn.Module) -> None:
    """A trained weight that is NaN or infinite must never be saved as a result."""
    for name, param in model.named_parameters():
        if param.requires_grad and not torch.isfinite(param).all():
            raise TrainingError(f"trained weight {name} holds non-finite values; nothing saved")


# ---------------------------------------------------------------------------- logging
class CSVTracker(GeneralTracker):
    """accelerate has no CSV tracker: one `step,name,value` row per logged scalar."""

    name = "csv"
    requires_logging_directory = True

    @on_main_process
    def __init__(self, run_name: str, logging_dir: str | os.PathLike):
        super().__init__()
        self.run_name = run_name
        self.path = Path(logging_dir) / "metrics.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            self.path.write_text("step,name,value\n")

    @property
    def tracker(self) -> Path:
        return self.path

    @on_main_process
    def store_init_configuration(self, values: dict) -> None:
        (self.path.parent / "config.json").write_text(json.dumps(values, indent=2, default=str))

    @on_main_process
    def drop_after(self, step: int) -> None:
        """A resumed run logs steps after its checkpoint again: drop the first run's rows."""
        with self.path.open(newline="") as f:
            rows = list(csv.reader(f))
        kept = [row for row in rows[1:] if row and row[0] and int(row[0]) <= step]
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows([rows[0], *kept])
        atomic_write_text(self.path, text.getvalue())

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        with self.path.open("a", newline="") as f:
            writer = csv.writer(f)
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    writer.writerow([step, key, value])


TRAINER_STATE = "trainer_state.json"
BEST_WEIGHTS = "best_weights.safetensors"
_CHECKPOINT_NAME = re.compile(r"checkpoint_(\d+)")


@dataclass
class Progress:
    """What a run knows beyond its weights and optimizer (accelerate keeps those): the step, the
    best evaluation so far and *its weights*, and the collator's answer-sampling RNG. A resumed
    run restores all of it, so it ends exactly where the uninterrupted run would."""

    step: int = 0
    best: float | None = None  # the selection metric's best value (None: never evaluated)
    best_metrics: dict[str, Any] = field(default_factory=dict)
    best_state: dict[str, torch.Tensor] | None = None
    collator_rng: Any = None  # random.Random.getstate() of the training collator

    def improve(self, score: float, metrics: dict[str, Any], model: torch.nn.Module) -> None:
        if self.best is None or score > self.best:
            self.best, self.best_metrics = score, metrics
            self.best_state = trainable_state(model)


def save_checkpoint(accelerator: Any, out: Path, progress: Progress, keep: int) -> Path:
    """`checkpoints/checkpoint_<step>`: accelerate's state, the best weights and the trainer
    state, written into `checkpoint_<step>.partial` and renamed only once complete. The trainer
    state, written last, lists every file with its size, so a checkpoint cut short is known."""
    final = out / "checkpoints" / f"checkpoint_{progress.step}"
    partial = final.with_name(final.name + ".partial")
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()  # every process has written its RNG state
    if accelerator.is_main_process:
        if progress.best_state is not None:
            save_file({k: v.contiguous() for k, v in progress.best_state.items()},
                      partial / BEST_WEIGHTS)
        files = {p.name: p.stat().st_size for p in sorted(partial.iterdir()) if p.is_file()}
        atomic_write_json(partial / TRAINER_STATE, {
            "step": progress.step, "best": progress.best, "best_metrics": progress.best_metrics,
            "collator_rng": progress.collator_rng, "files": files})
        replace_dir(partial, final)
        prune_checkpoints(out, keep)
    accelerator.wait_for_everyone()
    return final


def _checkpoints(out: Path) -> list[Path]:
    """`checkpoints/checkpoint_<step>` folders (complete or not), oldest first."""
    found = [p for p in (out / "checkpoints").glob("checkpoint_*")
             if _CHECKPOINT_NAME.fullmatch(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name.rsplit("_", 1)[-1]))


def prune_checkpoints(out: Path, keep: int) -> None:
    complete = [p for p in _checkpoints(out) if checkpoint_problem(p) is None]
    for old in complete[:-keep] if keep > 0 else []:
        shutil.rmtree(old)


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why `checkpoint` cannot be resumed from (None: it is complete)."""
    try:
        state = read_trainer_state(checkpoint)
    except CheckpointError as error:
        return str(error)
    for name, size in state.get("files", {}).items():
        file = checkpoint / name
        if not file.is_file():
            return f"{file}: missing (the checkpoint was cut short)"
        if file.stat().st_size != size:
            return f"{file}: {file.stat().st_size} bytes, {size} were written"
    return None


def find_checkpoint(out: Path, resume: str) -> Path:
    """`latest` → the newest complete `checkpoints/checkpoint_<step>` (incomplete ones are
    skipped with a warning naming them); else the given directory, which must be complete."""
    if resume != "latest":
        problem = checkpoint_problem(Path(resume))
        if problem:
            raise CheckpointError(f"resume_from_checkpoint: {problem}")
        return Path(resume)
    for candidate in reversed(_checkpoints(out)):
        problem = checkpoint_problem(candidate)
        if problem is None:
            return candidate
        logger.warning("skipping checkpoint %s: %s", candidate, problem)
    raise CheckpointError(f"resume_from_checkpoint latest: no complete checkpoint under "
                          f"{out / 'checkpoints'}")


def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    """The checkpoint's trainer_state.json, checked; a missing, empty or corrupt file is a
    CheckpointError naming it."""
    file = checkpoint / TRAINER_STATE
    if not file.is_file():
        raise CheckpointError(f"{checkpoint}: not a complete dept_vl checkpoint (no {TRAINER_STATE})")
    state = read_json_object(file, CheckpointError)
    if not isinstance(state.get("step"), int) or not isinstance(state.get("best_metrics"), dict):
        raise CheckpointError(f"{file}: corrupt trainer state (needs an integer 'step' and a "
                              "'best_metrics' mapping)")
    return state


def load_progress(checkpoint: Path) -> Progress:
    """The Progress a checkpoint saved, with its best weights."""
    state = read_trainer_state(checkpoint)
    best = state.get("best")
    best_state = None
    if (checkpoint / BEST_WEIGHTS).is_file():
        best_state = read_safetensors(checkpoint / BEST_WEIGHTS, CheckpointError)
    elif state["best_metrics"]:
        raise CheckpointError(f"{checkpoint}: has best_metrics but no {BEST_WEIGHTS} (written "
                              "by an older dept_vl, whose resume lost the best weights)")
    # older checkpoints wrote -inf for "never evaluated"
    best = None if best is None or best == -math.inf else float(best)
    return Progress(state["step"], best, state["best_metrics"], best_state,
                    state.get("collator_rng"))
