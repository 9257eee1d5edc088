"""The Gradio demo: the API answers what VLT5.generate answers, bad input gets a clear error and
the app keeps answering, 20 concurrent requests (batched by the server) each get their own
answer, image URLs are refused without being fetched, an API call without a task gets the first
adapter, gradio's GRADIO_SERVER_NAME / GRADIO_SERVER_PORT are honoured, and a real headless
Chromium can use the page (skipped, with the reason, only when Chromium is not installed)."""

import http.server
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

from dept_vl import DePTConfig, VLT5  # noqa: E402
from dept_vl.cli.demo import main, parse_adapters, server_address  # noqa: E402
from dept_vl.demo import (  # noqa: E402
    DemoError, DemoService, build_demo, corpus_examples, launch,
)
from dept_vl.errors import run_cli  # noqa: E402
from dept_vl.images import to_rgb  # noqa: E402

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
    launch(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
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
    assert run_cli(main, ["--backbone", str(tmp_path / "nothing")]) == 2
    assert "run the quickstart first (`dept-vl-train`" in capsys.readouterr().err
    with pytest.raises(DemoError, match=r"adapter\(s\) not found: .*dept-vl-train"):
        DemoService(None, {"vqa": str(tmp_path / "no-adapter")})
    with pytest.raises(DemoError, match="NAME=DIR"):
        parse_adapters(["no-equals-sign"])
    assert parse_adapters(["a=x", "b=y"]) == {"a": "x", "b": "y"}
    with pytest.raises(SystemExit) as stop:
        main(["--max-batch-size", "0"])
    assert stop.value.code == 2
    assert "--max-batch-size" in capsys.readouterr().err


class ImageServer(http.server.ThreadingHTTPServer):
    """A PNG on 127.0.0.1 that records every connection made to it (contacted = fetched)."""

    def __init__(self):
        self.contacts: list[str] = []
        picture = io.BytesIO()
        Image.new("RGB", (16, 16), (200, 30, 30)).save(picture, "PNG")
        png = picture.getvalue()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(png)))
                self.end_headers()
                self.wfile.write(png)

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.timeout = 5

    def verify_request(self, request, client_address):  # every connection, even a TLS hello
        self.contacts.append(str(client_address))
        return True

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.server_address[1]}/shape.png"


@pytest.fixture
def image_server(monkeypatch):
    """The PNG server, standing in for a public host: gradio's own downloader refuses loopback
    addresses, so its address check is told 127.0.0.1 is public (and refuses every other
    host, so nothing outside this machine is ever asked), as it would pass a public address."""
    import safehttpx

    async def treat_loopback_as_public(hostname):
        if hostname != "127.0.0.1":
            raise ValueError(f"test: {hostname} is not the local stand-in")
        return hostname

    monkeypatch.setattr(safehttpx, "async_validate_url", treat_loopback_as_public)
    server = ImageServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def raw_call(url: str, *data) -> str:
    """One call of the answer endpoint through gradio's plain HTTP API (no gradio_client, so
    the payload reaches the server exactly as written): the event stream's text."""
    import httpx

    with httpx.Client(base_url=url, timeout=60) as http:
        posted = http.post("gradio_api/call/answer", json={"data": list(data)})
        posted.raise_for_status()
        return http.get(f"gradio_api/call/answer/{posted.json()['event_id']}").text


def test_image_urls_are_refused_before_any_request_leaves_the_server(app, image_server,
                                                                     corpus_dir):
    """However a client passes a URL (gradio_client's handle_file; a FileData with an http or
    https path, or marked as a stream; gradio's GET /file=<url> route), the request fails with
    the demo's clear error and the URL is never fetched. (An upper-case `HTTP://` is no URL to
    gradio: it refuses it as a file outside its upload folder, with its own error.)"""
    service, url = app
    client = Client(url, verbose=False)
    image, question = first_question(corpus_dir)
    with pytest.raises(Exception, match="does not fetch URLs"):
        client.predict(handle_file(image_server.url()), question, "vqa", api_name="/answer")
    meta = {"_type": "gradio.FileData"}
    for payload, message in [
        ({"path": image_server.url(), "url": image_server.url(), "meta": meta}, True),
        ({"path": image_server.url("https"), "meta": meta}, True),
        ({"path": image_server.url(), "meta": meta, "is_stream": True}, True),
        ({"path": image_server.url("HTTP"), "meta": meta}, False),
    ]:
        answer = raw_call(url, payload, question, "vqa")
        assert answer.startswith("event: error"), (payload, answer)
        assert ("does not fetch URLs" in answer) == message, (payload, answer)
    import httpx

    proxied = httpx.get(f"{url}gradio_api/file={image_server.url()}", timeout=30)
    assert proxied.status_code == 403 and "does not fetch URLs" in proxied.text
    assert image_server.contacts == []
    # uploads still work afterwards
    answer, _ = client.predict(handle_file(image), question, "vqa", api_name="/answer")
    assert answer == service.model.generate([Image.open(image).convert("RGB")], [question],
                                            adapter="vqa")[0]


def test_uploads_reach_the_model_as_training_sees_them(app, corpus_dir, tmp_path, monkeypatch):
    """A 16-bit PNG and an RGBA PNG arrive at the model as `to_rgb` makes them (scaled; alpha
    composited on white), not as gradio's own RGB conversion (white; alpha dropped)."""
    service, url = app
    _, question = first_question(corpus_dir)
    ramp = Image.new("I;16", (32, 32))
    ramp.putdata([(x * 2000 + y * 40) for y in range(32) for x in range(32)])
    cutout = Image.new("RGBA", (32, 32), (255, 0, 0, 0))  # transparent red
    cutout.paste((0, 0, 255, 255), (8, 8, 24, 24))  # an opaque blue square
    seen = []
    batched = service.batcher.answer
    monkeypatch.setattr(service.batcher, "answer",
                        lambda picture, *rest: seen.append(picture) or batched(picture, *rest))
    client = Client(url, verbose=False)
    for name, picture in (("ramp16.png", ramp), ("cutout.png", cutout)):
        picture.save(tmp_path / name)
        client.predict(handle_file(str(tmp_path / name)), question, "vqa", api_name="/answer")
        expected = to_rgb(Image.open(tmp_path / name))
        assert seen[-1].mode == "RGB" and seen[-1].tobytes() == expected.tobytes(), name
    assert seen[0].getpixel((31, 31)) == to_rgb(ramp).getpixel((31, 31)) != (255, 255, 255)
    assert seen[1].getpixel((0, 0)) == (255, 255, 255) and seen[1].getpixel((9, 9)) == (0, 0, 255)


def test_a_missing_task_means_the_first_adapter(app, corpus_dir):
    service, url = app
    image, question = first_question(corpus_dir)
    expected = service.model.generate([Image.open(image).convert("RGB")], [question],
                                      adapter="vqa")[0]
    assert service.answer(image, question, None)[0] == expected
    client = Client(url, verbose=False)
    assert client.predict(handle_file(image), question, None, api_name="/answer")[0] == expected


@pytest.mark.parametrize("host, port, environ, expected", [
    (None, None, {}, ("127.0.0.1", 7860)),
    (None, None, {"GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "8123"},
     ("0.0.0.0", 8123)),
    ("10.1.2.3", 9000, {"GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "8123"},
     ("10.1.2.3", 9000)),
    (None, 9000, {"GRADIO_SERVER_PORT": "8123"}, ("127.0.0.1", 9000)),
    ("::1", None, {"GRADIO_SERVER_PORT": " 8124 "}, ("::1", 8124)),
    (None, None, {"GRADIO_SERVER_NAME": "", "GRADIO_SERVER_PORT": ""}, ("127.0.0.1", 7860)),
], ids=["defaults", "environment", "flags-win", "port-flag-only", "host-flag-only",
        "empty-variables"])
def test_server_address_flags_then_gradio_environment_then_localhost(host, port, environ,
                                                                     expected):
    assert server_address(host, port, environ) == expected


@pytest.mark.parametrize("value", ["abc", "0", "70000", "-1", "80.5"])
def test_a_bad_gradio_server_port_is_named(value):
    with pytest.raises(DemoError, match=f"GRADIO_SERVER_PORT: .*{value}"):
        server_address(None, None, {"GRADIO_SERVER_PORT": value})


def test_main_listens_where_the_environment_says(backbone, adapters, monkeypatch):
    """Without --host / --port, the demo launches on GRADIO_SERVER_NAME / GRADIO_SERVER_PORT
    (the launch itself is recorded, not run); with them, the flags win."""
    import gradio

    launched = []
    monkeypatch.setattr(gradio.Blocks, "launch",
                        lambda self, **kw: launched.append((kw["server_name"], kw["server_port"])))
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "8123")
    argv = ["--backbone", backbone, "--adapter", f"vqa={adapters['vqa']}", "--examples", "none"]
    main(argv)
    main(argv + ["--host", "127.0.0.1", "--port", "9000"])
    assert launched == [("0.0.0.0", 8123), ("127.0.0.1", 9000)]


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
