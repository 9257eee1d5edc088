"""Config files and overrides: typed, validated, unknown keys refused; shipped configs parse."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from dept_vl.training.config import ConfigError, TrainConfig
from dept_vl.training.config_loading import load_config, parse_overrides
from dept_vl.training.settings import settings_differences
from dept_vl.cli.train import main

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_cli_overrides_beat_the_file_and_are_typed(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("method: {name: dept, rank: 4, lr: {lowrank: 1e-4}}\nmax_steps: 10\n")
    cfg = load_config(file, parse_overrides(["--max_steps", "20", "--method.lr.prompt=0.4",
                                             "--question_types", "[color, count]", "--dry_run",
                                             "--method.prompt_length", "7"]))
    assert cfg.max_steps == 20 and cfg.method_name == "dept"
    assert cfg.method["lr"] == {"prompt": 0.4, "lowrank": 1e-4}  # rate by rate
    assert (cfg.method["rank"], cfg.method["prompt_length"]) == (4, 7)  # key by key
    assert cfg.question_types == ["color", "count"] and cfg.dry_run is True


def test_the_method_block_is_the_methods_own():
    """A name alone gives that method's defaults; another method's name starts afresh; the
    same method's name keeps the file's block; a string stays text for prompt_init_text."""
    cfg = load_config(CONFIGS / "quickstart.yaml", parse_overrides(["--method", "pt"]))
    assert cfg.method == {"name": "pt", "prompt_length": 60, "prompt_init": "vocab",
                          "prompt_init_text": None, "lr": {"prompt": 0.3}}
    kept = load_config(CONFIGS / "quickstart.yaml", parse_overrides(["--method", "dept"]))
    assert (kept.method["prompt_length"], kept.method["lr"]["lowrank"]) == (12, 5e-3)
    block = load_config(None, parse_overrides(["--method", "{name: lora, lora_rank: 2}",
                                               "--method.lr", "1e-3"])).method
    assert (block["lora_rank"], block["lr"]) == (2, {"lora": 1e-3})
    assert TrainConfig(method="full").method == {"name": "full", "lr": {"backbone": 1e-4}}


def test_unknown_and_mistyped_keys_are_errors_that_name_them(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("max_step: 10\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown keys \['max_step'\]"):
        load_config(file)
    with pytest.raises(ConfigError, match="command line: batch_size: expected"):
        load_config(None, parse_overrides(["--batch_size", "many"]))
    with pytest.raises(ConfigError, match="command line: method.name: must be one of"):
        load_config(None, {"method": "prefix"})
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="unexpected argument"):
        parse_overrides(["max_steps", "3"])


def test_quickstart_has_a_vqa_and_a_caption_job_and_overrides_reach_both():
    cfg = load_config(CONFIGS / "quickstart.yaml", {"method": "pt", "output_dir": "runs/x"})
    assert set(cfg.jobs) == {"vqa", "caption"}
    vqa, caption = cfg.for_job("vqa"), cfg.for_job("caption")
    assert (vqa.task, caption.task) == ("vqa", "caption")
    assert vqa.method_name == caption.method_name == "pt"
    assert vqa.output_dir == str(Path("runs/x/vqa"))
    assert vqa.evaluate_frozen and caption.evaluate_frozen
    from dept_vl.data import shapes
    assert load_config(CONFIGS / "backbone_shapes.yaml").question_types == list(
        shapes.PRETRAIN_TYPES)


@pytest.mark.parametrize("name", ["vqav2_t5base_vit", "coco_t5base_vit"])
def test_gpu_config_builds_with_dry_run_from_local_checkpoints(tmp_path, name):
    """configs/{vqav2,coco}_t5base_vit.yaml name hub checkpoints; here the same config is built
    with local stand-ins for them (the only change), as a user without hub access would check
    it."""
    from conftest import tiny_model
    donor = tiny_model("test_vit")
    donor.t5.save_pretrained(tmp_path / "t5")
    donor.tokenizer.save_pretrained(tmp_path / "t5")
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.method_name == "dept" and cfg.mixed_precision == "bf16"
    model = dict(cfg.model, t5=str(tmp_path / "t5"),
                 vision=dict(cfg.model["vision"], model_name="test_vit", pretrained=False))
    results = main(["--config", str(CONFIGS / f"{name}.yaml"), "--dry_run",
                    "--mixed_precision", "no", "--model", repr(model).replace("'", '"'),
                    "--max_length", "24", "--method.prompt_length", "6", "--method.rank", "3"])
    # DePT(6, 3) at s=24, d=32 + projection (Linear 64→32 + LayerNorm 32)
    assert results[""]["trainable_parameters"] == 6 * 32 + 3 * (24 + 32) + 64 * 32 + 32 + 64


def test_coco_config_is_karpathy_captioning_tested_with_beams_at_the_vqa_budget():
    cfg = load_config(CONFIGS / "coco_t5base_vit.yaml")
    vqa = load_config(CONFIGS / "vqav2_t5base_vit.yaml")
    assert cfg.task == "caption" and cfg.num_beams == 5 and vqa.num_beams is None
    files = [cfg.train_file, cfg.eval_file, cfg.test_file]
    assert [f["split"] for f in files] == ["train", "val", "test"]
    assert {(f["format"], Path(f["path"]).name) for f in files} == {
        ("karpathy", "dataset_coco.json")}
    assert cfg.model == vqa.model  # the same backbone as the VQA setting ...
    assert cfg.method == vqa.method and cfg.max_length == vqa.max_length == 256  # ... and the
    assert (cfg.method["prompt_length"], cfg.method["rank"]) == (60, 30)  # same DePT budget


def test_init_from_takes_a_path_or_a_list_from_the_command_line():
    assert load_config(None, parse_overrides(["--init_from", "runs/a"])).init_from == "runs/a"
    assert load_config(None, parse_overrides(["--init_from", "[runs/a, runs/b]"])).init_from == [
        "runs/a", "runs/b"]
    cfg = load_config(None, parse_overrides(["--init_parts", "[prompt]", "--k_shot", "16"]))
    assert cfg.init_parts == ["prompt"] and cfg.k_shot == 16


# ---------------------------------------------------------------- issue 10: nothing silently wrong
def write(tmp_path, text, name="c.yaml"):
    file = tmp_path / name
    file.write_text(text)
    return file


BAD_NUMBERS = [
    ("lr_projection: -1.0e-4", "lr_projection: must be > 0, got -0.0001"),
    ("lr_projection: .nan", "lr_projection: must be a finite number, got nan"),
    ("method: {name: dept, lr: {prompt: nan}}",
     "method.lr.prompt: must be a finite number, got 'nan'"),
    ("method: {name: dept, lr: {lowrank: .inf}}",
     "method.lr.lowrank: must be a finite number, got inf"),
    ("eval_steps: 0", "eval_steps: must be >= 1, got 0"),
    ("save_steps: 0", "save_steps: must be >= 1, got 0"),
    ("logging_steps: 0", "logging_steps: must be >= 1, got 0"),
    ("max_grad_norm: -1", "max_grad_norm: must be >= 0, got -1.0"),
    ("method: {name: lora, lora_dropout: 1}",
     "method.lora_dropout: must be in [0, 1), got 1.0"),
    ("seed: -3", "seed: must be in [0, 2147483648), got -3"),
    ("max_eval_examples: 0", "max_eval_examples: must be >= 1, got 0"),
]


@pytest.mark.parametrize("text, message", BAD_NUMBERS, ids=[t for t, _ in BAD_NUMBERS])
def test_bad_numbers_are_refused_naming_file_and_key(tmp_path, text, message):
    file = write(tmp_path, text + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(file)
    assert str(caught.value) == f"{file}: {message}"


def test_a_config_built_in_python_gets_the_same_checks():
    with pytest.raises(ConfigError, match=r"^lr_projection: must be a finite number, got nan$"):
        TrainConfig(lr_projection=float("nan"))
    with pytest.raises(ConfigError, match=r"^method\.lr\.prompt: must be a finite number, "
                                          r"got nan$"):
        TrainConfig(method={"name": "pt", "lr": float("nan")})
    with pytest.raises(ConfigError, match=r"^eval_steps: must be >= 1, got 0$"):
        TrainConfig(eval_steps=0)
    with pytest.raises(ConfigError, match=r"^model\.t5\.d_modle: unknown key \(did you mean "
                                          r"'d_model'\?\); T5Config fields: .*\bd_model\b"):
        TrainConfig(model={"t5": {"d_modle": 32}, "vision": "test_vit"})
    with pytest.raises(ConfigError, match=r"^train_file\.formt: unknown key"):
        TrainConfig(train_file={"path": "a.jsonl", "formt": "jsonl"})
    with pytest.raises(ConfigError, match=r"^jobs\.a\.lr_projection: must be > 0, got -1\.0$"):
        TrainConfig(jobs={"a": {"lr_projection": -1}})
    with pytest.raises(ConfigError, match=r"^jobs\.a: method\.lr\.prompt: must be > 0, "):
        TrainConfig(jobs={"a": {"method": {"lr": {"prompt": -1}}}})


def test_on_bad_data_is_error_by_default_or_skip(tmp_path):
    assert TrainConfig().on_bad_data == "error"
    assert load_config(write(tmp_path, "on_bad_data: skip\n")).on_bad_data == "skip"
    assert load_config(None, parse_overrides(["--on_bad_data", "skip"])).on_bad_data == "skip"
    with pytest.raises(ConfigError, match=r"command line: on_bad_data: must be one of "
                                          r"\('error', 'skip'\), got 'drop'"):
        load_config(None, parse_overrides(["--on_bad_data", "drop"]))


@pytest.mark.parametrize("text, message", [
    ("model: {t5: {d_modle: 32}, vision: test_vit}",
     "model.t5.d_modle: unknown key (did you mean 'd_model'?); T5Config fields: "),
    ("model: {t5: {d_model: 32}, vision: {model_name: test_vit, image_sise: 32}}",
     "model.vision.image_sise: unknown key (did you mean 'image_size'?); VisionConfig fields: "
     "image_size, model_kwargs, model_name, pretrained, weights_file"),
    ("train_file: [a.jsonl, {path: b.jsonl, formt: jsonl}]",
     "train_file[1].formt: unknown key (did you mean 'format'?); allowed: annotations, "
     "check_images, column_map, format, image_dir, path, split, task"),
    ("corpus: {dir: runs/shapes, n_image: 40}",
     "corpus.n_image: unknown key (did you mean 'n_images'?); allowed: dir, image_size, "
     "n_images, palette, seed, shapes"),
    ("tasks: {color: {train_file: {path: a.jsonl, image_dri: img}}}",
     "tasks.color.train_file.image_dri: unknown key (did you mean 'image_dir'?); allowed: "),
    ("jobs: {vqa: {eval_step: 5}}",
     "jobs.vqa.eval_step: unknown key (did you mean 'eval_steps'?); config keys: "),
], ids=["t5", "vision", "data-file", "corpus", "tasks", "jobs"])
def test_nested_typos_name_file_and_key_path(tmp_path, text, message):
    file = write(tmp_path, text + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(file)
    assert str(caught.value).startswith(f"{file}: {message}")


def test_t5_mapping_takes_t5config_fields_typed_and_not_the_tokenizers(tmp_path):
    cfg = load_config(write(tmp_path, "model: {t5: {d_model: 32, layer_norm_epsilon: 1e-6, "
                                      "feed_forward_proj: gated-gelu}, vision: test_vit}\n"))
    assert cfg.model["t5"]["layer_norm_epsilon"] == 1e-6  # YAML's text "1e-6" became a float
    for t5, message in [("{d_model: '32'}", "model.t5.d_model: expected int, got '32'"),
                        ("{vocab_size: 9}", "model.t5.vocab_size: set by dept_vl from the "
                                            "tokenizer; leave it out"),
                        ("{feed_forward_proj: gated-gleu}",
                         "model.t5.feed_forward_proj: unknown activation 'gleu'; known: ")]:
        file = write(tmp_path, f"model: {{t5: {t5}, vision: test_vit}}\n")
        with pytest.raises(ConfigError) as caught:
            load_config(file)
        assert str(caught.value).startswith(f"{file}: {message}")


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    file = write(tmp_path, "method: dept\nquestion_types: [color, shape\nmax_steps: 3\n")
    with pytest.raises(ConfigError) as caught:
        load_config(file)
    assert str(caught.value) == (f"{file}: line 3, column 10: invalid YAML: expected ',' or "
                                 "']', but got ':'")


def test_a_key_given_twice_in_yaml_is_an_error(tmp_path):
    file = write(tmp_path, "lr: 1.0e-4\nseed: 0\nlr: 1.0e-3\n")
    with pytest.raises(ConfigError) as caught:
        load_config(file)
    assert str(caught.value) == (f"{file}: line 3, column 1: invalid YAML: key 'lr' given twice "
                                 "(first on line 1)")


def test_jobs_given_on_the_command_line_are_jobs():
    cfg = load_config(None, parse_overrides(["--jobs", "{a: {task: caption}}", "--max_steps", "3"]))
    assert cfg.jobs == {"a": {"task": "caption", "max_steps": 3}}
    assert cfg.for_job("a").task == "caption"


def test_every_shipped_config_and_experiment_cell_loads(tmp_path):
    """The checks refuse no config the repository ships, nor any run its experiments make."""
    from research import experiments

    for name in ("quickstart", "backbone_shapes", "vqav2_t5base_vit", "coco_t5base_vit"):
        cfg = load_config(CONFIGS / f"{name}.yaml")
        assert all(cfg.for_job(job).output_dir for job in cfg.jobs)
    cells = 0
    for name, quick in [(n, q) for n in ("compare_shapes", "fewshot_shapes") for q in (0, 1)]:
        spec = experiments.load_experiment(CONFIGS / f"{name}.yaml", bool(quick), str(tmp_path))
        load_config(spec["backbone"]["config"], spec["backbone"].get("overrides", {}))
        base = experiments.base_values(spec, "runs/backbone")
        for run in spec.get("runs", []):
            run = {k: v for k, v in run.items() if k not in ("name", "seeds")}
            load_config(None, experiments.merged(experiments.merged(base, spec["data"]), run))
            cells += 1
        for target in spec.get("targets", {}).values():
            sources = {"shared": "a", "color": "b"}
            load_config(None, experiments.merged(base, {**spec["sources"], "method": "dept"}))
            for init in experiments.fewshot_inits(spec, "pt", 2, sources).values():
                load_config(None, experiments.merged(base, {**spec["fewshot"], **target, **init,
                                                            "k_shot": 2}))
                cells += 1
    assert cells >= 17  # compare: 6 + 5 quick runs; few-shot: 1 target x 3 inits, twice


def test_a_caller_names_the_source_of_its_overrides():
    """experiments.py passes keys of its own file: errors may name that file, not the command
    line."""
    with pytest.raises(ConfigError, match=r"^exp\.yaml: train: lr_projection: must be > 0, "
                                          r"got -1\.0$"):
        load_config(None, {"lr_projection": -1}, source="exp.yaml: train")
    with pytest.raises(ConfigError, match=r"^exp\.yaml: train: method\.rank: unknown key"):
        load_config(None, {"method": {"name": "pt", "rank": 2}}, source="exp.yaml: train")


def test_outcome_settings_leave_out_bookkeeping_and_differences_name_keys():
    base = TrainConfig(output_dir="runs/a", max_steps=10)
    elsewhere = TrainConfig(output_dir="runs/b", max_steps=10, logging_steps=1, num_workers=2,
                            eval_batch_size=7, save_steps=3, resume_from_checkpoint="latest",
                            on_unknown_tokens="error")
    assert base.outcome_settings() == elsewhere.outcome_settings()
    assert "output_dir" not in base.outcome_settings()
    assert settings_differences(base.outcome_settings(), elsewhere.outcome_settings()) == []
    other = TrainConfig(max_steps=20, method={"name": "dept", "lr": {"prompt": 0.4}, "rank": 2},
                        question_types=["color"])
    assert settings_differences(base.outcome_settings(), other.outcome_settings()) == [
        "max_steps: 10 → 20", "method.lr.prompt: 0.3 → 0.4", "method.rank: 30 → 2",
        "question_types: None → ['color']"]
    # a key the saved side lacks was added since: it counts as its default, what the older
    # version did; at another value it is a difference
    older = {k: v for k, v in base.outcome_settings().items() if k != "num_beams"}
    assert settings_differences(older, base.outcome_settings()) == []
    beams = TrainConfig(max_steps=10, num_beams=3).outcome_settings()
    assert settings_differences(older, beams) == ["num_beams: None → 3"]
    # a key only the saved side has (a newer version's) is shown as missing now
    newer = {**base.outcome_settings(), "brand_new_key": 1}
    assert settings_differences(newer, base.outcome_settings()) == [
        "brand_new_key: 1 → '(not set)'"]


def test_settings_saved_with_flat_method_keys_compare_key_by_key():
    """A checkpoint or grid cell of a version with flat method keys resumes or reads back when
    its settings are today's, and a difference is named by today's key."""
    now = TrainConfig(max_steps=10).outcome_settings()
    flat = {key: value for key, value in now.items() if key != "method"}
    flat.update(method="dept", prompt_length=60, rank=30, alpha=8.0, prompt_init="vocab",
                prompt_init_text=None, pt_prompt_length=None, adept_rank=None,
                adept_dropout=0.0, lora_rank=8, lora_alpha=16, lora_dropout=0.0,
                lora_target_modules=["q", "v"], lr_prompt=0.3, lr_lowrank=1e-4, lr=1e-4)
    assert settings_differences(flat, now) == []
    assert settings_differences({**flat, "lr_prompt": 0.2, "rank": 4}, now) == [
        "method.lr.prompt: 0.2 → 0.3", "method.rank: 4 → 30"]
    lora = TrainConfig(max_steps=10, method={"name": "lora", "lr": 5e-4}).outcome_settings()
    assert settings_differences({**flat, "method": "lora", "lr": 5e-4}, lora) == []


def test_the_eval_sample_seed_matters_only_when_periodic_evaluation_draws_a_sample():
    whole = [TrainConfig(max_eval_examples=None, eval_sample_seed=s).outcome_settings()
             for s in (None, 0)]
    assert settings_differences(*whole) == []
    sampled = [TrainConfig(max_eval_examples=300, eval_sample_seed=s).outcome_settings()
               for s in (None, 0)]
    assert settings_differences(*sampled) == ["eval_sample_seed: None → 0"]
    assert settings_differences(sampled[0], whole[1]) == [
        "eval_sample_seed: None → 0", "max_eval_examples: 300 → None"]


def test_a_config_that_is_not_a_file_is_found_among_the_shipped_ones(tmp_path, monkeypatch):
    """`--config quickstart` and the docs' `configs/compare_shapes.yaml` work from any folder."""
    from dept_vl.training.config_loading import SHIPPED_CONFIGS, find_config, shipped_configs

    monkeypatch.chdir(tmp_path)
    assert find_config("quickstart") == SHIPPED_CONFIGS / "quickstart.yaml"
    assert find_config("configs/compare_shapes.yaml") == SHIPPED_CONFIGS / "compare_shapes.yaml"
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == shipped_configs()
    (tmp_path / "quickstart.yaml").write_text("max_steps: 3\n")
    assert load_config("quickstart.yaml").max_steps == 3  # a file of that name wins
    with pytest.raises(ConfigError, match=r"config file not found: nope\.yaml \(shipped configs: "
                                          r"backbone_shapes, "):
        find_config("nope.yaml")


def test_a_run_named_by_data_flags_uses_the_quickstart_backbone():
    """With no --config the run trains on the backbone the quickstart uses (and builds)."""
    quickstart = yaml.safe_load((CONFIGS / "quickstart.yaml").read_text())
    assert TrainConfig().backbone == quickstart["backbone"]


def test_every_key_has_documentation():
    from dept_vl.training.config_loading import config_help, key_docs

    docs = key_docs()
    assert set(docs) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert all(docs.values()), [k for k, v in docs.items() if not v]
    assert docs["max_steps"] == "optimizer steps"
    assert "---- " not in " ".join(docs.values())  # section titles belong to no key
    shown = config_help()
    assert "  --max_steps (default: 1000)\n      optimizer steps" in shown
    # each method's block keys, documented by its config class (a subclass' comment wins)
    from dept_vl.methods import METHODS
    from dept_vl.training.config_loading import method_keys
    keys = method_keys()
    assert set(keys) == set(METHODS)
    assert keys["dept"]["rank"] == (30, "r: rank of the position-wise update A @ B")
    assert keys["adept"]["rank"][1].startswith("r: hidden width")
    assert keys["dept"]["lr.lowrank"][0] == 1e-4
    assert all(doc for method in keys.values() for _, doc in method.values())
    assert "  --method.rank (default: 30)  r: rank of the position-wise update A @ B" in shown


def test_a_corpus_block_names_its_question_types(tmp_path):
    """`corpus: {types: all}` writes (and recognises) the corpus with relation and compare."""
    from dept_vl.data import shapes
    from dept_vl.training.taskdata import ensure_corpus

    out = tmp_path / "all"
    cfg = load_config(None, {"corpus": {"dir": str(out), "n_images": 10, "seed": 2,
                                        "image_size": 32, "types": "all"}})
    ensure_corpus(cfg)
    assert shapes.corpus_matches(out, n_images=10, seed=2, image_size=32, types="all")
    with pytest.raises(ConfigError, match=r"corpus\.types: must be one of"):
        load_config(None, {"corpus": {"dir": "x", "types": "some"}})
