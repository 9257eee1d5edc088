"""The pieces `train.py` stands on: data from config entries, the backbone (loaded, bootstrapped
or fresh), per-method trainable parameters and optimizer groups, the CSV tracker, and the
small state a checkpoint needs beyond what `accelerator.save_state` keeps."""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from accelerate.tracking import GeneralTracker, on_main_process
from accelerate.utils import set_seed
from safetensors.torch import save_file
from transformers import AutoTokenizer, T5Config

from dept_vl.config import TrainConfig
from dept_vl.data import shapes
from dept_vl.data.fewshot import sample_kshot
from dept_vl.data.records import Record, VQARecord, load_records, validate_images
from dept_vl.dept import DePTConfig, dept_budget, dept_param_groups
from dept_vl.model import ADAPTER_CONFIG, ADAPTER_WEIGHTS, VLT5
from dept_vl.tasks import get_task
from dept_vl.tokenization import build_word_tokenizer
from dept_vl.vision import VisionConfig

ADAPTER_NAME = "default"


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


def load_split(entry: Any, task: str, question_types: list[str] | None = None) -> list[Record]:
    """Records from a config entry: a path, a mapping of load_records options, or a list of them;
    VQA records kept only for `question_types` (None: all).

    Images are checked (exist, readable) now, before any step is taken.
    """
    if entry is None:
        return []
    entries = entry if isinstance(entry, list) else [entry]
    records: list[Record] = []
    for item in entries:
        options = dict(item) if isinstance(item, dict) else {"path": item}
        path = options.pop("path")
        kind = options.pop("task", task)
        records += load_records(path, kind, options.pop("format", "auto"), **options)
    if question_types is not None:
        wanted = set(question_types)
        records = [r for r in records if not isinstance(r, VQARecord) or r.question_type in wanted]
    validate_images(records)
    return records


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
        adapter = None
        if cfg.method in ("dept", "pt"):
            adapter = name if cfg.adapter_per_task else ADAPTER_NAME
        tasks.append(TaskData(name, kind, adapter, spec))
    return tasks


def load_tasks(cfg: TrainConfig) -> tuple[list[TaskData], list[Record]]:
    """The run's tasks with their records, k-shot sampled when `k_shot` is set, and every
    training record before question-type filtering (what a new tokenizer must cover)."""
    tasks, unfiltered = plan_tasks(cfg), []
    for task in tasks:
        spec, types = task.spec, task.spec.get("question_types")
        every = load_split(spec["train_file"], task.kind)
        unfiltered += every
        task.train = every if types is None else load_split(spec["train_file"], task.kind, types)
        task.eval = load_split(spec.get("eval_file"), task.kind, types)
        task.test = load_split(spec.get("test_file"), task.kind, types)
        if not task.train:
            raise ValueError(f"train_file of task {task.name!r}: no training records (check the "
                             "path and question_types)")
        if cfg.k_shot is not None:
            task.train = sample_kshot(task.train, cfg.k_shot, cfg.seed)
            task.eval = sample_kshot(task.eval, cfg.k_shot, cfg.seed) if task.eval else []
    return tasks, unfiltered


def task_schedule(sizes: Sequence[int], temperature: float, seed: int, length: int) -> list[int]:
    """Which task each micro-batch comes from: p(task) ∝ size^(1/temperature), seeded, fixed in
    advance (a resumed run replays the same schedule)."""
    if temperature <= 0:
        raise ValueError(f"task_sampling_temperature: must be positive, got {temperature}")
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
        raise ValueError(f"model: needs keys t5 and vision (optional: name, num_visual_tokens, "
                         f"tokenizer); unknown keys {unknown}")
    vision = spec["vision"]
    vision = VisionConfig(**vision) if isinstance(vision, dict) else VisionConfig(model_name=vision)
    t5 = spec["t5"]
    tokenizer = spec.get("tokenizer")
    if isinstance(t5, dict):
        if tokenizer is None:
            tokenizer = build_word_tokenizer(corpus_texts(tokenizer_records))
        else:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
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


def adapter_config(cfg: TrainConfig, d_model: int, task: str | None = None) -> DePTConfig:
    """DePT as configured, or (method pt) vanilla prompt tuning with the same budget."""
    prefix = get_task(task or cfg.task).prefix
    common = dict(max_length=cfg.max_length, alpha=cfg.alpha, prompt_init=cfg.prompt_init,
                  prompt_init_text=cfg.prompt_init_text, task_prefix=prefix)
    if cfg.method == "dept":
        return DePTConfig(prompt_length=cfg.prompt_length, rank=cfg.rank, **common)
    length = cfg.pt_prompt_length
    if length is None:
        budget = dept_budget(cfg.prompt_length, cfg.rank, cfg.max_length, d_model)
        length = round(budget / d_model)
        if length * d_model != budget:
            print(f"[dept_vl] note: PT length {length} gives {length * d_model:,} parameters, "
                  f"DePT({cfg.prompt_length},{cfg.rank}) has {budget:,}", flush=True)
    return DePTConfig(prompt_length=length, rank=0, **common)


def setup_method(model: VLT5, cfg: TrainConfig, tasks: Sequence[TaskData]) -> list[dict[str, Any]]:
    """Make exactly the method's parameters trainable (for dept / pt: one adapter per distinct
    `task.adapter`); return the optimizer groups."""
    if cfg.method in ("dept", "pt"):
        groups: dict[str, dict[str, Any]] = {}
        kinds: dict[str, str] = {}  # adapter → the task kind of its first task (its prefix)
        for task in tasks:
            kinds.setdefault(task.adapter, task.kind)
        for index, (name, kind) in enumerate(kinds.items()):
            generator = torch.Generator().manual_seed(cfg.seed + index)
            adapter = model.add_adapter(name, adapter_config(cfg, model.d_model, kind),
                                        train_projection=cfg.train_projection, generator=generator)
            others = []
            if adapter.projection is not None:
                others.append({"name": "projection", "params": list(adapter.projection.parameters()),
                               "lr": cfg.lr_projection, "weight_decay": cfg.weight_decay})
            for group in dept_param_groups(adapter.prompt, cfg.lr_prompt, cfg.lr_lowrank, others):
                if group["name"] in groups:
                    groups[group["name"]]["params"] += group["params"]
                else:
                    groups[group["name"]] = group
        return list(groups.values())
    if cfg.method == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                          lora_dropout=cfg.lora_dropout, target_modules=cfg.lora_target_modules)
        inject_adapter_in_model(lora, model.t5)
        model.projection.requires_grad_(True)
        lora_params = [p for n, p in model.t5.named_parameters() if "lora_" in n]
        return [
            {"name": "lora", "params": lora_params, "lr": cfg.lr, "weight_decay": 0.0},
            {"name": "projection", "params": list(model.projection.parameters()),
             "lr": cfg.lr_projection, "weight_decay": cfg.weight_decay},
        ]
    model.unfreeze_backbone()
    return [{"name": "all", "params": [p for p in model.parameters() if p.requires_grad],
             "lr": cfg.lr, "weight_decay": cfg.weight_decay}]


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of what training changes, to keep the best evaluation's weights in memory."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def restore_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def save_result_model(model: VLT5, cfg: TrainConfig, out: Path, metrics: dict[str, Any],
                      command: str) -> Path:
    """What a run leaves behind: `adapter/` (dept, pt, lora), `adapters/<task>/` (one adapter
    per task) or `model/` (full). `metrics` are the test metrics, by task when there are tasks."""
    if cfg.adapter_per_task:
        target = out / "adapters"
        for name in model.adapters:
            model.save_adapter(name, target / name, metrics=metrics.get(name), command=command)
    elif cfg.method in ("dept", "pt"):
        target = out / "adapter"
        model.save_adapter(ADAPTER_NAME, target, metrics=metrics, command=command)
    elif cfg.method == "lora":
        target = out / "adapter"
        target.mkdir(parents=True, exist_ok=True)
        tensors = {n: p.detach().contiguous() for n, p in model.named_parameters()
                   if p.requires_grad}
        save_file(tensors, target / ADAPTER_WEIGHTS)
        meta = {"method": "lora", "lora_rank": cfg.lora_rank, "lora_alpha": cfg.lora_alpha,
                "target_modules": cfg.lora_target_modules, "base_model": model.base_model,
                "task_prefix": get_task(cfg.task).prefix,
                "trainable_parameters": sum(t.numel() for t in tensors.values())}
        (target / ADAPTER_CONFIG).write_text(json.dumps(meta, indent=2))
    else:
        target = out / "model"
        model.save_pretrained(target)
    return target


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
    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        with self.path.open("a", newline="") as f:
            writer = csv.writer(f)
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    writer.writerow([step, key, value])


TRAINER_STATE = "trainer_state.json"


def write_trainer_state(checkpoint: str | os.PathLike, state: dict[str, Any]) -> None:
    (Path(checkpoint) / TRAINER_STATE).write_text(json.dumps(state, indent=2))


def _checkpoints(out: Path) -> list[Path]:
    """Complete `checkpoints/checkpoint_<step>` folders, oldest first."""
    found = sorted((out / "checkpoints").glob("checkpoint_*"),
                   key=lambda p: int(p.name.rsplit("_", 1)[-1]))
    return [p for p in found if (p / TRAINER_STATE).is_file()]


def prune_checkpoints(out: Path, keep: int) -> None:
    for old in _checkpoints(out)[:-keep] if keep > 0 else []:
        shutil.rmtree(old)


def find_checkpoint(out: Path, resume: str) -> Path:
    """`latest` → the newest `checkpoints/checkpoint_<step>`; else the given directory."""
    if resume != "latest":
        path = Path(resume)
        if not (path / TRAINER_STATE).is_file():
            raise FileNotFoundError(f"{path}: not a dept_vl checkpoint (no {TRAINER_STATE})")
        return path
    found = _checkpoints(out)
    if not found:
        raise FileNotFoundError(f"no checkpoint to resume from under {out / 'checkpoints'}")
    return found[-1]


def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / TRAINER_STATE).read_text())
