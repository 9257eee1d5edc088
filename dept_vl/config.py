"""Training configuration: one dataclass, filled from a YAML file and then `--key value` overrides.

Unknown keys are errors (a typo must not silently train with a default). A config may hold
`jobs:`, named sub-runs that share every other key (the quickstart trains a VQA and a caption
adapter in one command); command-line overrides apply to every job.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dept_vl.errors import UserError

METHODS = ("dept", "pt", "lora", "full")
TASK_KEYS = {"task", "train_file", "eval_file", "test_file", "question_types"}
INIT_PARTS = ("prompt", "lowrank", "projection")
MIXED_PRECISION = ("no", "fp16", "bf16")


class ConfigError(UserError, ValueError):
    """A bad config file or command-line override; the message names the key (and file)."""


@dataclass
class TrainConfig:
    # what to train
    method: str = "dept"  # dept | pt (vanilla prompt tuning, equal budget) | lora (peft) | full
    task: str = "vqa"  # vqa | caption (the adapter's task; records of both may be mixed)
    backbone: str = "runs/backbone-shapes"  # backbone directory (VLT5.save_pretrained)
    bootstrap: str | None = None  # backbone YAML that builds `backbone` when it is missing
    model: dict[str, Any] | None = None  # build a fresh backbone instead (pretraining): t5/vision
    # data: a path, a {path, format, task, image_dir, annotations, split, column_map} mapping,
    # or a list of those
    corpus: dict[str, Any] | None = None  # built-in corpus to create if missing: dir, n_images, seed
    train_file: Any = None
    eval_file: Any = None
    test_file: Any = None
    question_types: list[str] | None = None  # keep only these VQA question types (None: all)
    max_eval_examples: int | None = 500  # periodic evaluation subset (final test: whole split)
    output_dir: str = "runs/dept"
    # optimisation
    max_steps: int = 1000
    batch_size: int = 32
    eval_batch_size: int = 64
    gradient_accumulation_steps: int = 1
    lr_prompt: float = 3e-1  # DePT prompt P (official range 3e-1..4e-1)
    lr_lowrank: float = 1e-4  # DePT pair A, B (official range 1e-4..5e-3)
    lr_projection: float = 1e-3  # trainable visual projection
    lr: float = 1e-4  # lora and full fine-tuning
    weight_decay: float = 0.01  # projection / full / lora; always 0 on P, A, B
    warmup_steps: int = 100
    max_grad_norm: float = 1.0
    seed: int = 42
    mixed_precision: str = "no"
    # DePT shape
    prompt_length: int = 60
    rank: int = 30
    max_length: int = 256  # s: also the text truncation length
    alpha: float = 8.0
    prompt_init: str = "vocab"
    prompt_init_text: str | None = None
    pt_prompt_length: int | None = None  # pt: None = the DePT budget m·d + r·(s+d) divided by d
    train_projection: bool = True
    # lora (peft)
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: ["q", "v"])
    # bookkeeping
    max_target_length: int = 48
    eval_steps: int = 200
    save_steps: int = 500
    logging_steps: int = 10
    checkpoints_total_limit: int = 2
    cache_images: bool = True  # keep transformed images in memory (small corpora)
    group_by_length: bool = False  # batches of similar text length (less padding), still shuffled
    cache_features: bool = False  # frozen encoder outputs computed once, kept on disk
    feature_cache_dir: str = "runs/feature-cache"  # one subfolder per encoder fingerprint
    num_workers: int = 0
    num_threads: int | None = None  # CPU threads per process; None: the cores split over processes
    resume_from_checkpoint: str | None = None  # a checkpoint dir, or "latest"
    dry_run: bool = False  # build everything, run no step
    # multi-task (source) training: named tasks {name: {task, train_file, eval_file, test_file,
    # question_types}}; each batch is one task's, drawn with p(task) ∝ size^(1/temperature)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    task_sampling_temperature: float = 1.0  # 1: in proportion to size; large: uniform
    adapter_per_task: bool = False  # one adapter per task (adapters/<name>/) or one shared
    # few-shot: k examples per answer class (VQA) / k images (captions), drawn with `seed` from
    # train_file; the dev set the same way from eval_file; test_file stays whole
    k_shot: int | None = None
    # transfer: start the adapter from saved adapter(s): paths, or folders of adapters
    init_from: str | list[str] | None = None
    init_parts: list[str] = field(default_factory=lambda: list(INIT_PARTS))
    init_select: str = "best"  # several sources: best (lowest zero-step loss) | average
    init_temperature: float = 1.0  # average: weights softmax(-loss / temperature)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method: must be one of {METHODS}, got {self.method!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError(
                f"mixed_precision: must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}"
            )
        for key in ("max_steps", "batch_size", "gradient_accumulation_steps", "eval_batch_size"):
            if getattr(self, key) < (0 if key == "max_steps" else 1):
                raise ConfigError(f"{key}: must be positive, got {getattr(self, key)}")
        for name, spec in self.tasks.items():
            if not isinstance(spec, dict) or set(spec) - TASK_KEYS or "train_file" not in spec:
                raise ConfigError(f"tasks.{name}: needs train_file; allowed keys "
                                  f"{sorted(TASK_KEYS)}, got {spec!r}")
            if not name.isidentifier():
                raise ConfigError(f"tasks.{name}: task names must be identifiers (adapter names)")
        if self.adapter_per_task and (not self.tasks or self.method not in ("dept", "pt")):
            raise ConfigError("adapter_per_task: needs `tasks:` and method dept or pt")
        if self.init_from is not None and self.method not in ("dept", "pt"):
            raise ConfigError(f"init_from: only prompt adapters (dept, pt) can start from a "
                              f"source adapter, not method {self.method!r}")
        if not self.init_parts or set(self.init_parts) - set(INIT_PARTS):
            raise ConfigError(f"init_parts: choose from {list(INIT_PARTS)}, got {self.init_parts}")
        if self.init_select not in ("best", "average"):
            raise ConfigError(f"init_select: must be best or average, got {self.init_select!r}")
        if self.k_shot is not None and self.k_shot < 1:
            raise ConfigError(f"k_shot: must be at least 1, got {self.k_shot}")
        for name, job in self.jobs.items():
            unknown = sorted(set(job) - _field_names() - {"jobs", "output_dir"})
            if unknown:
                raise ConfigError(f"jobs.{name}: unknown keys {unknown}")
            if "output_dir" in job or "jobs" in job:
                raise ConfigError(f"jobs.{name}: a job cannot set output_dir or jobs "
                                  "(it writes to <output_dir>/<job name>)")

    def for_job(self, name: str) -> "TrainConfig":
        """This config with job `name`'s keys applied, writing to `<output_dir>/<name>`."""
        values = {**dataclasses.asdict(self), **self.jobs[name], "jobs": {},
                  "output_dir": str(Path(self.output_dir) / name)}
        return TrainConfig(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _field_names() -> set[str]:
    return {f.name for f in dataclasses.fields(TrainConfig)}


def _check_type(key: str, value: Any, source: str) -> Any:
    """Coerce what YAML parsed to the field's declared type, or say which key is wrong."""
    hint = typing.get_type_hints(TrainConfig)[key]
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    for kind in allowed:
        origin = typing.get_origin(kind) or kind
        if kind is Any:
            return value
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if origin is float and isinstance(value, str):  # YAML reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                continue
        if origin is int and isinstance(value, bool):
            continue
        if isinstance(origin, type) and isinstance(value, origin):
            return value
    raise ConfigError(f"{source}: {key}: expected {hint}, got {value!r}")


def parse_overrides(argv: list[str]) -> dict[str, Any]:
    """`--key value`, `--key=value`, or a bare `--flag` (True) → {key: raw text}; `load_config`
    turns the text into the field's type."""
    values: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}: overrides look like --key value")
        key, eq, raw = arg[2:].partition("=")
        key = key.replace("-", "_")
        if not eq:
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                raw = argv[i + 1]
                i += 1
            else:
                raw = True
        values[key] = raw
        i += 1
    return values


def _from_cli(key: str, raw: Any) -> Any:
    """A command-line string → the value for `key`: kept as text for text fields (so `--mixed_precision
    no` stays "no"), YAML-parsed otherwise (numbers, booleans, lists, mappings)."""
    if not isinstance(raw, str) or key not in _field_names():
        return raw
    hint = typing.get_type_hints(TrainConfig)[key]
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if raw in ("null", "None", "~") and type(None) in allowed:
        return None
    if str in allowed and not (raw.startswith("[") and any(
            typing.get_origin(kind) is list for kind in allowed)):
        return raw  # text stays text; `--init_from "[a, b]"` is still a list
    return yaml.safe_load(raw)


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """YAML file (optional) + overrides → validated TrainConfig."""
    values: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"config file not found: {file}")
        loaded = yaml.safe_load(file.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{file}: top level must be a mapping of keys to values")
        values.update(_validated(loaded, str(file)))
    cli = _validated({k: _from_cli(k, v) for k, v in (overrides or {}).items()}, "command line")
    values.update(cli)
    # the command line beats the file, the jobs' own keys included
    job_cli = {k: v for k, v in cli.items() if k != "output_dir"}
    values["jobs"] = {name: {**job, **job_cli} for name, job in values.get("jobs", {}).items()}
    return TrainConfig(**values)


def _validated(values: dict[str, Any], source: str) -> dict[str, Any]:
    names = _field_names()
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"{source}: unknown keys {unknown}; known keys: {', '.join(sorted(names))}"
        )
    return {key: _check_type(key, value, source) for key, value in values.items()}
