"""docs/bring_your_own_data.md, run as written: its image script, its JSONL files, its config,
its command and its Python (read from the page's fenced blocks, so the page cannot drift from the
code), on tiny test backbones in place of the built-in one, for two steps instead of 200; the
warning and error lines it shows must have the shape of those the run prints."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from conftest import TINY_MODEL, split, write_config
from dept_vl.training.coverage import CoverageError
from dept_vl.errors import run_cli
from dept_vl.cli.train import main

DOC = Path(__file__).resolve().parent.parent / "docs" / "bring_your_own_data.md"
# a fenced block, with the file it is when the line before it says "File `path`:"
BLOCK = re.compile(r"(?:^File `(?P<file>[^`]+)`:\n\n)?^```(?P<lang>\w*)\n(?P<body>.*?)^```$",
                   re.MULTILINE | re.DOTALL)
LAUNCH = "accelerate launch dept_vl/train.py"
BACKBONE = "runs/backbone-shapes/model"  # the page's backbone, replaced by a test one


def blocks() -> list[dict[str, str]]:
    return [match.groupdict() for match in BLOCK.finditer(DOC.read_text(encoding="utf-8"))]


# what varies between the page's run and a test's: paths, numbers, quoted texts, split and side
FREE = (r"runs/backbone-word/model|runs/my-adapter|\(unknown: [^)]*\)|'[^']*'|\d+(?:\.\d+)?"
        r"|\b(?:train|eval|test) (?:inputs|targets)\b")


def shown_lines(start: str) -> list[str]:
    """The lines of output the page shows that start with `start`."""
    return [line for block in blocks() if block["lang"] == "text"
            for line in block["body"].splitlines() if line.startswith(start)]


def pattern_of(shown: str) -> str:
    """A line of output as the page shows it, as a regex: the words around the FREE parts as
    shown, the FREE parts anything."""
    parts = re.split(f"({FREE})", shown)
    return "".join(".+?" if i % 2 else re.escape(part) for i, part in enumerate(parts))


def page_files() -> dict[str, str]:
    """{path: text} of every block the page names as a file."""
    return {block["file"]: block["body"] for block in blocks() if block["file"]}


def page_python() -> list[str]:
    return [block["body"] for block in blocks() if block["lang"] == "python"]


def page_command() -> list[str]:
    """The arguments of the page's training command (after `accelerate launch dept_vl/train.py`)."""
    commands = [line for block in blocks() if block["lang"] == "bash"
                for line in block["body"].splitlines() if line.startswith(LAUNCH)]
    assert len(commands) == 1, commands
    return shlex.split(commands[0][len(LAUNCH):])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A folder holding what the page's steps 1-3 make: images, JSONL files, my.yaml."""
    folder = tmp_path_factory.mktemp("byod")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        exec(page_python()[0], {})  # step 1 draws the images
        for name, text in page_files().items():
            Path(name).write_text(text, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def bpe_backbone(corpus_dir, tmp_path_factory) -> str:
    """A tiny backbone whose tokenizer is byte-level BPE, as the built-in one's is."""
    out = tmp_path_factory.mktemp("bpe-backbone")
    config = write_config(
        out / "backbone.yaml", method="full", task="vqa", output_dir=str(out),
        model={**TINY_MODEL, "tokenizer": {"kind": "byte_bpe", "vocab_size": 300}},
        train_file=split(corpus_dir, "train", "vqa"), max_steps=1, batch_size=8, max_length=24,
        save_steps=100, warmup_steps=1)
    main(["--config", config])
    return str(out / "model")


def run_page(workspace: Path, backbone: str, *extra: str) -> Path:
    """The page's command in its folder, on `backbone`, two steps; returns the output dir."""
    out = workspace / f"run-{Path(backbone).parent.name}-{len(extra)}"
    main(page_command() + ["--backbone", backbone, "--output_dir", str(out),
                           "--max_steps", "2", *extra])
    return out


def test_the_page_trains_an_adapter_and_reports_coverage(workspace, backbone, monkeypatch,
                                                         capsys):
    monkeypatch.chdir(workspace)
    out = run_page(workspace, backbone)
    # a closed word-level vocabulary misses the user's words ("colour", "ball"): warned
    warned = [line for line in capsys.readouterr().out.splitlines()
              if line.startswith("[dept_vl] warning: tokenizer coverage: ")]
    assert warned and warned[0].startswith("[dept_vl] warning: tokenizer coverage: train inputs")
    shown = [pattern_of(line) for line in shown_lines("[dept_vl] warning: tokenizer coverage:")]
    assert all(any(re.fullmatch(pattern, line) for pattern in shown) for line in warned), warned
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    coverage = json.loads((out / "tokenizer_coverage.json").read_text())
    assert set(coverage) == {"train", "eval", "test"}
    assert coverage["train"]["inputs"]["with_unknown"] > 0
    assert any("colour" in example["unknown"]
               for example in coverage["train"]["inputs"]["examples"])
    results = json.loads((out / "eval_results.json").read_text())
    assert set(results["vqa_accuracy_by_type"]) == {"colour", "where", "count"}
    assert results["tokenizer_coverage"] == coverage
    # the page's Python use of the adapter, on the same files
    use = page_python()[1].replace(BACKBONE, backbone).replace("runs/my-adapter", str(out))
    scope: dict = {}
    exec(use.replace("model.generate(", "answer = model.generate("), scope)
    assert isinstance(scope["answer"][0], str)


def test_the_built_in_kind_of_tokenizer_reads_every_word(workspace, bpe_backbone, monkeypatch,
                                                         capsys):
    """What the page says of the built-in backbone: byte-level BPE, every share 0, no warning,
    and `error` has nothing to stop."""
    monkeypatch.chdir(workspace)
    out = run_page(workspace, bpe_backbone, "--on_unknown_tokens", "error")
    assert "tokenizer coverage" not in capsys.readouterr().out
    coverage = json.loads((out / "tokenizer_coverage.json").read_text())
    assert [side["share"] for split_ in coverage.values() for side in split_.values()] == [0.0] * 6
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_on_unknown_tokens_error_stops_before_training_naming_the_split(
        workspace, backbone, monkeypatch, capsys):
    monkeypatch.chdir(workspace)
    out = workspace / "run-error"
    argv = page_command() + ["--backbone", backbone, "--output_dir", str(out),
                             "--on_unknown_tokens", "error"]
    with pytest.raises(CoverageError, match=r"train inputs: [\d.]+% of \d+ distinct texts"):
        main(argv)
    assert (out / "tokenizer_coverage.json").is_file()
    assert not (out / "adapter").exists()
    metrics = out / "logs" / "metrics.csv"
    assert not metrics.exists() or "train/loss" not in metrics.read_text()  # no step taken
    assert run_cli(main, argv) == 2
    error = capsys.readouterr().err.strip()
    # the page's message: its head and tail as shown, one "split side: ..." entry per hole
    head, _, rest = shown_lines("dept_vl: error: backbone")[0].partition("): ")
    tail = rest.rpartition("; ")[2]
    assert re.fullmatch(pattern_of(head + "): ") + ".+" + pattern_of("; " + tail), error), error
    assert error.startswith(f"dept_vl: error: backbone {backbone}: ")
