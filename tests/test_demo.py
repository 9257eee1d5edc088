"""The Gradio demo: the API answers what VLT5.generate answers, bad input gets a clear error and
the app keeps answering, 20 concurrent requests (batched by the server) each get their own
answer, and a real headless Chromium
can use the page (skipped, with the reason, only when Chromium is not installed)."""

import json
import os
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

from dept_vl import DePTConfig, VLT5  # noqa: E402
from dept_vl.demo import (  # noqa: E402
    MAX_FILE_SIZE, DemoError, DemoService, build_demo, corpus_examples, main, parse_adapters,
)

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("DEPT_VL_TEST_ARTIFACTS", REPO / "test-artifacts"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def adapters(backbone, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-adapters")
    model = VLT5.from_pretrained(backbone)
    for name, prefix in (("vqa", "vqa:"), ("caption", "caption:")):
        model.add_adapter(name, DePTConfig(prompt_length=3, rank=2, max_length=24,
                                           task_prefix=prefix))
        model.save_adapter(name, out / name)
    return {"vqa": str(out / "vqa"), "caption": str(out / "caption")}


@pytest.fixture(scope="module")
def app(backbone, adapters, corpus_dir):
    service = DemoService(backbone, adapters)
    demo = build_demo(service, corpus_examples(corpus_dir, {"vqa": "vqa", "caption": "caption"}),
                      max_queue=32)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                max_file_size=MAX_FILE_SIZE, quiet=True)
    yield service, f"http://127.0.0.1:{port}/"
    demo.close()


def first_question(corpus_dir):
    row = json.loads(Path(corpus_dir, "test_vqa.jsonl").read_text().splitlines()[0])
    return str(Path(corpus_dir, row["image"])), row["question"]


def test_api_answer_equals_generate_for_vqa_and_caption(app, corpus_dir):
    service, url = app
    client = Client(url, verbose=False)
    image, question = first_question(corpus_dir)
    picture = Image.open(image).convert("RGB")
    answer, elapsed = client.predict(handle_file(image), question, "vqa", api_name="/answer")
    assert answer == service.model.generate([picture], [question], adapter="vqa")[0]
    assert elapsed.endswith(" s")
    caption, _ = client.predict(handle_file(image), "ignored ?", "caption", api_name="/answer")
    assert caption == service.model.generate([picture], adapter="caption")[0]


def test_bad_inputs_get_clear_errors_and_the_app_keeps_answering(app, corpus_dir, tmp_path):
    service, url = app
    client = Client(url, verbose=False)
    image, question = first_question(corpus_dir)
    text_file = tmp_path / "notes.png"
    text_file.write_text("not an image at all")
    huge = tmp_path / "huge.png"
    Image.new("RGB", (3000, 2000), (200, 30, 30)).save(huge)
    cases = [
        ((None, question, "vqa"), "no image"),
        ((handle_file(str(text_file)), question, "vqa"), "not an image"),
        ((handle_file(image), "   ", "vqa"), "question is empty"),
        ((handle_file(image), "what " * 100, "vqa"), "characters"),
        ((handle_file(image), "what color is it " * 6, "vqa"), "tokens long"),
        ((handle_file(image), question, "segmentation"), "no adapter loaded"),
    ]
    for args, message in cases:
        with pytest.raises(Exception, match=message):
            client.predict(*args, api_name="/answer")
    # a huge image is downscaled and answered; normal requests still work afterwards
    assert client.predict(handle_file(str(huge)), question, "vqa", api_name="/answer")[0] is not None
    answer, _ = client.predict(handle_file(image), question, "vqa", api_name="/answer")
    assert answer == service.model.generate([Image.open(image).convert("RGB")], [question],
                                            adapter="vqa")[0]


def test_twenty_concurrent_mixed_requests_each_get_their_own_answer(app, corpus_dir):
    """VQA and caption requests on different images at once (batched together by the server)
    each equal `generate` run alone; a bad request among them fails alone."""
    service, url = app
    rows = [json.loads(line) for line in
            Path(corpus_dir, "test_vqa.jsonl").read_text().splitlines()[:20]]
    requests = [(str(Path(corpus_dir, row["image"])), row["question"],
                 "caption" if i % 4 == 3 else "vqa") for i, row in enumerate(rows)]
    expected = [service.model.generate([Image.open(image).convert("RGB")], [question],
                                       adapter=task)[0] for image, question, task in requests]
    requests[10] = (requests[10][0], "   ", "vqa")  # an empty question

    def ask(request):
        image, question, task = request
        try:
            return Client(url, verbose=False).predict(handle_file(image), question, task,
                                                      api_name="/answer")[0]
        except Exception as error:  # noqa: BLE001 - the bad request's error is checked below
            return error

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(ask, requests))
    assert "question is empty" in str(answers[10])
    assert answers[:10] + answers[11:] == expected[:10] + expected[11:]


def test_missing_quickstart_outputs_say_how_to_make_them(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--backbone", str(tmp_path / "nothing")])
    assert stop.value.code == 2
    assert "accelerate launch dept_vl/train.py" in capsys.readouterr().err
    with pytest.raises(DemoError, match="NAME=DIR"):
        parse_adapters(["no-equals-sign"])
    assert parse_adapters(["a=x", "b=y"]) == {"a": "x", "b": "y"}
    with pytest.raises(SystemExit) as stop:
        main(["--max-batch-size", "0"])
    assert stop.value.code == 2
    assert "--max-batch-size" in capsys.readouterr().err


def chromium_missing() -> str | None:
    if not Path("/usr/bin/chromium").exists():
        return "Debian chromium is not installed (/usr/bin/chromium); .ci/run installs it"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the playwright python package is not installed (pip install -e '.[dev]')"
    return None


@pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing()))
def test_browser_upload_ask_and_caption(app, corpus_dir):
    service, url = app
    image, question = first_question(corpus_dir)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "demo-screenshot.png"
    result = subprocess.run(
        [sys.executable, str(REPO / "demo" / "screenshot.py"), "--url", url, "--image", image,
         "--question", question, "--caption-task", "caption", "--out", str(shot)],
        capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    picture = Image.open(image).convert("RGB")
    assert seen["answer"] == service.model.generate([picture], [question], adapter="vqa")[0]
    assert seen["caption"] == service.model.generate([picture], adapter="caption")[0]
    assert seen["outside_requests"] == []  # the page works with no network
    assert shot.stat().st_size > 10_000
