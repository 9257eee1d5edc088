"""A run's tasks and their data: the config's files read into validated records (k-shot
sampled, bad rows skipped when asked), which task each micro-batch comes from, and the endless,
resumable batch stream of each task."""

from __future__ import annotations

import contextlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from accelerate.utils import set_seed

from dept_vl.training.config import ConfigError, TrainConfig
from dept_vl.data import shapes
from dept_vl.data.fewshot import sample_kshot
from dept_vl.data.image_files import validate_images
from dept_vl.data.bad_data import DataError, skip_summary
from dept_vl.data.records import Record, refuse_unanswered
from dept_vl.files import atomic_write_text
from dept_vl.methods import get_method
from dept_vl.tasks import get_task, load_task_records

# the adapter of a run whose tasks share one (adapter_per_task: false): saved as `adapter/`
ADAPTER_NAME = "default"


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
    records with question types kept only for `question_types` (None: all).

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
        records += load_task_records(path, kind, options.pop("format", "auto"), skipped=skipped,
                                **options)
    if question_types is not None:
        wanted = set(question_types)
        records = [r for r in records if r.has_type(wanted)]
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
        if get_method(cfg.method_name).kind != "backbone":
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
        task.train = every if types is None else [r for r in every if r.has_type(set(types))]
        task.eval = load_split(spec.get("eval_file"), task.kind, types, skipped)
        task.test = load_split(spec.get("test_file"), task.kind, types, skipped)
        for key, records in (("train_file", every), ("eval_file", task.eval),
                             ("test_file", task.test)):  # a test split has nothing to score
            refuse_unanswered(records, f"{key} of a training run")
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
    """Endless batches from one task's prepared loader. Epoch e is shuffled with `seed + e` (and
    its examples draw their targets by e, see RecordDataset), and
    a stream that already gave `consumed` batches (a resume) skips them, so resumed and
    uninterrupted runs see the same batches."""

    def __init__(self, loader: Any, accelerator: Any, seed: int, consumed: int = 0,
                 generator: torch.Generator | None = None):
        self.loader, self.accelerator, self.seed = loader, accelerator, seed
        self.generator = generator  # the sampler's: seeded per epoch, the same on every process
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
                if self.generator is not None:
                    self.generator.manual_seed(self.seed + self.epoch)
                if hasattr(self.loader.dataset, "start_epoch"):  # the epoch's answer draws
                    self.loader.dataset.start_epoch(self.epoch)
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
