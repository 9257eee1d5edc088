"""The tokenizer coverage report: shares and examples of texts with unknown tokens, for the
built-in word-level tokenizer and a SentencePiece-style (unigram) T5 tokenizer; written before
training, and `on_unknown_tokens: error` stops the run before any step."""

import json
from pathlib import Path

import pytest
from tokenizers import SentencePieceUnigramTokenizer
from transformers import PreTrainedTokenizerFast

from conftest import split, write_config
from dept_vl.training.coverage import CoverageError, coverage_report, text_coverage, unknown_pieces
from dept_vl.data.records import VQARecord
from dept_vl.errors import run_cli
from dept_vl.tokenization import build_word_tokenizer
from dept_vl.cli.train import main


def vqa(question, answers=("yes",)):
    return VQARecord(id=question, image="x.png", question=question, answers=tuple(answers))


def test_the_word_tokenizer_report_names_shares_and_unknown_words():
    tokenizer = build_word_tokenizer(["vqa : is there a red circle ? yes no"])
    records = [vqa("is there a red circle?"),
               vqa("does the picture not contain a magenta hexagon?", ["no", "nope"])]
    report = coverage_report(tokenizer, {"train": records, "eval": []})
    assert list(report) == ["train"]  # splits without records are left out
    inputs, targets = report["train"]["inputs"], report["train"]["targets"]
    assert (inputs["texts"], inputs["with_unknown"], inputs["share"]) == (2, 1, 50.0)
    assert inputs["examples"] == [{
        "text": "vqa: does the picture not contain a magenta hexagon?",
        "unknown": ["does", "the", "picture", "not", "contain", "magenta", "hexagon"]}]
    assert (targets["texts"], targets["with_unknown"]) == (3, 1)  # yes, no, nope: distinct
    assert targets["examples"][0]["unknown"] == ["nope"]


def sentencepiece_t5_tokenizer():
    """A tiny SentencePiece-style unigram tokenizer (as T5's), without byte fallback."""
    unigram = SentencePieceUnigramTokenizer()
    unigram.train_from_iterator(["vqa: what color is the circle?", "a red square"] * 5,
                                vocab_size=40, special_tokens=["<pad>", "</s>", "<unk>"],
                                unk_token="<unk>")
    return PreTrainedTokenizerFast(tokenizer_object=unigram, unk_token="<unk>",
                                   pad_token="<pad>", eos_token="</s>")


def test_a_sentencepiece_tokenizer_reports_characters_it_cannot_represent():
    tokenizer = sentencepiece_t5_tokenizer()
    assert unknown_pieces(tokenizer, "what {color} is é?") == ["{", "}", "é"]
    found = text_coverage(tokenizer, ["what color is the circle?", "what {color}?"])
    assert (found["with_unknown"], found["share"]) == (1, 50.0)
    assert found["examples"] == [{"text": "what {color}?", "unknown": ["{", "}"]}]


def with_unknown_word(tmp_path: Path, corpus_dir: str) -> str:
    lines = Path(corpus_dir, "val_vqa.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    rows[0]["question"] = "does the photograph show a zyzzyva?"
    for row in rows:
        row["image"] = str(Path(corpus_dir, row["image"]))
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def config(tmp_path, corpus_dir, backbone, **values):
    return write_config(
        tmp_path / "run.yaml", backbone=backbone, output_dir=str(tmp_path / "run"),
        train_file=split(corpus_dir, "train", "vqa"),
        test_file=with_unknown_word(tmp_path, corpus_dir),
        method={"name": "dept", "prompt_length": 4, "rank": 2}, max_length=24, max_steps=2,
        batch_size=8, save_steps=100,
        warmup_steps=1, **values)


def test_unknown_words_are_reported_before_training_and_in_the_results(
        tmp_path, corpus_dir, backbone, capsys):
    main(["--config", config(tmp_path, corpus_dir, backbone)])
    out = capsys.readouterr().out
    assert "tokenizer coverage: test inputs" in out and "'zyzzyva'" in out
    report = json.loads((tmp_path / "run" / "eval_results.json").read_text())["tokenizer_coverage"]
    assert report["test"]["inputs"]["with_unknown"] >= 1
    assert report == json.loads((tmp_path / "run" / "tokenizer_coverage.json").read_text())


def test_on_unknown_tokens_error_stops_before_any_step(tmp_path, corpus_dir, backbone, capsys):
    path = config(tmp_path, corpus_dir, backbone, on_unknown_tokens="error")
    with pytest.raises(CoverageError, match="test inputs.*zyzzyva"):
        main(["--config", path])
    assert not (tmp_path / "run" / "adapter").exists()
    metrics = tmp_path / "run" / "logs" / "metrics.csv"
    assert not metrics.exists() or "train/loss" not in metrics.read_text()  # no step taken
    assert run_cli(main, ["--config", path]) == 2
    assert "dept_vl: error: backbone" in capsys.readouterr().err
