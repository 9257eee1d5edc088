"""Tokenizers learnt for backbones built here: the byte-level BPE has no unknown token for any
UTF-8 text, keeps T5's special ids, learns the English word list beside its corpus (listed words
are a few pieces, corpus words stay whole), and a backbone built with it trains, saves and loads."""

import json
import random
import tomllib
from fnmatch import fnmatch
from pathlib import Path
from statistics import mean

import pytest

from conftest import TINY_MODEL, split, write_config
from dept_vl import VLT5
from dept_vl.training.config import ConfigError, TrainConfig
from dept_vl.data.records import CaptionRecord, VQARecord
from dept_vl.tokenization import (
    WORD_LIST, build_byte_bpe_tokenizer, build_word_tokenizer, english_words,
)
from dept_vl.cli.train import main
from dept_vl.training.setup import learn_tokenizer

CORPUS = ["vqa: what color is the circle?", "vqa: is there a red square?", "yes", "no", "red",
          "caption: a red circle left of a blue square"] * 20


def random_unicode(rng: random.Random, length: int) -> str:
    """Code points from every plane in use (surrogates excluded: not valid UTF-8)."""
    ranges = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF),
              (0x900, 0x97F), (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3),
              (0x1F300, 0x1FAFF), (0x10000, 0x1000F), (0xE000, 0xF8FF), (0x0, 0x1F)]
    return "".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(length))


QUESTIONS = [("what color is the circle?", "red"), ("is there a red square?", "yes"),
             ("how many hexagons are left of the zigzag?", "two")]


def records() -> list:
    """The corpus as a backbone's training records (images are not opened)."""
    vqa = [VQARecord(id=f"q{i}", image="x.png", question=question, answers=(answer,))
           for i, (question, answer) in enumerate(QUESTIONS * 20)]
    return vqa + [CaptionRecord(id="c", image="x.png", captions=(CORPUS[5],))] * 20


def pieces(tokenizer, word: str) -> list[str]:
    return tokenizer.tokenize(word)  # no eos: the word's own pieces


@pytest.mark.parametrize("word_list", [False, True])
def test_byte_bpe_has_no_unknown_token_for_any_utf8_text(word_list):
    tokenizer = (learn_tokenizer({"kind": "byte_bpe", "vocab_size": 1000}, records()) if word_list
                 else build_byte_bpe_tokenizer(CORPUS, vocab_size=300))
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


def test_the_word_list_ships_with_the_package_sorted_lower_case_and_broad():
    words = english_words()
    assert list(words) == sorted(set(words)) and 2000 <= len(words) <= 3000
    assert all(word == word.lower() and word.strip() == word for word in words)
    needed = ("left right above below top bottom middle corner next between not no none nothing "
              "what which how where who why magenta hexagon picture contain").split()
    assert [word for word in needed if word not in words] == []
    # a non-editable install has it only if package-data names it
    setuptools = tomllib.loads(Path("pyproject.toml").read_text())["tool"]["setuptools"]
    assert any(fnmatch(WORD_LIST, pattern)
               for pattern in setuptools["package-data"]["dept_vl.data"])


def test_every_listed_word_is_a_few_pieces_and_never_unknown():
    tokenizer = learn_tokenizer({"kind": "byte_bpe", "vocab_size": 1000}, records())
    counts = {word: len(pieces(tokenizer, word)) for word in english_words()}
    ids = tokenizer(" ".join(english_words()))["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert mean(counts.values()) < 3 and max(counts.values()) <= 6, \
        sorted(counts.items(), key=lambda item: -item[1])[:10]
    # without the list the same words are spelt from bytes and the corpus's few merges
    alone = learn_tokenizer({"kind": "byte_bpe", "vocab_size": 1000, "word_list": False},
                            records())
    assert mean(len(pieces(alone, word)) for word in english_words()) > 4


def test_corpus_words_stay_single_tokens_beside_the_word_list():
    tokenizer = learn_tokenizer({"kind": "byte_bpe", "vocab_size": 1000}, records())
    words = {word for text in ["vqa", *CORPUS, *(q for q, _ in QUESTIONS)]
             for word in text.replace("?", " ").replace(":", " ").split()}
    assert {word: pieces(tokenizer, word) for word in sorted(words)
            if len(pieces(tokenizer, word)) > 1} == {}
    assert len(tokenizer("vqa: is there a red square?")["input_ids"]) == 9  # 6 words, :, ?, eos


def test_a_model_tokenizer_spec_is_checked_when_read():
    with pytest.raises(ConfigError, match="kind"):
        TrainConfig(model={**TINY_MODEL, "tokenizer": {"kind": "bytes"}})
    with pytest.raises(ConfigError, match="vocab_size"):
        TrainConfig(model={**TINY_MODEL, "tokenizer": {"kind": "byte_bpe", "vocab_size": 100}})
    with pytest.raises(ConfigError, match="word_list"):
        TrainConfig(model={**TINY_MODEL, "tokenizer": {"kind": "byte_bpe", "word_list": "no"}})


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
