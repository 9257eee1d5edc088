"""Fuzz suite, configs: bad types, out-of-range and non-finite numbers, nested typos at every
level, YAML syntax errors, bad data-file entries and bad command-line overrides.

Every case is deterministic (the generated typos come from a seeded generator) and asserts the
exact outcome: a ConfigError whose one-line message starts with the file (or "command line")
and the key path; a handful also go through `train.py`'s entry point (exit 2, one stderr line).
A few valid configs must load, so the checks are known not to refuse good input.
"""

from __future__ import annotations

import random

import pytest

import dept_vl.cli.train
from dept_vl.training.config import ConfigError
from dept_vl.training.config_loading import load_config, parse_overrides
from dept_vl.errors import run_cli

# (id, config text, message after "<file>: "; a message ending in "..." is a prefix)
FILE_CASES = [
    # types
    ("type-int-text", "batch_size: many", "batch_size: expected int, got 'many'"),
    ("type-int-float", "max_steps: 10.5", "max_steps: expected int, got 10.5"),
    ("type-int-bool", "seed: true", "seed: expected int, got True"),
    ("type-bool", "dry_run: 3", "dry_run: expected bool, got 3"),
    ("type-float-list", "lr_projection: [1]", "lr_projection: expected float, got [1]"),
    ("type-list-items", "question_types: [color, 3]",
     "question_types: expected list[str] | None, got ['color', 3]"),
    ("type-mapping", "model: resnet", "model: expected dict[str, Any] | None, got 'resnet'"),
    # out of range
    ("lr-negative", "method: {name: lora, lr: -0.5}", "method.lr.lora: must be > 0, got -0.5"),
    ("lr-projection-zero", "lr_projection: 0", "lr_projection: must be > 0, got 0.0"),
    ("lr-lowrank-text", "method: {name: dept, lr: {lowrank: -1e-4}}",
     "method.lr.lowrank: must be > 0, got -0.0001"),
    ("weight-decay", "weight_decay: -0.01", "weight_decay: must be >= 0, got -0.01"),
    ("warmup", "warmup_steps: -1", "warmup_steps: must be >= 0, got -1"),
    ("eval-steps", "eval_steps: 0", "eval_steps: must be >= 1, got 0"),
    ("save-steps", "save_steps: -5", "save_steps: must be >= 1, got -5"),
    ("logging-steps", "logging_steps: 0", "logging_steps: must be >= 1, got 0"),
    ("batch-size", "batch_size: 0", "batch_size: must be >= 1, got 0"),
    ("alpha", "method: {name: dept, alpha: 0}",
     "method.alpha: must be > 0, got 0.0"),
    ("prompt-length", "method: {name: dept, prompt_length: -1}",
     "method.prompt_length: must be >= 0, got -1"),
    ("rank", "method: {name: dept, rank: -2}",
     "method.rank: must be >= 0, got -2"),
    ("dept-empty", "method: {name: dept, prompt_length: 0, rank: 0}",
     "method: DePTConfig needs prompt_length > 0 or rank > 0 (both are 0)"),
    ("max-length", "max_length: 0", "max_length: must be >= 1, got 0"),
    ("max-target-length", "max_target_length: 0", "max_target_length: must be >= 1, got 0"),
    ("pt-prompt-length", "method: {name: pt, prompt_length: 0}",
     "method.prompt_length: must be >= 1, got 0"),
    ("checkpoints-limit", "checkpoints_total_limit: -1",
     "checkpoints_total_limit: must be >= 0, got -1"),
    ("lora-rank", "method: {name: lora, lora_rank: 0}",
     "method.lora_rank: must be >= 1, got 0"),
    ("lora-alpha", "method: {name: lora, lora_alpha: 0}",
     "method.lora_alpha: must be > 0, got 0.0"),
    ("lora-dropout", "method: {name: lora, lora_dropout: -0.1}",
     "method.lora_dropout: must be in [0, 1), got -0.1"),
    ("sampling-temperature", "task_sampling_temperature: 0",
     "task_sampling_temperature: must be > 0, got 0.0"),
    ("init-temperature", "init_temperature: -1", "init_temperature: must be > 0, got -1.0"),
    ("max-eval-examples", "max_eval_examples: 0", "max_eval_examples: must be >= 1, got 0"),
    ("num-workers", "num_workers: -1", "num_workers: must be >= 0, got -1"),
    ("num-threads", "num_threads: 0", "num_threads: must be >= 1, got 0"),
    ("seed-negative", "seed: -1", "seed: must be in [0, 2147483648), got -1"),
    ("seed-huge", "seed: 4294967296", "seed: must be in [0, 2147483648), got 4294967296"),
    ("k-shot", "k_shot: 0", "k_shot: must be >= 1, got 0"),
    # non-finite: YAML's own spellings and the text "nan" / "inf"
    ("nan-yaml", "method: {name: dept, lr: {prompt: .nan}}",
     "method.lr.prompt: must be a finite number, got nan"),
    ("inf-yaml", "max_grad_norm: .inf", "max_grad_norm: must be a finite number, got inf"),
    ("minus-inf-yaml", "weight_decay: -.inf", "weight_decay: must be a finite number, got -inf"),
    ("nan-text", "method: {name: dept, alpha: nan}",
     "method.alpha: must be a finite number, got 'nan'"),
    ("inf-text", "lr_projection: inf", "lr_projection: must be a finite number, got 'inf'"),
    ("overflow-text", "lr_projection: 1e999",
     "lr_projection: must be a finite number, got '1e999'"),
    ("nan-in-job", "jobs: {a: {lr_projection: .nan}}",
     "jobs.a.lr_projection: must be a finite number, got nan"),
    ("nan-in-job-method", "jobs: {a: {method: {lr: {prompt: .nan}}}}",
     "jobs.a.method.lr.prompt: must be a finite number, got nan"),
    # choices
    ("on-bad-data", "on_bad_data: ignore",
     "on_bad_data: must be one of ('error', 'skip'), got 'ignore'"),
    ("mixed-precision", "mixed_precision: fp8",
     "mixed_precision: must be one of ('no', 'fp16', 'bf16'), got 'fp8'"),
    ("task", "task: gqa", "task: must be one of ('vqa', 'caption'), got 'gqa'"),
    ("prompt-init", "method: {name: pt, prompt_init: zeros}",
     "method.prompt_init: must be one of ('vocab', 'text', 'random'), got 'zeros'"),
    # the method block
    ("method-unknown", "method: prefix", "method.name: must be one of ..."),
    ("method-no-name", "method: {rank: 3}", "method: expected a method name or a mapping with "
                                            "name: ..."),
    ("method-key", "method: {name: pt, rank: 3}",
     "method.rank: unknown key; method pt's keys: lr, name, prompt_init, prompt_init_text, "
     "prompt_length"),
    ("method-key-typo", "method: {name: dept, rnak: 3}",
     "method.rnak: unknown key (did you mean 'rank'?); method dept's keys: ..."),
    ("method-type", "method: {name: dept, rank: high}", "method.rank: expected int, got 'high'"),
    ("method-lr-role", "method: {name: dept, lr: {offset: 1.0e-3}}",
     "method.lr.offset: not a learning-rate role of method dept (its roles: prompt, lowrank)"),
    ("method-lr-number", "method: {name: dept, lr: 1.0e-3}",
     "method.lr: method dept learns at 2 rates: give {prompt: ..., lowrank: ...}"),
    ("method-job-other", "jobs: {a: {method: {name: pt, rank: 2}}}",
     "jobs.a.method.rank: unknown key; method pt's keys: ..."),
    # keys of the flat form, now in the method block: one line naming the new key
    ("flat-rank", "rank: 3", "rank: moved to method.rank: methods keep their settings in their "
                             "own block, ..."),
    ("flat-lr", "lr: 1.0e-4", "lr: moved to method.lr (lora: method.lr.lora, full: "
                              "method.lr.backbone): ..."),
    ("flat-pt-length", "pt_prompt_length: 26",
     "pt_prompt_length: moved to method.prompt_length (with name: pt): ..."),
    ("flat-in-job", "jobs: {a: {lr_prompt: 0.1}}", "jobs.a.lr_prompt: moved to method.lr.prompt"
                                                  ": ..."),
    ("empty-output-dir", "output_dir: ''", "output_dir: must not be empty"),
    # nested typos and values: model
    ("model-key", "model: {t5: t5-small, vision: resnet10t, tokenzier: t5-small}",
     "model.tokenzier: unknown key (did you mean 'tokenizer'?); allowed: name, "
     "num_visual_tokens, t5, tokenizer, vision, visual_positions"),
    ("model-missing", "model: {vision: resnet10t}", "model: needs t5"),
    ("model-visual-tokens", "model: {t5: t5-small, vision: resnet10t, num_visual_tokens: 0}",
     "model.num_visual_tokens: must be >= 1, got 0"),
    ("t5-typo", "model: {t5: {d_model: 32, num_head: 4}, vision: resnet10t}",
     "model.t5.num_head: unknown key (did you mean 'num_heads'?); T5Config fields: ..."),
    ("t5-type", "model: {t5: {d_model: 32, dropout_rate: high}, vision: resnet10t}",
     "model.t5.dropout_rate: expected float, got 'high'"),
    ("t5-range", "model: {t5: {d_model: 0}, vision: resnet10t}",
     "model.t5.d_model: must be >= 1, got 0"),
    ("t5-nan", "model: {t5: {layer_norm_epsilon: .nan}, vision: resnet10t}",
     "model.t5.layer_norm_epsilon: must be a finite number, got nan"),
    ("t5-from-tokenizer", "model: {t5: {pad_token_id: 3}, vision: resnet10t}",
     "model.t5.pad_token_id: set by dept_vl from the tokenizer; leave it out"),
    ("vision-typo", "model: {t5: t5-small, vision: {model_name: resnet10t, pretrain: true}}",
     "model.vision.pretrain: unknown key (did you mean 'pretrained'?); VisionConfig fields: "
     "image_size, model_kwargs, model_name, pretrained, weights_file"),
    ("vision-missing-name", "model: {t5: t5-small, vision: {image_size: 32}}",
     "model.vision: needs model_name"),
    ("vision-type", "model: {t5: t5-small, vision: {model_name: resnet10t, image_size: big}}",
     "model.vision.image_size: expected int | None, got 'big'"),
    # nested: corpus
    ("corpus-missing-dir", "corpus: {n_images: 40}", "corpus: needs dir"),
    ("corpus-range", "corpus: {dir: runs/s, n_images: 0}", "corpus.n_images: must be >= 1, got 0"),
    ("corpus-image-size", "corpus: {dir: runs/s, image_size: 4}",
     "corpus.image_size: must be >= 16, got 4"),
    # data-file entries
    ("data-typo", "train_file: {path: a.jsonl, formt: jsonl}",
     "train_file.formt: unknown key (did you mean 'format'?); allowed: annotations, "
     "check_images, column_map, format, image_dir, path, split, task"),
    ("data-list-typo", "eval_file: [a.jsonl, {path: b.jsonl, tsk: vqa}]",
     "eval_file[1].tsk: unknown key (did you mean 'task'?); allowed: ..."),
    ("data-no-path", "test_file: {format: jsonl}", "test_file: needs path"),
    ("data-number", "train_file: 12",
     "train_file: expected a path, a mapping with path: and load options, or a list of those, "
     "got 12"),
    ("data-nested-list", "train_file: [[a.jsonl]]",
     "train_file[0]: expected a path, a mapping with path: and load options, or a list of "
     "those, got ['a.jsonl']"),
    ("data-path-type", "train_file: {path: [a.jsonl]}",
     "train_file.path: expected str, got ['a.jsonl']"),
    ("data-empty-path", "train_file: ''", "train_file: must not be empty"),
    ("data-format", "train_file: {path: a.csv, format: xlsx}",
     "train_file.format: must be one of ('auto', ..."),
    ("data-task", "train_file: {path: a.jsonl, task: gqa}",
     "train_file.task: must be one of ('vqa', 'caption'), got 'gqa'"),
    ("data-column-map", "train_file: {path: a.csv, column_map: {question: 3}}",
     "train_file.column_map: expected dict[str, str] | None, got {'question': 3}"),
    ("data-check-images", "train_file: {path: a.jsonl, check_images: maybe}",
     "train_file.check_images: expected bool, got 'maybe'"),
    # tasks and jobs
    ("task-key", "tasks: {color: {train_file: a.jsonl, question_type: [color]}}",
     "tasks.color.question_type: unknown key (did you mean 'question_types'?); allowed: "
     "eval_file, question_types, task, test_file, train_file"),
    ("task-no-train", "tasks: {color: {task: vqa}}", "tasks.color: needs train_file"),
    ("task-name", "tasks: {my-task: {train_file: a.jsonl}}",
     "tasks.my-task: task names must be identifiers (adapter names)"),
    ("task-data-typo", "tasks: {cap: {train_file: [{path: a.jsonl, image_dri: img}]}}",
     "tasks.cap.train_file[0].image_dri: unknown key (did you mean 'image_dir'?); allowed: ..."),
    ("job-typo", "jobs: {vqa: {max_step: 3}}",
     "jobs.vqa.max_step: unknown key (did you mean 'max_steps'?); config keys: ..."),
    ("job-output-dir", "jobs: {vqa: {output_dir: x}}",
     "jobs.vqa.output_dir: a job cannot set output_dir or jobs (it writes to "
     "<output_dir>/<job name>)"),
    ("job-name", "jobs: {a/b: {task: vqa}}",
     "jobs.a/b: job names must be folder names (the job writes to <output_dir>/<job name>)"),
    ("job-not-mapping", "jobs: {vqa: 3}", "jobs.vqa: expected a mapping, got 3"),
    ("job-deep-t5", "jobs: {a: {model: {t5: {d_modle: 8}, vision: resnet10t}}}",
     "jobs.a.model.t5.d_modle: unknown key (did you mean 'd_model'?); T5Config fields: ..."),
    ("job-deep-data", "jobs: {a: {tasks: {b: {train_file: {path: x, split: [1]}}}}}",
     "jobs.a.tasks.b.train_file.split: expected str | None, got [1]"),
    # YAML itself
    ("yaml-bracket", "method: dept\nquestion_types: [color\nmax_steps: 3",
     "line 3, column 10: invalid YAML: expected ',' or ']', but got ':'"),
    ("yaml-indent", "method: dept\n  rank: 3: 4",
     "line 2, column 7: invalid YAML: mapping values are not allowed here"),
    ("yaml-tab", "method: dept\n\trank: 3",
     "line 2, column 1: invalid YAML: found character '\\t' that cannot start any token"),
    ("yaml-quote", "output_dir: 'runs/x\nrank: 3",
     "line 3, column 1: invalid YAML: found unexpected end of stream"),
    ("yaml-twice", "rank: 3\nmethod: pt\nrank: 4",
     "line 3, column 1: invalid YAML: key 'rank' given twice (first on line 1)"),
    ("yaml-twice-nested", "model:\n  t5: {d_model: 8, d_model: 16}\n  vision: x",
     "line 2, column 20: invalid YAML: key 'd_model' given twice (first on line 2)"),
    ("yaml-python-tag", "seed: !!python/object:os.system ls",
     "line 1, column 7: invalid YAML: could not determine a constructor for the tag "
     "'tag:yaml.org,2002:python/object:os.system'"),
    ("yaml-top-list", "- method: dept", "top level must be a mapping of keys to values"),
    ("yaml-top-key", "max_step: 3\n1: 2",
     "unknown keys ['1', 'max_step']; known keys: adapter_per_task, ..."),
]


def _check_message(message: str, source: str, expected: str) -> None:
    assert "\n" not in message
    full = f"{source}: {expected}"
    if expected.endswith("..."):
        assert message.startswith(full[:-3]), message
    else:
        assert message == full


def _error(load) -> str:
    with pytest.raises(ConfigError) as caught:
        load()
    return str(caught.value)


@pytest.mark.parametrize("text, expected", [case[1:] for case in FILE_CASES],
                         ids=[case[0] for case in FILE_CASES])
def test_bad_config_file(tmp_path, text, expected):
    file = tmp_path / "bad.yaml"
    file.write_text(text + "\n")
    _check_message(_error(lambda: load_config(file)), str(file), expected)


def test_not_utf8_names_the_file_and_byte(tmp_path):
    file = tmp_path / "latin1.yaml"
    file.write_bytes("output_dir: caf\u00e9\n".encode("latin-1"))
    assert _error(lambda: load_config(file)) == f"{file}: not UTF-8 text (byte 15)"


CLI_CASES = [
    ("cli-nan", ["--method.alpha", "nan"], "method.alpha: must be a finite number, got 'nan'"),
    ("cli-nan-yaml", ["--method.lr.prompt=.nan"],
     "method.lr.prompt: must be a finite number, got nan"),
    ("cli-flat", ["--rank", "3"], "rank: moved to method.rank: ..."),
    ("cli-method-key", ["--method", "pt", "--method.rank", "3"],
     "method.rank: unknown key; method pt's keys: ..."),
    ("cli-inf", ["--max_grad_norm", "inf"], "max_grad_norm: must be a finite number, got 'inf'"),
    ("cli-zero-steps", ["--save_steps", "0"], "save_steps: must be >= 1, got 0"),
    ("cli-type", ["--eval_steps", "1e3"], "eval_steps: expected int, got '1e3'"),
    ("cli-unknown", ["--max_step", "3"], "unknown keys ['max_step']; known keys: ..."),
    ("cli-choice", ["--on_bad_data", "warn"],
     "on_bad_data: must be one of ('error', 'skip'), got 'warn'"),
    ("cli-t5", ["--model", "{t5: {d_modle: 8}, vision: resnet10t}"],
     "model.t5.d_modle: unknown key (did you mean 'd_model'?); T5Config fields: ..."),
    ("cli-data", ["--train_file", "[a.jsonl, {path: b.jsonl, formt: csv}]"],
     "train_file[1].formt: unknown key (did you mean 'format'?); allowed: ..."),
    ("cli-yaml", ["--model", "{t5: [}"],
     "model: invalid YAML '{t5: [}' (expected the node content, but found '}')"),
    ("cli-jobs", ["--jobs", "{a: {lr_projection: -1}}"],
     "jobs.a.lr_projection: must be > 0, got -1.0"),
]


@pytest.mark.parametrize("argv, expected", [case[1:] for case in CLI_CASES],
                         ids=[case[0] for case in CLI_CASES])
def test_bad_command_line_override(argv, expected):
    message = _error(lambda: load_config(None, parse_overrides(argv)))
    _check_message(message, "command line", expected)


# ---------------------------------------------------------------- seeded typos at every level
TYPO_SITES = [  # (config with {key} where the typo goes, key path prefix, the real key)
    ("model: {{t5: {{{key}: 32}}, vision: resnet10t}}", "model.t5.", "d_model"),
    ("model: {{t5: t5-small, vision: {{model_name: x, {key}: 32}}}}", "model.vision.",
     "image_size"),
    ("corpus: {{dir: x, {key}: 40}}", "corpus.", "n_images"),
    ("train_file: [a.jsonl, {{path: b, {key}: jsonl}}]", "train_file[1].", "format"),
    ("tasks: {{t: {{train_file: a, {key}: [color]}}}}", "tasks.t.", "question_types"),
    ("jobs: {{j: {{{key}: 3}}}}", "jobs.j.", "max_steps"),
    ("jobs: {{j: {{eval_file: {{path: a, {key}: img}}}}}}", "jobs.j.eval_file.", "image_dir"),
    ("{key}: 3", "", "warmup_steps"),
]


def _typo(word: str, rng: random.Random) -> str:
    """`word` with one letter dropped, doubled or swapped with its neighbour."""
    i = rng.randrange(1, len(word) - 1)
    return rng.choice([word[:i] + word[i + 1:], word[:i] + word[i] + word[i:],
                       word[:i - 1] + word[i] + word[i - 1] + word[i + 1:]])


@pytest.mark.parametrize("seed", range(len(TYPO_SITES) * 2))
def test_seeded_typo_is_named_with_its_path(tmp_path, seed):
    template, prefix, real = TYPO_SITES[seed % len(TYPO_SITES)]
    typo = _typo(real, random.Random(seed))
    if typo == real:  # a swap of two equal letters: no typo to find
        typo = real + "s"
    file = tmp_path / "typo.yaml"
    file.write_text(template.format(key=typo) + "\n")
    message = _error(lambda: load_config(file))
    if prefix:
        _check_message(message, str(file), f"{prefix}{typo}: unknown key (did you mean "
                                           f"{real!r}?); ...")
    else:
        _check_message(message, str(file), f"unknown keys [{typo!r}]; known keys: ...")


# ---------------------------------------------------------------- through train.py's entry point
@pytest.mark.parametrize("text, argv, expected", [
    ("lr_projection: .nan", [], "{file}: lr_projection: must be a finite number, got nan"),
    ("model: {t5: {d_modle: 8}, vision: resnet10t}", [],
     "{file}: model.t5.d_modle: unknown key (did you mean 'd_model'?); T5Config fields: ..."),
    ("method: dept\ntrain_file: [a\n", [],
     "{file}: line 4, column 1: invalid YAML: expected ',' or ']', but got '<stream end>'"),
    ("jobs: {vqa: {train_file: {path: a, formt: x}}}", [],
     "{file}: jobs.vqa.train_file.formt: unknown key (did you mean 'format'?); allowed: ..."),
    ("method: dept", ["--eval_steps", "0"], "command line: eval_steps: must be >= 1, got 0"),
    ("method: dept", ["--method.lr.lowrank", "-1e-3"],
     "command line: method.lr.lowrank: must be > 0, got -0.001"),
], ids=["nan", "t5-typo", "yaml-syntax", "job-data-typo", "override-zero", "override-negative"])
def test_bad_config_through_train_cli_is_one_line_exit_2(tmp_path, capsys, text, argv, expected):
    file = tmp_path / "run.yaml"
    file.write_text(text + "\n")
    code = run_cli(dept_vl.cli.train.main, ["--config", str(file), *argv])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.splitlines()
    assert len(lines) == 1
    head, _, message = lines[0].partition("dept_vl: error: ")
    assert head == ""
    expected = expected.replace("{file}", str(file))
    source, _, rest = expected.partition(": ")
    _check_message(message, source, rest)


# ---------------------------------------------------------------- valid configs load
VALID = [
    ("empty", "", {"method_name": "dept"}),
    ("null", "~", {"method_name": "dept"}),
    ("text-numbers", "lr_projection: 1e-4\nmethod: {name: dept, lr: {prompt: '0.3'}, alpha: 8}",
     {"lr_projection": 1e-4, "method": {"name": "dept", "prompt_length": 60,
                                        "prompt_init": "vocab", "prompt_init_text": None,
                                        "rank": 30, "alpha": 8.0,
                                        "lr": {"prompt": 0.3, "lowrank": 1e-4}}}),
    ("edges", "max_steps: 0\nmax_grad_norm: 0\nweight_decay: 0\n"
              "checkpoints_total_limit: 0\nseed: 0\nmethod: {name: dept, rank: 0}\n"
              "num_threads: null",
     {"max_steps": 0, "num_threads": None}),
    ("lora-edges", "method: {name: lora, lora_dropout: 0.99, lr: 1}",
     {"method": {"name": "lora", "lora_rank": 8, "lora_alpha": 16.0, "lora_dropout": 0.99,
                 "target_modules": ["q", "v"], "lr": {"lora": 1.0}}}),
    ("model", "model:\n  t5: {d_model: 32, layer_norm_epsilon: 1e-6, tie_word_embeddings: false,"
              " num_decoder_layers: null}\n  vision: {model_name: test_vit, image_size: 32,"
              " model_kwargs: {drop_rate: 0.0}}\n  num_visual_tokens: 4",
     {"model": {"t5": {"d_model": 32, "layer_norm_epsilon": 1e-6, "tie_word_embeddings": False,
                       "num_decoder_layers": None},
                "vision": {"model_name": "test_vit", "image_size": 32,
                           "model_kwargs": {"drop_rate": 0.0}},
                "num_visual_tokens": 4}}),
    ("data", "train_file: [a.jsonl, {path: b.parquet, format: hf, task: caption, image_dir: img,"
             " column_map: {image: file}, check_images: false}]\neval_file: {path: c}\n"
             "on_bad_data: skip",
     {"on_bad_data": "skip", "eval_file": {"path": "c"}}),
    ("anchors", "train_file: &t {path: a.jsonl, format: jsonl}\neval_file: {<<: *t, path: b.jsonl}",
     {"eval_file": {"path": "b.jsonl", "format": "jsonl"}}),
    ("tasks-jobs", "tasks: {color: {task: vqa, train_file: a, question_types: [color]}}\n"
                   "jobs: {one: {method: {lr: {prompt: 0.1}}}, two: {corpus: {dir: x, "
                   "n_images: 2}}}",
     {"jobs": {"one": {"method": {"lr": {"prompt": 0.1}}},
               "two": {"corpus": {"dir": "x", "n_images": 2}}}}),
]


@pytest.mark.parametrize("text, wanted", [case[1:] for case in VALID],
                         ids=[case[0] for case in VALID])
def test_valid_config_loads(tmp_path, text, wanted):
    file = tmp_path / "good.yaml"
    file.write_text(text + "\n")
    cfg = load_config(file)
    assert {key: getattr(cfg, key) for key in wanted} == wanted
    for name in cfg.jobs:
        assert cfg.for_job(name).output_dir.endswith(name)
