"""Fuzz suite, command-line part: bad backbones, adapters, data files, images, arguments and
environment given to `python -m dept_vl.evaluate`, `python -m dept_vl.cli.features` and the demo.

Each case runs one entry point in-process through `dept_vl.errors.run_cli` (what their
`__main__` blocks and the `dept-vl-demo` script run) and asserts its exact outcome: exit code
2, a single stderr line `dept_vl: error: ...`, naming the file (and line, key or argument) at
fault. Damaged rows sit at a line drawn from the case's own seed. Nothing launches a server
(gradio's launch is replaced by a failure) and transformers' loading bars are off, so stderr
holds only what dept_vl prints.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from conftest import tiny_model
from dept_vl import DePTConfig, VLT5
from dept_vl.cli.demo import main as demo_main
from dept_vl.errors import run_cli
from dept_vl.cli.eval import main as evaluate_main
from dept_vl.cli.features import main as features_main

MAINS = {"evaluate": evaluate_main, "features": features_main, "demo": demo_main}


@pytest.fixture(autouse=True)
def quiet_and_never_serving(monkeypatch):
    import gradio
    from transformers.utils import logging as hf_logging

    def no_launch(*args, **kwargs):
        raise AssertionError("the demo launched: a startup error was not raised")

    monkeypatch.setattr(gradio.Blocks, "launch", no_launch)
    for name in ("GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT"):
        monkeypatch.delenv(name, raising=False)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    yield
    if bars:
        hf_logging.enable_progress_bar()


@dataclass
class Workspace:
    """What the cases damage copies of: a backbone, a matching adapter, an adapter of another
    d_model, and the corpus' val split (image paths made absolute so copies live anywhere)."""

    backbone: str
    adapter: str
    other_width_adapter: str
    rows: list[dict]
    tmp: Path

    def backbone_without(self, name: str) -> Path:
        copy = self.tmp / "backbone"
        shutil.copytree(self.backbone, copy)
        (copy / name).unlink()
        return copy

    def backbone_damaged(self, name: str, keep_bytes: int) -> Path:
        copy = self.tmp / "backbone"
        shutil.copytree(self.backbone, copy)
        (copy / name).write_bytes((copy / name).read_bytes()[:keep_bytes])
        return copy

    def adapter_damaged(self, name: str, keep_bytes: int) -> Path:
        copy = self.tmp / "adapter"
        shutil.copytree(self.adapter, copy)
        (copy / name).write_bytes((copy / name).read_bytes()[:keep_bytes])
        return copy

    def data(self, line: int | None = None, damaged: str | None = None) -> Path:
        """The val rows as JSONL, with line `line` (1-based) replaced by `damaged`."""
        lines = [json.dumps(row) for row in self.rows]
        if line is not None:
            lines[line - 1] = damaged
        path = self.tmp / "data.jsonl"
        path.write_text("\n".join(lines) + "\n")
        return path

    def row(self, line: int) -> dict:
        return dict(self.rows[line - 1])


@pytest.fixture(scope="module")
def shared(backbone, corpus_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz-cli")
    model = VLT5.from_pretrained(backbone)
    model.add_adapter("vqa", DePTConfig(prompt_length=2, rank=2, max_length=24,
                                        task_prefix="vqa:"))
    model.save_adapter("vqa", out / "vqa")
    narrow = tiny_model("test_resnet", d_model=16)
    narrow.add_adapter("vqa", DePTConfig(prompt_length=2, rank=2, max_length=24,
                                         task_prefix="vqa:"))
    narrow.save_adapter("vqa", out / "vqa16")
    rows = [json.loads(line) for line in
            Path(corpus_dir, "val_vqa.jsonl").read_text().splitlines()]
    rows = [{**row, "image": str(Path(corpus_dir, row["image"]))} for row in rows]
    return backbone, str(out / "vqa"), str(out / "vqa16"), rows


@pytest.fixture
def ws(shared, tmp_path) -> Workspace:
    return Workspace(*shared, tmp_path)


@dataclass
class Case:
    """One bad input: which CLI, and how to build (argv, environment, what the error names)."""

    id: str
    cli: str
    build: Callable[[Workspace, random.Random], tuple[list[str], dict[str, str], list[str]]]


def evaluate_args(ws: Workspace, backbone=None, adapter=None, data=None) -> list[str]:
    return ["--backbone", str(backbone or ws.backbone), "--adapter", str(adapter or ws.adapter),
            "--data", str(data or ws.data())]


def features_args(ws: Workspace, backbone=None, data=None) -> list[str]:
    return ["--backbone", str(backbone or ws.backbone), "--data", str(data or ws.data()),
            "--cache-dir", str(ws.tmp / "cache")]


def demo_args(ws: Workspace, backbone=None, adapter=None) -> list[str]:
    return ["--backbone", str(backbone or ws.backbone), "--adapter",
            f"vqa={adapter or ws.adapter}", "--examples", "none"]


def bad_row(cli: str, damage: Callable[[dict], str], key: str) -> Callable:
    """A data file whose line (drawn from the seed) is damaged: the error names file:line."""
    def build(ws: Workspace, rng: random.Random):
        line = rng.randrange(2, len(ws.rows) + 1)
        data = ws.data(line, damage(ws.row(line)))
        args = evaluate_args(ws, data=data) if cli == "evaluate" else features_args(ws, data=data)
        return args, {}, [f"{data}:{line}:", key]
    return build


def bad_image(cli: str, content: Callable[[Path], bytes]) -> Callable:
    """A row (line drawn from the seed) whose image file cannot be decoded."""
    def build(ws: Workspace, rng: random.Random):
        line = rng.randrange(2, len(ws.rows) + 1)
        image = ws.tmp / "broken.png"
        image.write_bytes(content(Path(ws.row(line)["image"])))
        data = ws.data(line, json.dumps({**ws.row(line), "image": str(image)}))
        args = evaluate_args(ws, data=data) if cli == "evaluate" else features_args(ws, data=data)
        return args, {}, [f"{data}:{line}:", str(image)]
    return build


def without(key: str) -> Callable[[dict], str]:
    return lambda row: json.dumps({k: v for k, v in row.items() if k != key})


def with_value(key: str, value) -> Callable[[dict], str]:
    return lambda row: json.dumps({**row, key: value})


def truncated(path: Path) -> bytes:
    return path.read_bytes()[:60]


def every_image_broken(ws: Workspace) -> Path:
    """A data file whose rows are all well formed but whose one image cannot be decoded."""
    image = ws.tmp / "broken.png"
    image.write_bytes(b"GIF89a and nothing else")
    ws.rows = [{**row, "image": str(image)} for row in ws.rows]
    return ws.data()


CASES = [
    # evaluate: the backbone
    Case("evaluate-backbone-missing", "evaluate", lambda ws, rng: (
        evaluate_args(ws, backbone=ws.tmp / "nowhere"), {}, [str(ws.tmp / "nowhere")])),
    *[Case(f"evaluate-backbone-without-{name.replace('/', '-')}", "evaluate",
           lambda ws, rng, name=name: (evaluate_args(ws, backbone=ws.backbone_without(name)),
                                       {}, [str(ws.tmp / "backbone"), name]))
      for name in ("projection.safetensors", "vision/config.json", "model.safetensors",
                   "tokenizer.json", "dept_vl_backbone.json")],
    Case("evaluate-backbone-manifest-not-json", "evaluate", lambda ws, rng: (
        evaluate_args(ws, backbone=ws.backbone_damaged("dept_vl_backbone.json", 1)), {},
        [str(ws.tmp / "backbone" / "dept_vl_backbone.json")])),
    Case("evaluate-backbone-projection-truncated", "evaluate", lambda ws, rng: (
        evaluate_args(ws, backbone=ws.backbone_damaged("projection.safetensors", 40)), {},
        [str(ws.tmp / "backbone" / "projection.safetensors")])),
    # evaluate: the adapter
    Case("evaluate-adapter-missing", "evaluate", lambda ws, rng: (
        evaluate_args(ws, adapter=ws.tmp / "no-adapter"), {}, [str(ws.tmp / "no-adapter")])),
    Case("evaluate-adapter-other-d_model", "evaluate", lambda ws, rng: (
        evaluate_args(ws, adapter=ws.other_width_adapter), {},
        [f"{ws.other_width_adapter}/adapter_config.json", "d_model"])),
    Case("evaluate-adapter-config-not-json", "evaluate", lambda ws, rng: (
        evaluate_args(ws, adapter=ws.adapter_damaged("adapter_config.json", 20)), {},
        [str(ws.tmp / "adapter" / "adapter_config.json")])),
    Case("evaluate-adapter-weights-truncated", "evaluate", lambda ws, rng: (
        evaluate_args(ws, adapter=ws.adapter_damaged("adapter_model.safetensors", 50)), {},
        [str(ws.tmp / "adapter" / "adapter_model.safetensors")])),
    # evaluate: the data
    Case("evaluate-data-missing", "evaluate", lambda ws, rng: (
        evaluate_args(ws, data=ws.tmp / "absent.jsonl"), {}, [str(ws.tmp / "absent.jsonl")])),
    Case("evaluate-data-unknown-format", "evaluate", lambda ws, rng: (
        evaluate_args(ws) + ["--format", "parquet-ish"], {}, [str(ws.tmp / "data.jsonl"),
                                                              "parquet-ish"])),
    Case("evaluate-row-invalid-json", "evaluate",
         bad_row("evaluate", lambda row: json.dumps(row)[:-7], "invalid JSON")),
    Case("evaluate-row-missing-question", "evaluate",
         bad_row("evaluate", without("question"), "'question'")),
    Case("evaluate-row-answers-not-a-list", "evaluate",
         bad_row("evaluate", with_value("answers", 3), "'answers'")),
    Case("evaluate-row-image-not-found", "evaluate",
         bad_row("evaluate", with_value("image", "/nonexistent/picture.png"),
                 "/nonexistent/picture.png")),
    Case("evaluate-row-question-type-not-text", "evaluate",
         bad_row("evaluate", with_value("question_type", 7), "'question_type'")),
    Case("evaluate-image-not-an-image", "evaluate",
         bad_image("evaluate", lambda good: b"this is not a picture")),
    Case("evaluate-image-truncated-png", "evaluate", bad_image("evaluate", truncated)),
    Case("evaluate-skip-leaves-no-record", "evaluate", lambda ws, rng: (
        evaluate_args(ws, data=every_image_broken(ws)) + ["--on-bad-data", "skip"], {},
        [str(ws.tmp / "data.jsonl"), "no usable record"])),
    # features
    Case("features-backbone-missing", "features", lambda ws, rng: (
        features_args(ws, backbone=ws.tmp / "nowhere"), {}, [str(ws.tmp / "nowhere")])),
    Case("features-backbone-without-vision-weights", "features", lambda ws, rng: (
        features_args(ws, backbone=ws.backbone_without("vision/model.safetensors")), {},
        [str(ws.tmp / "backbone" / "vision" / "model.safetensors")])),
    Case("features-data-missing", "features", lambda ws, rng: (
        features_args(ws, data=ws.tmp / "absent.jsonl"), {}, [str(ws.tmp / "absent.jsonl")])),
    Case("features-vqa-rows-read-as-captions", "features", lambda ws, rng: (
        features_args(ws) + ["--task", "caption"], {}, [f"{ws.tmp / 'data.jsonl'}:1:",
                                                        "caption"])),
    Case("features-row-not-an-object", "features",
         bad_row("features", lambda row: json.dumps([row]), "JSON object")),
    Case("features-row-empty-question", "features",
         bad_row("features", with_value("question", "   "), "question")),
    Case("features-image-not-an-image", "features",
         bad_image("features", lambda good: b"\x89PNG\r\n\x1a\n but nothing after")),
    Case("features-second-data-file-missing", "features", lambda ws, rng: (
        features_args(ws) + ["--data", str(ws.tmp / "second.jsonl")], {},
        [str(ws.tmp / "second.jsonl")])),
    # the demo
    Case("demo-adapter-argument-without-equals", "demo", lambda ws, rng: (
        ["--backbone", ws.backbone, "--adapter", "vqa"], {}, ["--adapter 'vqa'", "NAME=DIR"])),
    Case("demo-adapter-argument-name-not-identifier", "demo", lambda ws, rng: (
        ["--backbone", ws.backbone, "--adapter", f"1st={ws.adapter}"], {},
        [f"--adapter '1st={ws.adapter}'"])),
    Case("demo-adapter-argument-empty-dir", "demo", lambda ws, rng: (
        ["--backbone", ws.backbone, "--adapter", "vqa="], {}, ["--adapter 'vqa='"])),
    Case("demo-backbone-missing", "demo", lambda ws, rng: (
        demo_args(ws, backbone=ws.tmp / "nowhere"), {}, [str(ws.tmp / "nowhere")])),
    Case("demo-backbone-without-projection", "demo", lambda ws, rng: (
        demo_args(ws, backbone=ws.backbone_without("projection.safetensors")), {},
        [str(ws.tmp / "backbone" / "projection.safetensors")])),
    Case("demo-adapter-missing", "demo", lambda ws, rng: (
        demo_args(ws, adapter=ws.tmp / "no-adapter"), {}, [str(ws.tmp / "no-adapter")])),
    Case("demo-adapter-other-d_model", "demo", lambda ws, rng: (
        demo_args(ws, adapter=ws.other_width_adapter), {},
        [f"{ws.other_width_adapter}/adapter_config.json", "d_model"])),
    Case("demo-adapter-weights-truncated", "demo", lambda ws, rng: (
        demo_args(ws, adapter=ws.adapter_damaged("adapter_model.safetensors", 50)), {},
        [str(ws.tmp / "adapter" / "adapter_model.safetensors")])),
    Case("demo-server-port-not-a-number", "demo", lambda ws, rng: (
        demo_args(ws), {"GRADIO_SERVER_PORT": "http"}, ["GRADIO_SERVER_PORT", "'http'"])),
    Case("demo-server-port-out-of-range", "demo", lambda ws, rng: (
        demo_args(ws), {"GRADIO_SERVER_PORT": "70000"}, ["GRADIO_SERVER_PORT", "'70000'"])),
]


@pytest.mark.parametrize("seed, case", list(enumerate(CASES)), ids=[c.id for c in CASES])
def test_cli_bad_input_is_one_named_line_and_exit_2(seed, case, ws, monkeypatch, capsys):
    argv, environ, named = case.build(ws, random.Random(seed))
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert run_cli(MAINS[case.cli], argv) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dept_vl: error: "), err
    for name in named:
        assert name in lines[0], (name, lines[0])
