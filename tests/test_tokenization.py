"""Tokenizers learnt for backbones built here: the byte-level BPE has no unknown token for any
UTF-8 text, keeps T5's special ids, and a backbone built with it trains, saves and loads."""

import json
import random
from pathlib import Path

import pytest

from conftest import TINY_MODEL, split, write_config
from dept_vl import VLT5
from dept_vl.config import ConfigError, TrainConfig
from dept_vl.tokenization import build_byte_bpe_tokenizer, build_word_tokenizer
from dept_vl.train import main

CORPUS = ["vqa: what color is the circle?", "vqa: is there a red square?", "yes", "no", "red",
          "caption: a red circle left of a blue square"] * 20


def random_unicode(rng: random.Random, length: int) -> str:
    """Code points from every plane in use (surrogates excluded: not valid UTF-8)."""
    ranges = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF),
              (0x900, 0x97F), (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3),
              (0x1F300, 0x1FAFF), (0x10000, 0x1000F), (0xE000, 0xF8FF), (0x0, 0x1F)]
    return "".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(length))


def test_byte_bpe_has_no_unknown_token_for_any_utf8_text():
    tokenizer = build_byte_bpe_tokenizer(CORPUS, vocab_size=300)
    normalize = tokenizer.backend_tokenizer.normalizer.normalize_str
    rng = random.Random(0)
    for _ in range(300):
        text = random_unicode(rng, rng.randint(1, 40))
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.unk_token_id not in ids, repr(text)
        assert tokenizer.decode(ids, skip_special_tokens=True).strip() == normalize(text).strip()


def test_the_word_tokenizer_it_replaces_loses_those_words():
    word = build_word_tokenizer(CORPUS)
    assert word.unk_token_id in word("does the picture not contain a magenta hexagon?")["input_ids"]


def test_byte_bpe_keeps_t5_special_ids_and_frequent_words_whole():
    tokenizer = build_byte_bpe_tokenizer(CORPUS, vocab_size=300)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer("what color is the circle?")["input_ids"][-1] == 1  # eos
    assert len(tokenizer("red")["input_ids"]) == 2  # one token and eos
    assert len(tokenizer) <= 300


def test_a_model_tokenizer_spec_is_checked_when_read():
    with pytest.raises(ConfigError, match="kind"):
        TrainConfig(model={**TINY_MODEL, "tokenizer": {"kind": "bytes"}})
    with pytest.raises(ConfigError, match="vocab_size"):
        TrainConfig(model={**TINY_MODEL, "tokenizer": {"kind": "byte_bpe", "vocab_size": 100}})


def test_a_backbone_with_a_byte_bpe_tokenizer_trains_and_reads_any_word(tmp_path, corpus_dir):
    config = write_config(
        tmp_path / "backbone.yaml", method="full", task="vqa", output_dir=str(tmp_path / "run"),
        model={**TINY_MODEL, "tokenizer": {"kind": "byte_bpe", "vocab_size": 300}},
        train_file=split(corpus_dir, "train", "vqa"), test_file=split(corpus_dir, "val", "vqa"),
        max_steps=2, batch_size=8, max_length=24, save_steps=100, warmup_steps=1,
        on_unknown_tokens="error")
    main(["--config", config])
    report = json.loads(Path(tmp_path, "run", "tokenizer_coverage.json").read_text())
    assert all(side["with_unknown"] == 0 for split_ in report.values() for side in split_.values())
    model = VLT5.from_pretrained(tmp_path / "run" / "model")
    ids = model.tokenizer("does the picture not contain a zyzzyva?")["input_ids"]
    assert model.tokenizer.unk_token_id not in ids
    assert len(model.tokenizer) <= 300
