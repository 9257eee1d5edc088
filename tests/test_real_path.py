"""The researcher's path through the console scripts, as a user runs it: a T5 saved to a local
directory and a timm encoder with a local weights file, named in `model:` (no saved dept_vl
backbone); DePT trained on VQAv2-format files with `dept-vl-train`; then, with no backbone
named, `dept-vl-eval --adapter DIR` on the same files (the run's own test metrics) and
`dept-vl-demo --adapter vqa=DIR` answering over gradio_client; a weights file changed after
training is refused in one line naming it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from benchmarks.scale_data import vqav2_files, write_dataset, write_encoder, write_t5

gradio_client = pytest.importorskip("gradio_client")

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "2"}


def script(name: str) -> str:
    """The console script installed beside this Python (pip install puts it there)."""
    path = Path(sys.executable).parent / name
    found = str(path) if path.is_file() else shutil.which(name)
    assert found, f"{name} is not installed: pip install -e . writes the console scripts"
    return found


def run(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([script(argv[0]), *argv[1:]], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=600)


def data_entry(root: Path, subtype: str) -> dict[str, str]:
    files = vqav2_files(root, subtype)
    return {"path": files["path"], "format": "vqav2", "annotations": files["annotations"],
            "image_dir": files["image_dir"]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("real-path")
    made = write_dataset(root, images=8, image_size=32)
    write_t5(root / "t5", "tiny", [r for records in made["records"].values() for r in records])
    write_encoder(root / "vit.safetensors", "test_vit")
    config = {
        "task": "vqa",
        "model": {"t5": str(root / "t5"), "num_visual_tokens": 4,
                  "vision": {"model_name": "test_vit", "image_size": 32,
                             "weights_file": str(root / "vit.safetensors")}},
        "train_file": data_entry(root, "train2014"), "eval_file": data_entry(root, "val2014"),
        "test_file": data_entry(root, "val2014"), "output_dir": str(root / "run"),
        "method": {"name": "dept", "prompt_length": 2, "rank": 2}, "max_length": 24,
        "max_steps": 4, "batch_size": 4,
        "eval_steps": 4, "save_steps": 4, "warmup_steps": 1, "logging_steps": 2,
    }
    (root / "run.yaml").write_text(yaml.safe_dump(config))
    done = run("dept-vl-train", "--config", str(root / "run.yaml"), cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (root / "run" / "model").exists()  # the adapter alone, no backbone saved
    return root


def test_help_lists_the_config_keys(tmp_path, capsys):
    done = run("dept-vl-train", "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for key in ("--method.prompt_length", "--method.lr.lowrank", "--backbone", "--num_beams",
                "--jobs"):
        assert key in done.stdout
    assert "shipped configs: " in done.stdout and "quickstart" in done.stdout
    # the other scripts' --help is argparse's: asked in this process (each start costs seconds)
    from dept_vl.cli import demo, eval, features, report

    for name, main in (("dept-vl-eval", eval.main), ("dept-vl-features", features.main),
                       ("dept-vl-demo", demo.main), ("dept-vl-report", report.main)):
        with pytest.raises(SystemExit) as stop:
            main(["--help"])
        shown = capsys.readouterr().out
        assert stop.value.code == 0 and shown.startswith(f"usage: {name}"), shown[:200]
        assert "--adapter" in shown or "--cache-dir" in shown or "runs" in shown


def test_eval_rebuilds_the_backbone_from_the_adapter_alone(trained):
    val = vqav2_files(trained, "val2014")
    done = run("dept-vl-eval", "--adapter", str(trained / "run" / "adapter"), "--format", "vqav2",
               "--data", val["path"], "--annotations", val["annotations"],
               "--image-dir", val["image_dir"], "--out", str(trained / "eval.json"), cwd=trained)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((trained / "eval.json").read_text())["metrics"]
    tested = json.loads((trained / "run" / "eval_results.json").read_text())
    assert metrics["vqa_accuracy"] == tested["vqa_accuracy"]
    assert metrics["vqa_accuracy_by_type"] == tested["vqa_accuracy_by_type"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_serves_the_adapter_with_no_backbone_named(trained):
    from gradio_client import Client, handle_file

    from dept_vl.model import VLT5

    port = free_port()
    adapter = trained / "run" / "adapter"
    server = subprocess.Popen([script("dept-vl-demo"), "--adapter", f"vqa={adapter}",
                               "--port", str(port), "--examples", "none"], cwd=trained, env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server.stderr.read()[-3000:]
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "the demo did not start listening"
                time.sleep(1)
        row = json.loads(Path(vqav2_files(trained, "val2014")["path"]).read_text())
        question = row["questions"][0]
        image = next(Path(vqav2_files(trained, "val2014")["image_dir"]).glob(
            f"*{question['image_id']:012d}.jpg"))
        answer, _ = Client(url, verbose=False).predict(
            handle_file(str(image)), question["question"], "vqa", api_name="/answer")
    finally:
        server.terminate()
        server.wait(timeout=30)
    from PIL import Image
    model = VLT5.from_adapter(adapter, name="vqa").eval()
    with Image.open(image) as picture:
        assert answer == model.generate([picture.convert("RGB")], [question["question"]],
                                        adapter="vqa")[0]


def test_a_changed_weights_file_is_refused_naming_it(trained, tmp_path):
    weights = trained / "vit.safetensors"
    original = weights.read_bytes()
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 0.5
    save_file({k: v.contiguous() for k, v in tensors.items()}, weights)
    try:
        val = vqav2_files(trained, "val2014")
        done = run("dept-vl-eval", "--adapter", str(trained / "run" / "adapter"), "--format",
                   "vqav2", "--data", val["path"], "--annotations", val["annotations"],
                   "--image-dir", val["image_dir"], cwd=trained)
    finally:
        weights.write_bytes(original)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dept_vl: error: ")
    assert str(weights) in lines[0] and "fingerprint" in lines[0]


def test_adapter_records_its_backbone_and_rebuilds_it(trained):
    """The recorded source names the T5 folder and the encoder's weights file; the rebuilt
    backbone has the weights the adapter was trained on."""
    from dept_vl.model import VLT5

    meta = json.loads((trained / "run" / "adapter" / "adapter_config.json").read_text())
    assert meta["backbone"]["t5"] == str((trained / "t5").resolve())
    assert meta["backbone"]["vision"]["weights_file"] == str((trained / "vit.safetensors").resolve())
    model = VLT5.from_adapter(trained / "run" / "adapter")
    assert meta["backbone_fingerprint"] == model.backbone_fingerprint(projection=False)
    assert torch.equal(model.vision.model.state_dict()["cls_token"],
                       load_file(trained / "vit.safetensors")["cls_token"])


def build_isolation() -> list[str]:
    """This environment's setuptools when it builds wheels by itself (70.1 and newer; older
    ones need the `wheel` package), else pip's isolated build, as `pip install .` does."""
    try:
        from setuptools import __version__ as version
    except ImportError:
        return []
    major, minor = (int(part) for part in version.split(".")[:2])
    return ["--no-build-isolation"] if (major, minor) >= (70, 1) else []


def test_the_wheel_ships_the_configs_and_the_console_scripts(tmp_path):
    """What a regular (not editable) `pip install .` gets: every shipped config (so
    `dept-vl-train` runs the quickstart from an empty folder) and the console scripts."""
    import configparser
    import tomllib
    import zipfile

    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(repo), "--no-deps",
                           *build_isolation(), "-q", "-w", str(tmp_path)], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    with zipfile.ZipFile(next(tmp_path.glob("dept_vl-*.whl"))) as wheel:
        names = set(wheel.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = configparser.ConfigParser()
        scripts.read_string(wheel.read(entry_points).decode())
    shipped = {f"dept_vl/configs/{p.name}" for p in (repo / "configs").glob("*.yaml")}
    assert shipped and shipped <= names
    assert "dept_vl/data/english_words.txt" in names
    assert dict(scripts["console_scripts"]) == {
        "dept-vl-train": "dept_vl.cli.train:cli", "dept-vl-eval": "dept_vl.cli.eval:cli",
        "dept-vl-features": "dept_vl.cli.features:cli", "dept-vl-demo": "dept_vl.cli.demo:cli",
        "dept-vl-report": "dept_vl.cli.report:cli"}
    # the wheel's own scripts are the project's
    assert dict(scripts["console_scripts"]) == tomllib.loads(
        (repo / "pyproject.toml").read_text())["project"]["scripts"]
