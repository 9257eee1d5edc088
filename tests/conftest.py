"""Shared tiny components: a word tokenizer, a tiny T5 config, timm test encoders, a small corpus.

Everything is built locally (no hub), small enough for the whole suite to run in minutes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
import torch
from transformers import T5Config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(2)

from dept_vl.data import shapes  # noqa: E402
from dept_vl.methods.dept import DePTConfig  # noqa: E402
from dept_vl.model import VLT5  # noqa: E402
from dept_vl.tokenization import build_word_tokenizer  # noqa: E402
from dept_vl.vision import VisionConfig  # noqa: E402

WORDS = ("vqa: caption: what color shape is the a an object objects circle square triangle red "
         "green blue yellow purple orange white how many are there one two three four yes no "
         "left of right above below small large size : ?")


def tiny_t5_config(tokenizer, d_model: int = 32) -> T5Config:
    return T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=64, num_layers=2,
        num_decoder_layers=2, num_heads=4, dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0,
    )


def tiny_model(vision: str = "test_vit", d_model: int = 32, seed: int = 0, **kwargs) -> VLT5:
    torch.manual_seed(seed)
    tokenizer = build_word_tokenizer([WORDS])
    return VLT5.from_components(
        tiny_t5_config(tokenizer, d_model), VisionConfig(model_name=vision, image_size=32),
        tokenizer=tokenizer, max_text_length=24, **kwargs,
    )


def mixed_adapter_model(shapes: dict[str, tuple[int, int, int]]) -> VLT5:
    """A tiny model in eval mode with one VQA adapter per {name: (m, r, s)}, each perturbed to
    non-trivial weights (B starts at zero), plus a caption adapter "cap"."""
    model = tiny_model("test_vit").eval()
    for name, (m, r, s) in shapes.items():
        adapter = model.add_adapter(name, DePTConfig(prompt_length=m, rank=r, max_length=s,
                                                     task_prefix="vqa:"))
        with torch.no_grad():
            for param in adapter.parameters():
                param.add_(0.3 * torch.randn_like(param))
    model.add_adapter("cap", DePTConfig(prompt_length=2, rank=2, max_length=24,
                                        task_prefix="caption:"))
    return model


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("shapes")
    shapes.write_corpus(out, n_images=40, seed=3, image_size=32)
    return str(out)


TINY_MODEL = {
    "name": "tiny-test-backbone",
    "t5": {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 2,
           "num_heads": 4, "dropout_rate": 0.0},
    "vision": {"model_name": "test_resnet", "image_size": 32},
}


def split(corpus, name, task):
    return {"path": f"{corpus}/{name}_{task}.jsonl", "task": task}


# small shapes for any method: each key its block has (a new method's own keys keep defaults)
SMALL_SHAPE = {"prompt_length": 3, "rank": 2, "lora_rank": 2, "lora_alpha": 4}


def small_block(method: str) -> dict:
    """A training config's method block for `method` in small shapes."""
    from dept_vl.methods import get_method

    fields = get_method(method).config_class.settings_fields()
    return {"name": method, **{k: v for k, v in SMALL_SHAPE.items() if k in fields}}


def write_config(path: Path, **values) -> str:
    path.write_text(yaml.safe_dump(values))
    return str(path)


@pytest.fixture(scope="session")
def backbone(corpus_dir, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("backbone")
    config = write_config(
        out / "backbone.yaml", method={"name": "full", "lr": 1e-3}, task="vqa", model=TINY_MODEL,
        train_file=[split(corpus_dir, "train", "caption"), split(corpus_dir, "train", "vqa")],
        eval_file=split(corpus_dir, "val", "vqa"), question_types=["color", "shape", "exists"],
        output_dir=str(out), max_steps=4, batch_size=8, eval_steps=4, warmup_steps=1,
        max_length=24, logging_steps=2,
    )
    from dept_vl.cli.train import main

    main(["--config", config])
    return str(out / "model")
