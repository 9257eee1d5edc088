"""The contract every registered adapter method keeps (dept_vl/methods/base.py), checked for
each method in `dept_vl.methods.METHODS` (kinds "prompt" and "weights"): registering a method
is enough for it to be tested here. Each method's shape comes from its own
`config_class.from_train_config` on a small method block, so a new method needs no edit here.

A toy method defined in this file, "prompt with a fixed scale", goes through the same
contract; `test_a_new_method_is_two_classes_and_a_register_call` shows what it needed, and
`test_the_toy_method_trains_from_yaml_and_the_command_line_with_its_own_settings` trains it.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, fields
from pathlib import Path

import pytest
import torch
from conftest import small_block, split, tiny_model, write_config
from PIL import Image
from safetensors.torch import load_file, save_file

import dept_vl
from dept_vl.training import transfer
from dept_vl.training.config import ConfigError, TrainConfig
from dept_vl.methods import METHODS, get_method, register, unregister
from dept_vl.methods.base import check_number, group
from dept_vl.methods.pt import PTConfig, SoftPrompt
from dept_vl.model import ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterError, AdapterMismatchError

IMAGES = Path(__file__).parent / "fixtures" / "adapters_v0_1" / "images"
QUESTIONS = ["what color is the circle ?", "how many objects are there ?",
             "is there a red square ?", "what shape is the blue object ?"]
ANSWERS = ["red", "two", "yes", "triangle"]
LRS = defaultdict(lambda: 1e-2)  # every learning-rate role a method may name
CUT = {"max_new_tokens": 4}  # generations: short, the tiny backbone repeats itself


# ---------------------------------------------------------------------------- the toy method
@dataclass(kw_only=True)
class ScaledPromptConfig(PTConfig):
    """Prompt tuning whose prompt enters the encoder multiplied by a fixed `prompt_scale`."""

    method = "scaled_prompt"
    lr_roles = {"scaled": 5e-2}  # its own learning-rate role
    prompt_scale: float = 0.5  # the prompt enters the encoder multiplied by this

    def validate(self) -> None:
        super().validate()
        check_number(self, "prompt_scale")


class ScaledPrompt(SoftPrompt):
    config_class = ScaledPromptConfig

    def param_groups(self, lrs):
        return group("scaled", [self.prompt_embeddings], lrs["scaled"])

    def apply(self, embeds, mask):
        inputs, mask = super().apply(embeds, mask)
        m = self.config.prompt_length
        return torch.cat([self.config.prompt_scale * inputs[:, :m], inputs[:, m:]], 1), mask


TOY = ScaledPromptConfig.method
# read at collection: a method registered by then (built-in or plugin) is in the contract
CONTRACT = [n for n, m in METHODS.items() if m.kind != "backbone"] + [TOY]


@pytest.fixture(params=CONTRACT)
def method(request):
    """A method name; the toy is registered only while its own tests run."""
    if request.param == TOY:
        register(ScaledPrompt)
        yield TOY
        unregister(TOY)
    else:
        yield request.param


# ---------------------------------------------------------------------------- helpers
def small_config(name: str, d_model: int = 32):
    cfg = TrainConfig(method=small_block(name), max_length=24)
    return get_method(name).config_class.from_train_config(cfg, d_model, "vqa")


def add(model, method: str, name: str, seed: int | None = None):
    """Adapter `name` of `method`; with a seed, every weight moved off its initial value (a
    zero-initialised half, DePT's B or LoRA's B, would otherwise hide the other)."""
    adapter = model.add_adapter(name, small_config(method, model.d_model),
                                generator=torch.Generator().manual_seed(seed or 0))
    if seed is not None:
        noise = torch.Generator().manual_seed(seed)
        adapter.assign({k: v + 0.5 * torch.randn(v.shape, generator=noise)
                        for k, v in sorted(adapter.weights().items())})
    return adapter


def images() -> list[Image.Image]:
    return [Image.open(IMAGES / f"{i}.png").convert("RGB") for i in range(4)]


def batch(model, limit: int | None) -> dict[str, torch.Tensor]:
    encoded = model.tokenize([f"vqa: {q}" for q in QUESTIONS], limit)
    labels = model.tokenize(ANSWERS)["input_ids"]
    labels[labels == model.tokenizer.pad_token_id] = -100
    return {**encoded, "labels": labels, "pixel_values": model.vision.preprocess(images())}


@torch.no_grad()
def logits(model, adapter, data) -> torch.Tensor:
    return model(data["input_ids"], data["attention_mask"], data["pixel_values"],
                 labels=data["labels"], adapter=adapter).logits


def saved(model, name: str, directory: Path) -> Path:
    model.save_adapter(name, directory)
    return directory


def adapter_tensor_ids(model) -> set[int]:
    """Storage of every adapter weight (LoRA's live inside T5's modules)."""
    found = {p.data_ptr() for p in model.adapters.parameters()}
    for adapter in model.adapters.values():
        found |= {t.data_ptr() for t in adapter.tuner.weight_refs().values()}
    return found


# ---------------------------------------------------------------------------- the contract
def test_training_changes_only_the_methods_parameters(method):
    model = tiny_model("test_vit").train()
    adapter = add(model, method, "a")
    groups = adapter.tuner.param_groups(LRS) + [
        {"params": list(adapter.projection.parameters()), "lr": 1e-2}]
    trained = {id(p) for g in groups for p in g["params"]}
    assert trained == {id(p) for p in model.parameters() if p.requires_grad}
    ours = adapter_tensor_ids(model)
    backbone = {k: v.clone() for k, v in model.state_dict().items() if v.data_ptr() not in ours}
    before = adapter.weights()
    optimizer = torch.optim.Adam(groups)
    data = batch(model, adapter.tuner.text_limit)
    for _ in range(3):  # zero-initialised halves (B) first move, then their partners (A)
        model(**data, adapter="a").loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in backbone.items())
    changed = adapter.weights()
    assert [k for k in before if torch.equal(before[k], changed[k])] == []


def test_save_load_gives_identical_generations(method, tmp_path):
    model = tiny_model("test_vit").eval()
    adapter = add(model, method, "a", seed=1)
    data = batch(model, adapter.tuner.text_limit)
    expected = model.generate(images(), QUESTIONS, adapter="a", **CUT)
    fresh = tiny_model("test_vit").eval()
    assert fresh.load_adapter(saved(model, "a", tmp_path / "a"), name="b") == "b"
    assert fresh.get_adapter("b").config.to_dict() == adapter.config.to_dict()
    assert fresh.generate(images(), QUESTIONS, adapter="b", **CUT) == expected
    assert torch.equal(logits(fresh, "b", data), logits(model, "a", data))
    assert not torch.allclose(logits(model, None, data), logits(model, "a", data))


def test_mixed_batches_equal_per_example_runs(method):
    model = tiny_model("test_vit").eval()
    add(model, method, "a", seed=1)
    add(model, method, "b", seed=2)
    names = ["a", "b", "a", "b"]
    mixed = model.generate(images(), QUESTIONS, adapter=names, **CUT)
    alone = [model.generate([image], [q], adapter=n, **CUT)[0]
             for image, q, n in zip(images(), QUESTIONS, names)]
    assert mixed == alone
    if get_method(method).kind != "prompt":
        return  # a weights adapter never shares T5's forward: generate splits the batch
    data = batch(model, 24)
    together = logits(model, names, data)
    for i, name in enumerate(names):
        one = {k: v[i:i + 1] for k, v in data.items()}
        torch.testing.assert_close(together[i:i + 1], logits(model, name, one), atol=1e-5,
                                   rtol=1e-4)
    one = {k: v[:1] for k, v in data.items()}  # and the two adapters do differ
    assert not torch.allclose(logits(model, "a", one), logits(model, "b", one), atol=1e-3)


def test_transfer_copies_exactly_the_parts_asked_for(method, tmp_path):
    model = tiny_model("test_vit").eval()
    add(model, method, "source", seed=1)
    source = model.get_adapter("source").weights()
    directory = saved(model, "source", tmp_path / "source")
    target = add(model, method, "target", seed=2)
    start = target.weights()
    assert target.parts == (*get_method(method).parts, "projection")
    for part in target.parts:
        target.assign(start)
        transfer.initialize(model, "target", directory, [part])
        now = target.weights()
        copied = {k for k in now if target.part_of(k) == part}
        assert copied, f"part {part!r} names no tensor"
        for key, value in now.items():
            assert torch.equal(value, source[key] if key in copied else start[key]), (part, key)


def test_reported_budget_is_the_counted_parameters(method, tmp_path):
    model = tiny_model("test_vit")
    adapter = add(model, method, "a")
    counted = sum(t.numel() for t in adapter.tuner.tensors().values())
    assert adapter.tuner.reported_budget() == counted > 0
    try:  # the formula, from the config alone (what budget-matched grids are planned with)
        formula = get_method(method).budget(adapter.config, model.d_model)
    except ValueError:  # allowed where the count depends on the host's layers (LoRA)
        assert get_method(method).kind == "weights"
    else:
        assert formula == counted
    meta = json.loads((saved(model, "a", tmp_path / "a") / ADAPTER_CONFIG).read_text())
    projection = sum(p.numel() for p in adapter.projection.parameters())
    assert meta["trainable_parameters"] == counted + projection


def damaged_copies(source: Path, root: Path, method: str):
    """(folder, file the error must name, what else it must name), one per kind of damage."""
    meta = json.loads((source / ADAPTER_CONFIG).read_text())
    tensors = dict(sorted(load_file(source / ADAPTER_WEIGHTS).items()))
    config_class = get_method(method).config_class
    optional = {n for c in config_class.__mro__ for n in getattr(c, "optional", ())}
    required = ["method", "d_model"] + [f.name for f in fields(config_class)
                                        if f.name not in optional]
    first = next(iter(tensors))
    cases = {"truncated": ("weights", None, ""),
             "wrong_shape": ("weights", {**tensors, first: tensors[first][..., :-1]}, first),
             "nan": ("weights", {**tensors, first: tensors[first] * float("nan")}, first),
             **{f"no_{key}": ("config", {k: v for k, v in meta.items() if k != key}, key)
                for key in required}}
    for case, (kind, content, named) in cases.items():
        folder = root / case
        folder.mkdir()
        for file in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
            (folder / file).write_bytes((source / file).read_bytes())
        if case == "truncated":
            data = (source / ADAPTER_WEIGHTS).read_bytes()
            (folder / ADAPTER_WEIGHTS).write_bytes(data[:len(data) // 2])
        elif kind == "weights":
            save_file({k: v.contiguous() for k, v in content.items()}, folder / ADAPTER_WEIGHTS)
        else:
            (folder / ADAPTER_CONFIG).write_text(json.dumps(content))
        yield folder, folder / (ADAPTER_WEIGHTS if kind == "weights" else ADAPTER_CONFIG), named


def test_damaged_or_mismatched_files_are_refused_naming_the_path(method, tmp_path):
    model = tiny_model("test_vit").eval()
    add(model, method, "a", seed=1)
    source = saved(model, "a", tmp_path / "a")
    keys = set(model.state_dict())
    (tmp_path / "damaged").mkdir()
    for folder, file, named in damaged_copies(source, tmp_path / "damaged", method):
        with pytest.raises(AdapterError, match=re.escape(str(file)) + ".*" + re.escape(named)):
            model.load_adapter(folder, name="b")
        # nothing half-loaded is left behind (LoRA: no layers of "b" inside T5)
        assert "b" not in model.adapters and set(model.state_dict()) == keys, folder.name
    wider = tiny_model("test_vit", d_model=48)
    with pytest.raises(AdapterMismatchError,
                       match=re.escape(str(source / ADAPTER_CONFIG)) + ".*d_model=32"):
        wider.load_adapter(source)
    assert not wider.adapters
    # the refusals left the model as it was: adapter "a" still computes what it did
    again = tiny_model("test_vit").eval()
    again.load_adapter(source, name="a")
    data = batch(model, model.get_adapter("a").tuner.text_limit)
    assert torch.equal(logits(model, "a", data), logits(again, "a", data))


# ---------------------------------------------------------------------------- the toy method
def test_a_new_method_is_two_classes_and_a_register_call(tmp_path):
    """What "prompt with a fixed scale" needed: ScaledPromptConfig and ScaledPrompt (this
    file) and `register(ScaledPrompt)`; no file of dept_vl names it, and the config, adapters,
    files, transfer and training's adapter config all find it through the registry."""
    from dept_vl.training.setup import adapter_config

    assert ScaledPrompt.__module__ == ScaledPromptConfig.__module__ == __name__
    package = Path(dept_vl.__file__).parent
    assert [p for p in package.rglob("*.py") if TOY in p.read_text()] == []
    with pytest.raises(ConfigError, match=TOY):
        TrainConfig(method=TOY)  # unknown before it registers
    register(ScaledPrompt)
    try:
        cfg = TrainConfig(method={"name": TOY, "prompt_length": 4, "prompt_scale": 0.25},
                          max_length=24)
        config = adapter_config(cfg, 32, "vqa")
        assert config == ScaledPromptConfig(prompt_length=4, prompt_scale=0.25, max_length=24,
                                            task="vqa")
        model = tiny_model("test_vit").eval()
        model.add_adapter("toy", config)
        model.load_adapter(saved(model, "toy", tmp_path / "toy"), name="back")
        assert model.get_adapter("back").config == config
        data = batch(model, 24)
        # the scale acts: the same weights as plain prompt tuning give other outputs
        plain = model.add_adapter("plain", PTConfig(prompt_length=4, max_length=24))
        plain.assign(model.get_adapter("toy").weights())
        assert not torch.allclose(logits(model, "toy", data), logits(model, "plain", data))
    finally:
        unregister(TOY)
    assert TOY not in METHODS


def test_the_toy_method_trains_from_yaml_and_the_command_line_with_its_own_settings(
        tmp_path, corpus_dir, backbone, capsys):
    """Its block in a YAML file (its own key prompt_scale, its own learning-rate role), a key
    of it on the command line: both reach the run and the adapter it saves; `--help` lists
    its keys with their documentation; a key it does not have is refused naming it."""
    from dept_vl.cli.train import main
    from dept_vl.training.config_loading import config_help

    config = write_config(
        tmp_path / "toy.yaml", backbone=backbone, task="vqa", output_dir=str(tmp_path / "run"),
        method={"name": TOY, "prompt_length": 3, "prompt_scale": 0.25, "lr": {"scaled": 0.05}},
        train_file=split(corpus_dir, "train", "vqa"), test_file=split(corpus_dir, "val", "vqa"),
        max_length=24, max_steps=2, batch_size=8, save_steps=100, logging_steps=1,
        warmup_steps=0, max_eval_examples=16)
    register(ScaledPrompt)
    try:
        assert ("--method.prompt_scale (default: 0.5)  the prompt enters the encoder multiplied "
                "by this") in config_help()
        with pytest.raises(ConfigError, match=r"command line: method\.rank: unknown key; "
                                              rf"method {TOY}'s keys: "):
            main(["--config", config, "--method.rank", "2"])
        results = main(["--config", config, "--method.prompt_scale", "0.75"])
    finally:
        unregister(TOY)
    assert results[""]["method"] == TOY and 0 <= results[""]["vqa_accuracy"] <= 100
    assert "  group scaled: 96 params, lr 0.05" in capsys.readouterr().out  # 3 tokens x d=32
    meta = json.loads((tmp_path / "run" / "adapter" / ADAPTER_CONFIG).read_text())
    assert (meta["method"], meta["prompt_length"], meta["prompt_scale"]) == (TOY, 3, 0.75)
    settings = json.loads((tmp_path / "run" / "eval_results.json").read_text())["settings"]
    assert settings["method"] == {"name": TOY, "prompt_length": 3, "prompt_init": "vocab",
                                  "prompt_init_text": None, "prompt_scale": 0.75,
                                  "lr": {"scaled": 0.05}}
