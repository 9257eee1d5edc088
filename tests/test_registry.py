"""Adapters saved by dept_vl 0.1 (before the method registry) load with today's code and give
the outputs 0.1 gave: tests/fixtures/adapters_v0_1/, written by
tests/fixtures/make_adapters_v0_1.py on commit 0155a8a."""

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from PIL import Image
from safetensors.torch import load_file

from dept_vl.methods.dept import DePTConfig
from dept_vl.methods.pt import PTConfig
from dept_vl.model import ADAPTER_CONFIG, ADAPTER_WEIGHTS

FIXTURE = Path(__file__).parent / "fixtures" / "adapters_v0_1"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
NAMES = ("dept_vqa", "pt_caption")


def images() -> list[Image.Image]:
    return [Image.open(FIXTURE / path).convert("RGB") for path in EXPECTED["images"]]


@torch.no_grad()
def outputs(model) -> tuple[dict, dict]:
    """What expected.json records, computed by this code: generations and forward losses."""
    pictures, questions = images(), EXPECTED["questions"]
    mixed = EXPECTED["generate"]["mixed"]["adapters"]
    cut = {"max_new_tokens": EXPECTED["max_new_tokens"]}
    generations = {"dept_vqa": model.generate(pictures, questions, adapter="dept_vqa", **cut),
                   "pt_caption": model.generate(pictures, adapter="pt_caption", **cut),
                   "mixed": model.generate(pictures, questions, adapter=mixed, **cut)}
    losses = {}
    for key, spec in EXPECTED["loss"].items():
        names = spec["adapters"]
        encoded = model.tokenize(spec["inputs"], 24)
        labels = model.tokenize(spec["targets"], 48)["input_ids"]
        labels[labels == model.tokenizer.pad_token_id] = -100
        losses[key] = float(model(encoded["input_ids"], encoded["attention_mask"],
                                  model.vision.preprocess(pictures), labels=labels,
                                  adapter=names[0] if len(set(names)) == 1 else names).loss)
    return generations, losses


def check_outputs(model) -> None:
    generations, losses = outputs(model)
    assert generations["dept_vqa"] == EXPECTED["generate"]["dept_vqa"]
    assert generations["pt_caption"] == EXPECTED["generate"]["pt_caption"]
    assert generations["mixed"] == EXPECTED["generate"]["mixed"]["answers"]
    for key, value in losses.items():
        assert value == pytest.approx(EXPECTED["loss"][key]["value"], abs=1e-6, rel=0), key


def legacy_model():
    model = tiny_model("test_vit").eval()
    # the fixture's adapters belong to this exact backbone; a changed tiny backbone (conftest,
    # timm, torch's RNG) would make every comparison below meaningless
    assert model.backbone_fingerprint() == EXPECTED["backbone_fingerprint"], \
        "tests/conftest.py tiny_model('test_vit') no longer builds the fixture's backbone"
    return model


def test_adapters_saved_by_v0_1_load_with_identical_outputs(tmp_path):
    model = legacy_model()
    for name in NAMES:
        assert model.load_adapter(FIXTURE / name) == name  # strict: the fingerprint matches
    dept, pt = (model.get_adapter(name).config for name in NAMES)
    assert dept == DePTConfig(prompt_length=3, rank=2, max_length=24, task="vqa")
    assert pt == PTConfig(prompt_length=4, max_length=24, task="caption")  # 0.1: rank 0
    check_outputs(model)

    # today's save of what it loaded, loaded again by a fresh process's model, the same
    for name in NAMES:
        model.save_adapter(name, tmp_path / name)
        old, new = load_file(FIXTURE / name / ADAPTER_WEIGHTS), load_file(
            tmp_path / name / ADAPTER_WEIGHTS)
        assert sorted(old) == sorted(new)  # the weights keep 0.1's names, bit for bit
        assert all(torch.equal(old[key], new[key]) for key in old)
        check_config_kept(FIXTURE / name / ADAPTER_CONFIG, tmp_path / name / ADAPTER_CONFIG)
    again = legacy_model()
    for name in NAMES:
        again.load_adapter(tmp_path / name)
    check_outputs(again)


def check_config_kept(old_file: Path, new_file: Path) -> None:
    """Today's adapter_config.json keeps 0.1's values; what changed is the task's key (`task`
    for 0.1's `task_prefix`), for PT the rank 0 / alpha that 0.1 wrote for it, and the
    fingerprint: 0.1 hashed the base projection too, which an adapter with a projection of its
    own does not use (both are accepted on loading)."""
    old, new = json.loads(old_file.read_text()), json.loads(new_file.read_text())
    renamed = {"task_prefix", "backbone_fingerprint"} | (
        {"rank", "alpha"} if old["method"] == "pt" else set())
    for key in sorted(set(old) - renamed):
        assert new[key] == old[key], f"{new_file}: key {key!r}"
    assert new["task"] == {"vqa:": "vqa", "caption:": "caption"}[old["task_prefix"]]
    assert old["train_projection"] and old["backbone_fingerprint"] == legacy_model(
        ).backbone_fingerprint() != new["backbone_fingerprint"] == legacy_model(
        ).backbone_fingerprint(projection=False)


def test_legacy_files_are_refused_when_damaged(tmp_path):
    """The 0.1 reader's checks still hold for 0.1 files: a PT file with a rank is not PT."""
    target = tmp_path / "pt_caption"
    target.mkdir()
    for file in (ADAPTER_WEIGHTS, "README.md"):
        (target / file).write_bytes((FIXTURE / "pt_caption" / file).read_bytes())
    meta = json.loads((FIXTURE / "pt_caption" / ADAPTER_CONFIG).read_text())
    (target / ADAPTER_CONFIG).write_text(json.dumps({**meta, "rank": 2}))
    with pytest.raises(ValueError, match=f"{target / ADAPTER_CONFIG}.*rank"):
        legacy_model().load_adapter(target)
