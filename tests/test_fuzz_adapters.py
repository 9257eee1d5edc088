"""Fuzz suite, adapters and backbones on disk (issue 10, findings 4, 5 and 9): damaged or
hand-edited adapter and backbone folders, each refused with one exact error type (a UserError)
whose one-line message names the file and the key or tensor; a few go through the evaluate
command line (exit 2, one stderr line). Every case is deterministic (seeded bytes)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import load_file, save_file

import dept_vl.cli.eval
from conftest import tiny_model
from dept_vl import DePTConfig, VLT5
from dept_vl.errors import BackboneError, UserError, one_line, run_cli
from dept_vl.model import AdapterError, AdapterMismatchError, AdapterNotFoundError

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"


# ---------------------------------------------------------------------------- damage
def set_key(file: str, key: str, value) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        values = json.loads((folder / file).read_text())
        values[key] = value
        (folder / file).write_text(json.dumps(values))
    return damage


def drop_key(file: str, key: str) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        values = json.loads((folder / file).read_text())
        del values[key]
        (folder / file).write_text(json.dumps(values))
    return damage


def write(file: str, data: bytes) -> Callable[[Path], None]:
    return lambda folder: (folder / file).write_bytes(data)


def garbage(file: str, seed: int) -> Callable[[Path], None]:
    return write(file, random.Random(seed).randbytes(300))


def truncate(file: str, keep: float) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        data = (folder / file).read_bytes()
        (folder / file).write_bytes(data[:int(len(data) * keep)])
    return damage


def remove(file: str) -> Callable[[Path], None]:
    return lambda folder: (folder / file).unlink()


def edit_tensors(file: str, edit: Callable[[dict[str, torch.Tensor]], None]
                 ) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        tensors = load_file(folder / file)
        edit(tensors)
        save_file(tensors, folder / file)
    return damage


def poke(key: str, value: float) -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(tensors):
        tensors[key].view(-1)[0] = value
    return edit


def both(*damages: Callable[[Path], None]) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        for one in damages:
            one(folder)
    return damage


# ---------------------------------------------------------------------------- adapter cases
REQUIRED = ["method", "prompt_length", "rank", "max_length", "alpha", "d_model", "task",
            "train_projection", "backbone_fingerprint"]

# id: (damage, exact error type, file named, what else the message names)
ADAPTER_CASES = {
    **{f"config-without-{key}": (drop_key(CONFIG, key), AdapterError, CONFIG, f"'{key}'")
       for key in REQUIRED},
    "alpha-string": (set_key(CONFIG, "alpha", "8"), AdapterError, CONFIG, "alpha:"),
    "alpha-nan": (set_key(CONFIG, "alpha", float("nan")), AdapterError, CONFIG, "alpha:"),
    "alpha-negative": (set_key(CONFIG, "alpha", -8.0), AdapterError, CONFIG, "alpha:"),
    "alpha-null": (set_key(CONFIG, "alpha", None), AdapterError, CONFIG, "alpha:"),
    "rank-negative": (set_key(CONFIG, "rank", -2), AdapterError, CONFIG, "rank:"),
    "rank-float": (set_key(CONFIG, "rank", 2.5), AdapterError, CONFIG, "rank:"),
    "prompt-length-string": (set_key(CONFIG, "prompt_length", "3"), AdapterError, CONFIG,
                             "prompt_length:"),
    "max-length-bool": (set_key(CONFIG, "max_length", True), AdapterError, CONFIG,
                        "max_length:"),
    "d-model-zero": (set_key(CONFIG, "d_model", 0), AdapterError, CONFIG, "d_model:"),
    "d-model-other": (set_key(CONFIG, "d_model", 48), AdapterMismatchError, CONFIG, "d_model=48"),
    "task-unknown": (set_key(CONFIG, "task", "ocr"), AdapterError, CONFIG, "task:"),
    "task-list": (set_key(CONFIG, "task", ["vqa"]), AdapterError, CONFIG, "task:"),
    "train-projection-string": (set_key(CONFIG, "train_projection", "yes"), AdapterError,
                                CONFIG, "train_projection:"),
    "extra-list": (set_key(CONFIG, "extra", [1, 2]), AdapterError, CONFIG, "extra:"),
    "prompt-init-unknown": (set_key(CONFIG, "prompt_init", "zeros"), AdapterError, CONFIG,
                            "prompt_init:"),
    "method-unknown": (set_key(CONFIG, "method", "prefix"), AdapterError, CONFIG, "'method'"),
    "method-lora": (set_key(CONFIG, "method", "lora"), AdapterError, CONFIG, "missing key"),
    "method-pt-with-rank": (set_key(CONFIG, "method", "pt"), AdapterError, CONFIG, "'method'"),
    "no-prompt-no-rank": (both(set_key(CONFIG, "prompt_length", 0), set_key(CONFIG, "rank", 0),
                               set_key(CONFIG, "method", "pt")),
                          AdapterError, CONFIG, "prompt_length"),
    "fingerprint-other": (set_key(CONFIG, "backbone_fingerprint", "0123456789abcdef"),
                          AdapterMismatchError, CONFIG, "fingerprint 0123456789abcdef"),
    "config-empty": (write(CONFIG, b""), AdapterError, CONFIG, "empty"),
    "config-bad-json": (write(CONFIG, b'{"method": "dept",'), AdapterError, CONFIG, "line 1"),
    "config-list": (write(CONFIG, b"[1, 2, 3]"), AdapterError, CONFIG, "got a list"),
    "config-garbage": (garbage(CONFIG, seed=11), AdapterError, CONFIG, ""),
    "config-missing": (remove(CONFIG), AdapterNotFoundError, "", CONFIG),
    "weights-missing": (remove(WEIGHTS), AdapterError, WEIGHTS, "missing"),
    "weights-empty": (write(WEIGHTS, b""), AdapterError, WEIGHTS, "0 bytes"),
    "weights-truncated-header": (truncate(WEIGHTS, 0.02), AdapterError, WEIGHTS, "safetensors"),
    "weights-truncated-data": (truncate(WEIGHTS, 0.9), AdapterError, WEIGHTS, "safetensors"),
    "weights-garbage": (garbage(WEIGHTS, seed=12), AdapterError, WEIGHTS, "safetensors"),
    "weights-json-text": (write(WEIGHTS, b'{"prompt_embeddings": [1, 2]}'), AdapterError,
                          WEIGHTS, "safetensors"),
    "weights-nan-prompt": (edit_tensors(WEIGHTS, poke("prompt_embeddings", float("nan"))),
                           AdapterError, WEIGHTS, "tensor prompt_embeddings"),
    "weights-inf-lowrank-a": (edit_tensors(WEIGHTS, poke("lowrank_A", float("-inf"))),
                              AdapterError, WEIGHTS, "tensor lowrank_A"),
    "weights-nan-projection": (edit_tensors(WEIGHTS, poke("visual_projection.linear.bias",
                                                          float("nan"))),
                               AdapterError, WEIGHTS, "tensor visual_projection.linear.bias"),
    "weights-int-dtype": (edit_tensors(WEIGHTS, lambda t: t.update(
        lowrank_B=t["lowrank_B"].long())), AdapterError, WEIGHTS, "tensor lowrank_B"),
    "weights-extra-tensor": (edit_tensors(WEIGHTS, lambda t: t.update(bogus=torch.zeros(2))),
                             AdapterMismatchError, WEIGHTS, "bogus"),
    "weights-missing-tensor": (edit_tensors(WEIGHTS, lambda t: t.pop("lowrank_B")),
                               AdapterMismatchError, WEIGHTS, "lowrank_B"),
    "weights-misshaped": (edit_tensors(WEIGHTS, lambda t: t.update(
        lowrank_A=torch.zeros(7, 2))), AdapterMismatchError, WEIGHTS, "tensor lowrank_A"),
}


@pytest.fixture(scope="module")
def host() -> VLT5:
    return tiny_model("test_vit")


@pytest.fixture(scope="module")
def good_adapter(host, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("good") / "vqa"
    adapter = host.add_adapter("vqa", DePTConfig(prompt_length=3, rank=2, max_length=24,
                                                  task_prefix="vqa:"))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for param in adapter.parameters():
            param.add_(torch.randn(param.shape, generator=generator))
    host.save_adapter("vqa", out)
    return out


def damaged_copy(source: Path, folder: Path, damage: Callable[[Path], None]) -> Path:
    shutil.copytree(source, folder)
    damage(folder)
    return folder


def assert_one_line_error(error: BaseException, kind: type, *names: str) -> str:
    assert type(error) is kind, f"{type(error).__name__}: {error}"
    assert isinstance(error, UserError)
    message = one_line(error)
    for name in names:
        assert name in message, f"{name!r} not in {message!r}"
    return message


@pytest.mark.parametrize("case", sorted(ADAPTER_CASES))
def test_damaged_adapter_is_refused_naming_file_and_key(case, host, good_adapter, tmp_path):
    damage, kind, file, detail = ADAPTER_CASES[case]
    folder = damaged_copy(good_adapter, tmp_path / "vqa", damage)
    with pytest.raises(UserError) as error:
        host.load_adapter(folder, name="case")
    assert_one_line_error(error.value, kind, str(folder / file), detail)
    assert "case" not in host.adapters  # nothing half-loaded


def test_undamaged_copy_loads(host, good_adapter, tmp_path):
    """The cases' baseline: the same copy without damage loads (each case fails by its damage)."""
    folder = damaged_copy(good_adapter, tmp_path / "vqa", lambda _: None)
    assert host.load_adapter(folder, name="case") == "case"
    host.delete_adapter("case")


# ---------------------------------------------------------------------------- backbone cases
MANIFEST = "dept_vl_backbone.json"
VISION = "vision/config.json"

BACKBONE_CASES = {
    "manifest-missing": (remove(MANIFEST), "", MANIFEST),
    "manifest-empty": (write(MANIFEST, b""), MANIFEST, "empty"),
    "manifest-bad-json": (truncate(MANIFEST, 0.5), MANIFEST, "not valid JSON"),
    "manifest-list": (write(MANIFEST, b"[]"), MANIFEST, "got a list"),
    "manifest-visual-tokens-string": (set_key(MANIFEST, "num_visual_tokens", "4"), MANIFEST,
                                      "num_visual_tokens:"),
    "manifest-visual-tokens-not-square": (set_key(MANIFEST, "num_visual_tokens", 5), MANIFEST,
                                          "num_visual_tokens:"),
    "manifest-newer-format": (set_key(MANIFEST, "format_version", 99), MANIFEST,
                              "format_version:"),
    "manifest-metadata-list": (set_key(MANIFEST, "metadata", []), MANIFEST, "metadata:"),
    "vision-config-missing": (remove(VISION), VISION, "missing"),
    "vision-config-garbage": (garbage(VISION, seed=21), VISION, ""),
    "vision-config-unknown-key": (set_key(VISION, "image_sise", 32), VISION, "image_sise:"),
    "vision-config-without-model": (drop_key(VISION, "model_name"), VISION, "'model_name'"),
    "vision-config-unknown-model": (set_key(VISION, "model_name", "vit_nope"), VISION,
                                    "vit_nope"),
    "vision-config-image-size-zero": (set_key(VISION, "image_size", 0), VISION, "image_size:"),
    "vision-weights-truncated": (truncate("vision/model.safetensors", 0.5),
                                 "vision/model.safetensors", "safetensors"),
    "vision-weights-missing-tensor": (edit_tensors("vision/model.safetensors",
                                                   lambda t: t.pop("cls_token")),
                                      "vision/model.safetensors", "cls_token"),
    "projection-garbage": (garbage("projection.safetensors", seed=22), "projection.safetensors",
                           "safetensors"),
    "projection-misshaped": (edit_tensors("projection.safetensors", lambda t: t.update(
        {"linear.bias": torch.zeros(5)})), "projection.safetensors", "linear.bias"),
    "projection-other-weights": (edit_tensors("projection.safetensors", lambda t: t.update(
        {"linear.bias": t["linear.bias"] + 1})), MANIFEST, "backbone_fingerprint"),
    "t5-config-missing": (remove("config.json"), "config.json", "missing"),
    "t5-config-bad-json": (write("config.json", b'{"d_model": 32'), "config.json", "line 1"),
    "t5-weights-missing": (remove("model.safetensors"), "model.safetensors", "missing"),
    "t5-weights-empty": (write("model.safetensors", b""), "model.safetensors", "safetensors"),
    "t5-weights-truncated": (truncate("model.safetensors", 0.7), "model.safetensors",
                             "safetensors"),
    "tokenizer-config-missing": (remove("tokenizer_config.json"), "tokenizer_config.json",
                                 "missing"),
    "tokenizer-vocabulary-garbage": (garbage("tokenizer.json", seed=23), "tokenizer.json", ""),
    "tokenizer-vocabulary-missing": (remove("tokenizer.json"), "tokenizer.json", "missing"),
}


@pytest.fixture(scope="module")
def good_backbone(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("backbone") / "bb"
    tiny_model("test_vit").save_pretrained(out)
    return out


@pytest.mark.parametrize("case", sorted(BACKBONE_CASES))
def test_damaged_backbone_is_a_backbone_error_naming_the_file(case, good_backbone, tmp_path):
    damage, file, detail = BACKBONE_CASES[case]
    folder = damaged_copy(good_backbone, tmp_path / "bb", damage)
    with pytest.raises(UserError) as error:
        VLT5.from_pretrained(folder)
    assert_one_line_error(error.value, BackboneError, str(folder / file), detail)


def test_undamaged_backbone_copy_loads(good_backbone, tmp_path):
    folder = damaged_copy(good_backbone, tmp_path / "bb", lambda _: None)
    assert VLT5.from_pretrained(folder).metadata == {}


# ---------------------------------------------------------------------------- through the CLI
@pytest.fixture(scope="module")
def served(tmp_path_factory) -> tuple[Path, Path]:
    """A backbone and an adapter trained on it, as `python -m dept_vl.evaluate` gets them."""
    out = tmp_path_factory.mktemp("served")
    model = tiny_model("test_vit")
    model.save_pretrained(out / "bb")
    model.add_adapter("vqa", DePTConfig(prompt_length=3, rank=2, max_length=24))
    model.save_adapter("vqa", out / "vqa")
    return out / "bb", out / "vqa"


CLI_CASES = {
    "adapter-alpha-string": ("adapter", set_key(CONFIG, "alpha", "8"), CONFIG, "alpha:"),
    "adapter-without-rank": ("adapter", drop_key(CONFIG, "rank"), CONFIG, "'rank'"),
    "adapter-weights-truncated": ("adapter", truncate(WEIGHTS, 0.5), WEIGHTS, "safetensors"),
    "adapter-weights-nan": ("adapter", edit_tensors(WEIGHTS, poke("lowrank_B", float("nan"))),
                            WEIGHTS, "lowrank_B"),
    "backbone-manifest-missing": ("backbone", remove(MANIFEST), "", MANIFEST),
    "backbone-projection-empty": ("backbone", write("projection.safetensors", b""),
                                  "projection.safetensors", "0 bytes"),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_evaluate_cli_exits_2_with_one_line_naming_the_file(case, served, corpus_dir, tmp_path,
                                                            capsys):
    which, damage, file, detail = CLI_CASES[case]
    backbone, adapter = served
    source = adapter if which == "adapter" else backbone
    folder = damaged_copy(source, tmp_path / source.name, damage)
    paths = {"backbone": backbone, "adapter": adapter, which: folder}
    argv = ["--backbone", str(paths["backbone"]), "--adapter", str(paths["adapter"]),
            "--data", f"{corpus_dir}/val_vqa.jsonl"]
    assert run_cli(dept_vl.cli.eval.main, argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dept_vl: error: "), lines
    assert str(folder / file) in lines[0] and detail in lines[0]
