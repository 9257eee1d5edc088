"""Training configuration: one dataclass, filled from a YAML file and then `--key value` overrides.

Nothing is taken on trust, because a typo or a bad number must never train silently with a
default (or a NaN). Every value is checked where it is read, and the error names the file (or
"command line") and the key path, e.g. `cfg.yaml: model.t5.d_modle: unknown key`:
- types (YAML's `1e-4` is text: it becomes a float), numbers finite and in range (table `RULES`);
- nested mappings against the keys they accept: `model:` (with `t5:` checked against T5Config's
  own fields and `vision:` against VisionConfig's), `corpus:`, data-file entries, `tasks.<name>`
  and `jobs.<name>`;
- YAML itself: a syntax error or a key given twice names the file, line and column.
A TrainConfig built in Python goes through the same checks (errors without a file name).

A config may hold `jobs:`, named sub-runs that share every other key (the quickstart trains a VQA
and a caption adapter in one command); command-line overrides apply to every job.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dept_vl.data.formats import LOADERS
from dept_vl.data.shapes import MIN_IMAGE_SIZE, PALETTES, SHAPE_SETS, TYPE_SETS
from dept_vl.errors import one_line
from dept_vl.training.method_block import MOVED, check_partial, merge, method_block, moved
from dept_vl.checks import (
    AT_LEAST_0, AT_LEAST_1, POSITIVE, SEED, Bound, Choice, Rule, Spec, check_mapping, checked,
    nonempty, shown,
)
from dept_vl.training.rules import ConfigError, Where
from dept_vl.tasks import TASKS

INIT_SELECT = ("best", "average")
MIXED_PRECISION = ("no", "fp16", "bf16")
ON_BAD_DATA = ("error", "skip")
ON_UNKNOWN_TOKENS = ("warn", "error")
FEATURE_DTYPES = ("float16", "float32")
JOB_FORBIDDEN = ("output_dir", "jobs")  # a job writes to <output_dir>/<job name>
# build_model sets these T5Config fields from the tokenizer; given twice, T5Config would fail
T5_FROM_TOKENIZER = ("vocab_size", "pad_token_id", "eos_token_id", "decoder_start_token_id")
T5_META = ("self", "transformers_version", "architectures")  # bookkeeping, not model shape


# ---------------------------------------------------------------------------- nested values
def _data_file(entry: Any, where: Where) -> Any:
    if isinstance(entry, str):
        return nonempty(entry, where)
    if isinstance(entry, dict):
        return check_mapping(entry, DATA_FILE, where, "allowed", required=("path",))
    raise where.error(f"expected a path, a mapping with path: and load options, or a list of "
                      f"those, got {shown(entry)}")


def data_files(entry: Any, where: Where) -> Any:
    """A data-file entry (taskdata.load_split): a path, a mapping, or a list of those."""
    if isinstance(entry, list):
        return [_data_file(item, where.item(i)) for i, item in enumerate(entry)]
    return _data_file(entry, where)


def _tokenizer(value: Any, where: Where) -> Any:
    """`model.tokenizer`: a tokenizer directory, or {kind: word | byte_bpe, vocab_size,
    word_list} to learn one from the training texts (for a fresh T5)."""
    if isinstance(value, str):
        return nonempty(value, where)
    return check_mapping(value, TOKENIZER, where, "allowed", required=("kind",))


def _t5(value: Any, where: Where) -> Any:
    """`model.t5`: a hub name / local directory, or T5Config fields for a fresh T5."""
    if isinstance(value, str):
        return nonempty(value, where)
    given = [key for key in T5_FROM_TOKENIZER if key in value]
    if given:
        raise where.key(given[0]).error("set by dept_vl from the tokenizer; leave it out")
    checked = check_mapping(value, _t5_spec(), where, "T5Config fields")
    _t5_builds(checked, where)
    return checked


def _t5_builds(fields: dict[str, Any], where: Where) -> None:
    """What the field types cannot say: T5Config's own validation, and that the activation
    exists (an unknown one would fail only once the model is built)."""
    from transformers import T5Config  # only configs that build a T5 pay for the import
    from transformers.activations import ACT2FN

    try:
        T5Config(**fields)
    except Exception as error:  # its strict-dataclass errors derive from no built-in type
        raise where.error(f"T5Config refuses it: {one_line(error)}") from error
    activation = fields.get("feed_forward_proj", "relu").split("-")[-1]
    if activation not in ACT2FN:
        raise where.key("feed_forward_proj").error(
            f"unknown activation {activation!r}; known: {', '.join(sorted(ACT2FN))}")


T5_RULES: dict[str, Rule] = {
    **dict.fromkeys(("d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
                     "relative_attention_num_buckets", "relative_attention_max_distance"),
                    AT_LEAST_1),
    "dropout_rate": Bound(0, high=1),
    "classifier_dropout": Bound(0, high=1),
    "layer_norm_epsilon": POSITIVE,
}


@functools.cache
def _t5_spec() -> Spec:
    """T5Config's own fields (its __init__ arguments), each typed like its default value."""
    from transformers import T5Config

    defaults = T5Config().to_dict()
    spec: Spec = {}
    for name, param in inspect.signature(T5Config.__init__).parameters.items():
        if param.kind is param.VAR_KEYWORD or name in T5_META or name in T5_FROM_TOKENIZER:
            continue
        kind = type(defaults.get(name))
        hint = kind if kind in (bool, int, float, str) else Any
        if param.default is None and hint is not Any:
            hint = hint | None
        spec[name] = (hint, T5_RULES.get(name))
    # not an __init__ argument, yet read by T5Config: False is T5 v1.1's unscaled decoder output
    spec["tie_word_embeddings"] = (bool, None)
    return spec


def _vision(value: Any, where: Where) -> Any:
    """`model.vision`: a timm model name, or VisionConfig's fields (dept_vl/vision.py)."""
    if isinstance(value, str):
        return nonempty(value, where)
    from dept_vl.vision import VisionConfig  # timm and torch: only when a backbone is built

    hints = typing.get_type_hints(VisionConfig)
    rules: dict[str, Rule] = {"model_name": nonempty, "image_size": AT_LEAST_1}
    spec = {f.name: (hints[f.name], rules.get(f.name)) for f in dataclasses.fields(VisionConfig)}
    return check_mapping(value, spec, where, "VisionConfig fields", required=("model_name",))


def _model(value: Any, where: Where) -> Any:
    return check_mapping(value, MODEL, where, "allowed", required=("t5", "vision"))


def _corpus(value: Any, where: Where) -> Any:
    return check_mapping(value, CORPUS, where, "allowed", required=("dir",))


def _tasks(value: dict[str, Any], where: Where) -> dict[str, Any]:
    checked = {}
    for name, spec in value.items():
        if not (isinstance(name, str) and name.isidentifier()):
            raise where.key(name).error("task names must be identifiers (adapter names)")
        checked[name] = check_mapping(spec, TASK, where.key(name), "allowed",
                                       required=("train_file",))
    return checked


def _jobs(value: dict[str, Any], where: Where) -> dict[str, Any]:
    """Each job: config keys (checked like the top level's) but not output_dir or jobs."""
    spec = {key: entry for key, entry in train_spec().items() if key not in JOB_FORBIDDEN}
    spec["method"] = (Any, check_partial)  # merged into the shared block, then checked whole
    result = {}
    for name, job in value.items():
        at = where.key(name)
        if not isinstance(name, str) or name in ("", ".", "..") or set(name) & set("/\\"):
            raise at.error("job names must be folder names (the job writes to "
                           "<output_dir>/<job name>)")
        for key in JOB_FORBIDDEN:
            if isinstance(job, dict) and key in job:
                raise at.key(key).error("a job cannot set output_dir or jobs (it writes to "
                                        "<output_dir>/<job name>)")
        for key in MOVED:
            if isinstance(job, dict) and key in job:
                raise moved(key, at)
        result[name] = check_mapping(job, spec, at, "config keys")
    return result


def init_parts() -> tuple[str, ...]:
    """Every part a transfer can copy: the parts of the registered methods, and the projection."""
    from dept_vl.methods import METHODS  # torch: kept out of this module's import

    parts = [part for method in METHODS.values() for part in method.parts]
    return (*dict.fromkeys(parts), "projection")


def _init_parts(value: list[str], where: Where) -> list[str]:
    if not value or set(value) - set(init_parts()):
        raise where.error(f"choose from {list(init_parts())}, got {value}")
    return value


def _task(value: str, where: Where) -> str:
    """A task of dept_vl/tasks.py's TASKS, read when checked (a task added at run time counts)."""
    return Choice(tuple(TASKS))(value, where)


# data-file mapping: `path` plus load_records' options (dept_vl/data/formats/)
DATA_FILE: Spec = {
    "path": (str, nonempty),
    "format": (str, Choice(("auto", *sorted(LOADERS)))),
    "task": (str, _task),
    "image_dir": (str | None, None),
    "annotations": (str | None, None),
    "split": (str | None, None),
    "column_map": (dict[str, str] | None, None),
    "check_images": (bool, None),
}
MODEL: Spec = {
    "name": (str | None, None),
    "t5": (str | dict[str, Any], _t5),
    "vision": (str | dict[str, Any], _vision),
    "num_visual_tokens": (int | None, AT_LEAST_1),
    "visual_positions": (str, Choice(("none", "sincos", "learned"))),  # vision.VISUAL_POSITIONS
    "tokenizer": (str | dict[str, Any] | None, _tokenizer),
}
# `model.tokenizer` as a mapping: one learnt from the training texts (a string: a directory)
TOKENIZER_KINDS = ("word", "byte_bpe")
TOKENIZER: Spec = {
    "kind": (str, Choice(TOKENIZER_KINDS)),
    "vocab_size": (int, Bound(259)),  # the 256 byte symbols and pad, eos, unk
    # byte_bpe: learn from tokenization.english_words() too (default true), so words the
    # corpus lacks are a few pieces, not bytes; false: the training texts alone
    "word_list": (bool, None),
}
# the built-in corpus: shapes.write_corpus's arguments, `dir` its out_dir
CORPUS: Spec = {
    "dir": (str, nonempty),
    "n_images": (int, AT_LEAST_1),
    "seed": (int, SEED),
    "image_size": (int, Bound(MIN_IMAGE_SIZE)),
    "palette": (str, Choice(PALETTES)),
    "shapes": (str, Choice(tuple(SHAPE_SETS))),
    "types": (str, Choice(tuple(TYPE_SETS))),  # the question types written: default | all
}
TASK: Spec = {
    "task": (str, _task),
    "train_file": (Any, data_files),
    "eval_file": (Any, data_files),
    "test_file": (Any, data_files),
    "question_types": (list[str] | None, nonempty),
}


# ---------------------------------------------------------------------------- the config
@dataclass
class TrainConfig:
    # ---- what to train
    # the method and its settings: a name (dept | pt | adept | lora | full: its defaults), or
    # {name, <its keys>, lr: {<role>: rate}}, e.g. {name: dept, prompt_length: 60, rank: 30,
    # lr: {prompt: 3.0e-1, lowrank: 1.0e-4}}; `--method.rank 30` sets one key
    method: str | dict[str, Any] = "dept"
    task: str = "vqa"  # vqa | caption (the adapter's task; records of both may be mixed)
    # backbone directory (VLT5.save_pretrained), or builtin (the one shipped in the package)
    backbone: str = "runs/backbone-shapes/model"
    # backbone YAML (a file, or a shipped config's name) that builds `backbone` when missing
    bootstrap: str | None = None
    # build the backbone from a T5 and a timm encoder instead: {t5, vision, num_visual_tokens,
    # visual_positions, tokenizer, name}
    model: dict[str, Any] | None = None
    # ---- data
    # the built-in corpus to write if missing: {dir, n_images, seed, image_size, palette, shapes,
    # types}
    corpus: dict[str, Any] | None = None
    # training data: a path, a {path, format, task, image_dir, annotations, split, column_map,
    # check_images} mapping, or a list of those
    train_file: Any = None
    eval_file: Any = None  # periodic evaluation data (same forms as train_file)
    test_file: Any = None  # final test data (same forms as train_file); none: no test
    # a bad row or undecodable image: "error" stops before training naming file and line;
    # "skip" drops it before training and counts it by reason
    on_bad_data: str = "error"
    # data with words the backbone's tokenizer cannot represent (written to
    # OUTPUT_DIR/tokenizer_coverage.json): "warn" prints shares and examples, "error" stops
    on_unknown_tokens: str = "warn"
    question_types: list[str] | None = None  # keep only these VQA question types (None: all)
    max_eval_examples: int | None = 500  # periodic evaluation subset (final test: whole split)
    # which max_eval_examples: a sample drawn with this seed (the same for every run), or the
    # file's first ones (null; a file sorted by image has few images in its head)
    eval_sample_seed: int | None = 0
    output_dir: str = "runs/dept"  # where the run writes its model, checkpoints, logs, results
    # ---- optimisation
    max_steps: int = 1000  # optimizer steps
    # examples per micro-batch over all processes together (a multiple of their number); an
    # optimizer step sees batch_size x gradient_accumulation_steps
    batch_size: int = 32
    eval_batch_size: int = 64  # examples per generation batch in evaluation
    # beams of the run's evaluation and test (and of evaluate_frozen), every task alike;
    # None: each task's own (greedy VQA, 5-beam captions, dept_vl/tasks.py)
    num_beams: int | None = None
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    lr_projection: float = 1e-3  # trainable visual projection (the method's rates: method.lr)
    weight_decay: float = 0.01  # the projection and full fine-tuning; 0 on every method's tensors
    warmup_steps: int = 100  # linear warmup, then linear decay to 0 at max_steps
    max_grad_norm: float = 1.0  # 0: no clipping
    seed: int = 42  # initialisation, shuffling, few-shot draws
    mixed_precision: str = "no"  # no | fp16 | bf16 (accelerate's)
    # ---- text and projection
    max_length: int = 256  # text inputs are truncated to this many tokens (DePT: also s)
    train_projection: bool = True  # each adapter trains its own copy of the visual projection
    # ---- bookkeeping
    max_target_length: int = 48  # answer / caption tokens trained on (longer targets are cut)
    eval_steps: int = 200  # evaluate every this many steps (best weights kept on its metric)
    save_steps: int = 500  # checkpoint every this many steps
    logging_steps: int = 10  # log the loss every this many steps
    checkpoints_total_limit: int = 2  # 0: keep every checkpoint
    # keep every transformed image in memory (per DataLoader worker): only for small corpora
    # (the built-in one's configs turn it on); at 224 px it is ~0.6 MB an image
    cache_images: bool = False
    group_by_length: bool = False  # batches of similar text length (less padding), still shuffled
    cache_features: bool = False  # frozen encoder outputs computed once, kept on disk
    feature_cache_dir: str = "runs/feature-cache"  # one subfolder per encoder fingerprint
    feature_cache_dtype: str = "float16"  # how cached features are stored (float32: exact)
    feature_cache_shard_mb: int = 256  # a shard is written once it holds this much
    gradient_checkpointing: bool = False  # T5 recomputes activations in backward (less memory)
    num_workers: int = 0  # DataLoader worker processes
    num_threads: int | None = None  # CPU threads per process; None: the cores split over processes
    resume_from_checkpoint: str | None = None  # a checkpoint dir, or "latest"
    dry_run: bool = False  # build everything, run no step
    # ---- several tasks, few-shot, transfer
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
    init_parts: list[str] | None = None  # None: every part the target adapter has
    init_select: str = "best"  # several sources: best (lowest zero-step loss) | average
    init_temperature: float = 1.0  # average: weights softmax(-loss / temperature)
    # named sub-runs {name: {key: value}} sharing every other key, each writing to output_dir/name
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # also test the frozen backbone with no adapter, on the same test split: eval_results.json's
    # `frozen_backbone`, a row of its own in `dept-vl-report`
    evaluate_frozen: bool = False

    def __post_init__(self) -> None:
        # the same checks as a config file's (a config built in Python, a job's), no file named
        where = Where(None)
        for key, (hint, rule) in train_spec().items():
            setattr(self, key, checked(hint, rule, getattr(self, key), where.key(key)))
        if not self.jobs:
            self._check_combinations()
        for name in self.jobs:  # the jobs are what runs: each with the shared keys must make sense
            try:
                self.for_job(name)
            except ConfigError as error:
                raise ConfigError(f"jobs.{name}: {error}") from error

    def _check_combinations(self) -> None:
        from dept_vl.methods import get_method, method_names

        method = get_method(self.method_name)
        adapters = [n for n in method_names() if get_method(n).kind != "backbone"]
        if self.adapter_per_task and (not self.tasks or method.kind == "backbone"):
            raise ConfigError(f"adapter_per_task: needs `tasks:` and an adapter method "
                              f"({', '.join(adapters)})")
        if self.init_from is not None and method.kind == "backbone":
            raise ConfigError(f"init_from: only adapters ({', '.join(adapters)}) can start from "
                              f"a source adapter, not method {self.method_name!r}")
        if self.model is not None and method.kind != "backbone" and not self.train_projection:
            raise ConfigError("train_projection: false needs a backbone directory; a backbone "
                              "built from `model:` has a freshly initialised visual projection, "
                              "which its adapters must train (train_projection: true)")
        try:
            method.config_class.check_train_config(self)
        except ValueError as error:
            raise ConfigError(str(error)) from None

    def for_job(self, name: str) -> "TrainConfig":
        """This config with job `name`'s keys applied, writing to `<output_dir>/<name>`."""
        job = self.jobs[name]
        values = {**dataclasses.asdict(self), **job, "jobs": {},
                  "method": merge(self.method, job.get("method")),
                  "output_dir": str(Path(self.output_dir) / name)}
        return TrainConfig(**values)

    @property
    def method_name(self) -> str:
        return self.method["name"]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def outcome_settings(self) -> dict[str, Any]:
        """The keys a run's result depends on (all but BOOKKEEPING), as JSON holds them: saved
        in its checkpoints and eval_results.json, so that a resume or a grid reading a cell
        back can tell a run made with other settings (see settings_differences)."""
        kept = {k: v for k, v in self.to_dict().items() if k not in BOOKKEEPING}
        return json.loads(json.dumps(kept, default=str))


# keys that change how a run is carried out, not what it computes: a run may be resumed, or a
# grid cell read back, with other values (elsewhere, on another machine, more workers)
BOOKKEEPING = frozenset({
    "output_dir", "resume_from_checkpoint", "dry_run", "save_steps", "logging_steps",
    "checkpoints_total_limit", "num_workers", "num_threads", "eval_batch_size", "evaluate_frozen",
    "gradient_checkpointing", "feature_cache_dir", "feature_cache_shard_mb", "jobs",
    "on_unknown_tokens"})  # warn or stop before training: the same result either way


# what each field may hold beyond its type (fields not named here: any value of the type)
RULES: dict[str, Rule] = {
    "method": method_block,
    "task": _task,
    "backbone": nonempty,
    "model": _model,
    "corpus": _corpus,
    "train_file": data_files,
    "eval_file": data_files,
    "test_file": data_files,
    "on_bad_data": Choice(ON_BAD_DATA),
    "on_unknown_tokens": Choice(ON_UNKNOWN_TOKENS),
    "question_types": nonempty,
    "max_eval_examples": AT_LEAST_1,
    "eval_sample_seed": SEED,
    "output_dir": nonempty,
    "max_steps": AT_LEAST_0,
    "batch_size": AT_LEAST_1,
    "eval_batch_size": AT_LEAST_1,
    "num_beams": AT_LEAST_1,
    "gradient_accumulation_steps": AT_LEAST_1,
    "lr_projection": POSITIVE,
    "weight_decay": AT_LEAST_0,
    "warmup_steps": AT_LEAST_0,
    "max_grad_norm": AT_LEAST_0,
    "seed": SEED,
    "mixed_precision": Choice(MIXED_PRECISION),
    "max_length": AT_LEAST_1,
    "max_target_length": AT_LEAST_1,
    "eval_steps": AT_LEAST_1,
    "save_steps": AT_LEAST_1,
    "logging_steps": AT_LEAST_1,
    "checkpoints_total_limit": AT_LEAST_0,
    "feature_cache_dir": nonempty,
    "feature_cache_dtype": Choice(FEATURE_DTYPES),
    "feature_cache_shard_mb": AT_LEAST_1,
    "num_workers": AT_LEAST_0,
    "num_threads": AT_LEAST_1,
    "tasks": _tasks,
    "task_sampling_temperature": POSITIVE,
    "k_shot": AT_LEAST_1,
    "init_from": nonempty,
    "init_parts": _init_parts,
    "init_select": Choice(INIT_SELECT),
    "init_temperature": POSITIVE,
    "jobs": _jobs,
}


@functools.cache
def train_spec() -> Spec:
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: (hints[f.name], RULES.get(f.name)) for f in dataclasses.fields(TrainConfig)}


def field_names() -> set[str]:
    return set(train_spec())
