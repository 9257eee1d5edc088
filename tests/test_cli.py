"""Every entry point fails like train.py (issue 10, finding 9): `python -m dept_vl.evaluate`,
`python -m dept_vl.cli.features` and the demo (`python -m dept_vl.demo`, `python demo/app.py`, the
`dept-vl-demo` script) print one line `dept_vl: error: ...` and exit 2 for any UserError, and
keep the traceback for a bug, whatever its type; `evaluate --out` is written atomically.

The `__main__` blocks run in-process (runpy) with sys.argv set; nothing launches a server
(gradio's launch is replaced by a failure) and transformers' loading bars are off, so stderr
holds only what dept_vl prints.
"""

import json
import runpy
import sys
import tomllib
import warnings
from importlib import import_module
from pathlib import Path

import pytest

from dept_vl import DePTConfig, VLT5
from dept_vl.errors import BackboneError, run_cli

REPO = Path(__file__).resolve().parent.parent
# `python -m` / `python FILE` forms; the first two hand over to their command line's module
ENTRY_POINTS = ["dept_vl.evaluate", "dept_vl.cli.features", "dept_vl.demo", "demo/app.py"]
COMMAND_LINES = {"dept_vl.evaluate": "dept_vl.cli.eval", "dept_vl.demo": "dept_vl.cli.demo"}


@pytest.fixture(autouse=True)
def quiet_and_never_serving(monkeypatch):
    import gradio
    from transformers.utils import logging as hf_logging

    def no_launch(*args, **kwargs):
        raise AssertionError("the demo launched: a startup error was not raised")

    monkeypatch.setattr(gradio.Blocks, "launch", no_launch)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    yield
    if bars:
        hf_logging.enable_progress_bar()


@pytest.fixture(scope="module")
def adapter(backbone, tmp_path_factory) -> str:
    model = VLT5.from_pretrained(backbone)
    model.add_adapter("vqa", DePTConfig(prompt_length=2, rank=2, max_length=24,
                                        task_prefix="vqa:"))
    out = tmp_path_factory.mktemp("cli-adapter") / "vqa"
    model.save_adapter("vqa", out)
    return str(out)


def error_line(capsys) -> str:
    """The single line dept_vl printed on stderr (and nothing else there)."""
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dept_vl: error: "), err
    return lines[0]


def arguments(entry: str, backbone: str, adapter: str, data: str, cache: Path) -> list[str]:
    if entry == "dept_vl.evaluate":
        return ["--backbone", backbone, "--adapter", adapter, "--data", data]
    if entry == "dept_vl.cli.features":
        return ["--backbone", backbone, "--data", data, "--cache-dir", str(cache)]
    return ["--backbone", backbone, "--adapter", f"vqa={adapter}", "--examples", "none"]


def run_main_block(entry: str, argv: list[str], monkeypatch) -> int:
    """Run an entry point's `__main__` block as `python -m` / `python FILE` would; its exit code."""
    monkeypatch.setattr(sys, "argv", [entry, *argv])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: "found in sys.modules"
        with pytest.raises(SystemExit) as stop:
            if entry.endswith(".py"):
                runpy.run_path(str(REPO / entry), run_name="__main__")
            else:
                runpy.run_module(entry, run_name="__main__", alter_sys=True)
    return stop.value.code


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_main_block_a_bad_file_is_one_line_and_exit_2(entry, backbone, adapter, tmp_path,
                                                      monkeypatch, capsys):
    """A data file that does not exist (evaluate, features) or an adapter folder that does
    not exist (the demo): one line naming it, exit 2."""
    missing = tmp_path / "missing.jsonl"
    argv = arguments(entry, backbone, str(tmp_path / "no-adapter"), str(missing), tmp_path)
    if entry == "dept_vl.evaluate":
        argv = arguments(entry, backbone, adapter, str(missing), tmp_path)
    assert run_main_block(entry, argv, monkeypatch) == 2
    named = missing if "features" in entry or "evaluate" in entry else tmp_path / "no-adapter"
    assert str(named) in error_line(capsys)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_main_block_any_user_error_is_one_line_and_exit_2(entry, backbone, adapter, tmp_path,
                                                          monkeypatch, capsys, corpus_dir):
    """Not only the ValueErrors the entry points used to catch: a backbone that cannot be
    loaded (BackboneError, an OSError) is a user error too, and a multi-line message is
    printed on one line."""
    def unloadable(directory):
        raise BackboneError(f"{directory}/model.safetensors: truncated file\n(re-save it)")

    monkeypatch.setattr(VLT5, "from_pretrained", unloadable)
    argv = arguments(entry, backbone, adapter, f"{corpus_dir}/val_vqa.jsonl", tmp_path)
    assert run_main_block(entry, argv, monkeypatch) == 2
    line = error_line(capsys)
    assert f"{backbone}/model.safetensors: truncated file (re-save it)" in line


@pytest.mark.parametrize("bug", [RuntimeError, ValueError, FileNotFoundError, KeyError])
@pytest.mark.parametrize("entry", ["dept_vl.evaluate", "dept_vl.cli.features", "dept_vl.demo"])
def test_a_bug_keeps_its_traceback(entry, bug, backbone, adapter, corpus_dir, tmp_path,
                                   monkeypatch, capsys):
    """An exception that is not a UserError is a bug in dept_vl: it propagates (traceback,
    not exit 2), even when it is a ValueError or FileNotFoundError."""
    def broken(directory):
        raise bug("a bug inside dept_vl")

    monkeypatch.setattr(VLT5, "from_pretrained", broken)
    main = import_module(COMMAND_LINES.get(entry, entry)).main
    with pytest.raises(bug, match="a bug inside dept_vl"):
        run_cli(main, arguments(entry, backbone, adapter, f"{corpus_dir}/val_vqa.jsonl",
                                tmp_path))
    assert "dept_vl: error" not in capsys.readouterr().err


def test_evaluate_out_is_written_whole_or_not_at_all(backbone, adapter, corpus_dir, tmp_path,
                                                     monkeypatch, capsys):
    """`--out` holds the metrics and every prediction; a crash while it is written leaves the
    previous file as it was (no half-written JSON), and no temporary file behind."""
    from dept_vl.cli import eval as evaluate

    out = tmp_path / "results.json"
    argv = ["--backbone", backbone, "--adapter", adapter, "--data",
            f"{corpus_dir}/val_vqa.jsonl", "--out", str(out)]
    assert run_cli(evaluate.main, argv) == 0
    written = json.loads(out.read_text())
    rows = Path(corpus_dir, "val_vqa.jsonl").read_text().splitlines()
    assert len(written["predictions"]) == len(rows) == written["metrics"]["num_questions"]
    before = out.read_bytes()

    def unserialisable(*args, **kwargs):
        return {"vqa_accuracy": 0.5}, [{"id": "0", "prediction": object()}]

    monkeypatch.setattr(evaluate, "evaluate", unserialisable)
    with pytest.raises(TypeError):
        run_cli(evaluate.main, argv)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def damaged_copy(corpus_dir: str, out: Path) -> tuple[Path, int]:
    """val_vqa.jsonl with absolute image paths, line 2 not JSON and line 4's image not an image;
    the number of good rows."""
    rows = [json.loads(line) for line in
            Path(corpus_dir, "val_vqa.jsonl").read_text().splitlines()]
    lines = [json.dumps({**row, "image": str(Path(corpus_dir, row["image"]))}) for row in rows]
    junk = out / "junk.png"
    junk.write_bytes(b"not a png at all")
    lines[1] = "{not json"
    lines[3] = json.dumps({**rows[3], "image": str(junk)})
    data = out / "damaged.jsonl"
    data.write_text("\n".join(lines) + "\n")
    return data, len(rows) - 2


def test_evaluate_on_bad_data_skip_counts_and_lists_what_it_dropped(backbone, adapter,
                                                                   corpus_dir, tmp_path, capsys):
    from dept_vl.cli.eval import main

    data, good = damaged_copy(corpus_dir, tmp_path)
    out = tmp_path / "results.json"
    argv = ["--backbone", backbone, "--adapter", adapter, "--data", str(data), "--out", str(out)]
    assert run_cli(main, argv) == 2  # the default policy stops, naming the first bad line
    assert f"{data}:2" in error_line(capsys)
    assert run_cli(main, argv + ["--on-bad-data", "skip"]) == 0
    written = json.loads(out.read_text())
    assert written["metrics"]["num_questions"] == len(written["predictions"]) == good
    assert written["metrics"]["skipped"] == {"total": 2, "by_reason": {
        "invalid_json": 1, "image_unreadable": 1}}
    assert [e["source"] for e in written["skipped"]] == [f"{data}:2", f"{data}:4"]


def test_features_on_bad_data_skip_encodes_the_rest(backbone, corpus_dir, tmp_path, capsys):
    from dept_vl.cli.features import main

    data, good = damaged_copy(corpus_dir, tmp_path)
    argv = ["--backbone", backbone, "--data", str(data), "--cache-dir", str(tmp_path / "cache")]
    assert run_cli(main, argv) == 2
    assert f"{data}:2" in error_line(capsys)
    assert run_cli(main, argv + ["--on-bad-data", "skip"]) == 0
    printed = capsys.readouterr().out
    assert "2 rows or images skipped (image_unreadable 1, invalid_json 1)" in printed
    images = {json.loads(line)["image"] for i, line in
              enumerate(data.read_text().splitlines()) if i not in (1, 3)}
    assert f"{len(images)} images encoded" in printed


def test_the_console_script_exits_2_on_a_user_error(tmp_path, monkeypatch, capsys):
    """`dept-vl-demo` (pyproject's [project.scripts]) goes through run_cli as well."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, name = scripts["dept-vl-demo"].partition(":")
    script = getattr(import_module(module), name)
    monkeypatch.setattr(sys, "argv", ["dept-vl-demo", "--backbone", str(tmp_path / "none")])
    with pytest.raises(SystemExit) as stop:
        script()
    assert stop.value.code == 2
    assert str(tmp_path / "none") in error_line(capsys)
