"""Gradio demo: ask questions about an image, or caption it, with any number of adapters (DePT,
PT, LoRA, ... any saved dept_vl adapter) loaded side by side on one frozen backbone (switching
task switches adapter, nothing reloads). Its command line, `dept-vl-demo`, is
dept_vl/cli/demo.py.

Each adapter records the backbone it was trained on (a backbone directory, `builtin`, or the
T5 and timm encoder a run built by name), so the demo builds it again; weights that differ
from the ones the adapter was trained on are refused, naming the files.

Requests that arrive together are answered together: `MixedBatcher` runs them as one
mixed-adapter batch (a VQA question and a caption and another adapter's question share the
backbone pass of their task; a LoRA adapter's requests, which change T5's own weights, get a
pass of their own), with the same answers as one at a time.

Safe by default: binds to 127.0.0.1 (or gradio's own GRADIO_SERVER_NAME / GRADIO_SERVER_PORT
when --host / --port are not given), no share link, analytics off, system fonts only (the page
makes no request outside the server), a bounded queue, and a file-size limit. Images are
accepted as uploaded files only: the server never fetches a URL for a client (an API caller's
image URL, or gradio's `/file=<url>` route), so it cannot be made to request anything from
where it runs. Every bad input (no image, a URL, a file that is not an image, an empty or
overlong question, a task with no adapter) is a `gr.Error` with a message that says what to
do; the app keeps answering afterwards. An API call without a task uses the first adapter.
"""

from __future__ import annotations

import json
import os
import re
import struct
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

import gradio as gr  # noqa: E402
from PIL import Image  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402

from dept_vl.batching import MixedBatcher  # noqa: E402
from dept_vl.errors import UserError  # noqa: E402
from dept_vl.images import to_rgb  # noqa: E402
from dept_vl.model import BACKBONE_MANIFEST, VLT5, resolve_backbone  # noqa: E402
from dept_vl.tasks import get_task, task_input  # noqa: E402

DEFAULT_ADAPTERS = {"vqa": "runs/quickstart/vqa/adapter",
                    "caption": "runs/quickstart/caption/adapter"}
DEFAULT_EXAMPLES = "runs/shapes"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
MAX_QUESTION_CHARS = 300
MAX_IMAGE_SIDE = 1024  # larger uploads are downscaled first (the encoder resizes anyway)
MAX_FILE_SIZE = "10mb"
# system fonts: the default theme would fetch Google Fonts, a request outside this machine
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "monospace"])
QUICKSTART_HINT = ("run the quickstart first (`dept-vl-train`, which writes them), or pass "
                   "--adapter NAME=DIR")


class DemoError(UserError, ValueError):
    """The demo cannot start: a missing backbone or adapter, or a bad --adapter argument."""


# any "scheme://": gradio downloads http(s) paths itself, and nothing else is an upload either
_URL = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*://")
# gradio's GET /gradio_api/file=<url> fetches a public URL for any caller and streams it back
# ("://", so that a Windows path such as /file=C:/... is still served)
_FILE_ROUTE_URL = re.compile(r"/file=\s*[A-Za-z][A-Za-z0-9+.-]*://")
# what PIL (and to_rgb, for a mode it cannot convert) raise for a file it cannot decode
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error,
                Image.DecompressionBombError)
URL_REFUSED = ("this demo does not fetch URLs ({url}); images are accepted as uploaded files "
               "only: download the image and upload the file")


def is_url(path: Any) -> bool:
    return isinstance(path, str) and _URL.match(path) is not None


def url_refused(url: str) -> gr.Error:
    shown = url if len(url) <= 100 else url[:97] + "..."
    return gr.Error(URL_REFUSED.format(url=shown))


def unreadable_image_error(payload: Any, error: Exception) -> gr.Error:
    name = getattr(payload, "orig_name", None) or "the uploaded file"
    return gr.Error(f"{name} is not an image this demo can read ({error.__class__.__name__}); "
                    "upload a PNG, JPEG or WebP image")


def uploads_only(image: gr.Image) -> gr.Image:
    """Accept uploaded files only, and make gradio's own decoding of an upload that is not an
    image (or has too many pixels) end in a clear gr.Error, not a bare server error.

    Gradio downloads an input whose path is a URL when it moves the request's files into its
    cache (`async_move_resource_to_block_cache`), before `preprocess` and before our function
    run: a URL is refused there, so no request leaves the server, and again in `preprocess`
    (a payload marked as a stream skips the cache step). Wrapped on the instance: a gr.Image
    subclass would make gradio write a .pyi stub into this package at import."""
    move, move_async, decode = (image.move_resource_to_block_cache,
                                image.async_move_resource_to_block_cache, image.preprocess)

    def move_resource_to_block_cache(path: Any) -> Any:
        if is_url(path):
            raise url_refused(path)
        return move(path)

    async def async_move_resource_to_block_cache(path: Any) -> Any:
        if is_url(path):
            raise url_refused(path)
        return await move_async(path)

    def preprocess(payload: Any) -> Any:
        if payload is not None and is_url(payload.path):
            raise url_refused(payload.path)
        try:
            return decode(payload)
        except IMAGE_ERRORS as error:
            raise unreadable_image_error(payload, error) from None

    image.move_resource_to_block_cache = move_resource_to_block_cache  # type: ignore
    image.async_move_resource_to_block_cache = async_move_resource_to_block_cache  # type: ignore
    image.preprocess = preprocess  # type: ignore[method-assign]
    return image


class NoUrlFetches:
    """ASGI middleware that answers gradio's `/file=<url>` route with 403 before gradio fetches
    the URL (it would stream any public address to any caller: an open relay)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and _FILE_ROUTE_URL.search(scope.get("path", "")):
            url = scope["path"].split("/file=", 1)[1]
            refused = JSONResponse({"detail": URL_REFUSED.format(url=url)}, status_code=403)
            await refused(scope, receive, send)
            return
        await self.app(scope, receive, send)


class DemoService:
    """The loaded backbone and adapters, and the one function the UI and the API call."""

    def __init__(self, backbone: str | Path | None, adapters: dict[str, str | Path],
                 max_batch_size: int = 16):
        """`backbone` None: the one the first adapter records (`VLT5.from_adapter`); every
        other adapter must have been trained on the same weights."""
        named = backbone is not None
        if named and not (resolve_backbone(backbone) / BACKBONE_MANIFEST).is_file():
            raise DemoError(f"backbone {backbone} not found; {QUICKSTART_HINT}")
        missing = {n: d for n, d in adapters.items() if not (Path(d) / "adapter_config.json").is_file()}
        if missing:
            raise DemoError(f"adapter(s) not found: {missing}; {QUICKSTART_HINT}")
        if not adapters:
            raise DemoError(f"no adapters given; {QUICKSTART_HINT}")
        (first, directory), *others = adapters.items()
        self.model = VLT5.from_adapter(directory, backbone, name=first).eval()
        for name, directory in others:
            self.model.load_adapter(directory, name=name)
        self.batcher = MixedBatcher(self.model, max_batch_size)

    @property
    def default_task(self) -> str:
        """The first adapter: what an API call that names no task (None) gets."""
        return next(iter(self.model.adapters))

    @property
    def tasks(self) -> list[tuple[str, str]]:
        """(label, adapter name) for the task selector."""
        return [(f"{name} ({get_task(self.model.adapter_task(name)).label}, "
                 f"{self.model.get_adapter(name).method})", name) for name in self.model.adapters]

    def load_image(self, path: str | None) -> Image.Image:
        if not path:
            raise gr.Error("no image: upload an image (or click an example) first")
        try:
            with Image.open(path) as opened:
                image = to_rgb(opened)  # 16-bit scaled, alpha on white: what training sees
        except IMAGE_ERRORS as error:
            raise unreadable_image_error(None, error) from None
        if max(image.size) > MAX_IMAGE_SIDE:
            image.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))
        return image

    def check_question(self, adapter: str, question: str | None) -> str:
        """The question a VQA adapter needs (empty for captioning, which ignores it)."""
        kind = self.model.adapter_task(adapter)
        if not get_task(kind).uses_text:
            return ""
        text = (question or "").strip()
        if not text:
            raise gr.Error("the question is empty: type a question about the image")
        if len(text) > MAX_QUESTION_CHARS:
            raise gr.Error(f"the question has {len(text)} characters; at most "
                           f"{MAX_QUESTION_CHARS} are accepted")
        tokens = len(self.model.tokenizer(task_input(kind, text))["input_ids"])
        limit = self.model.get_adapter(adapter).config.max_length
        if tokens > limit:
            raise gr.Error(f"the question is {tokens} tokens long; adapter {adapter!r} reads at "
                           f"most {limit}")
        return text

    def answer(self, image: str | None, question: str | None, task: str | None
               ) -> tuple[str, str]:
        """(answer or caption, time taken) for one image. Every check runs here, on the
        request's own thread, so a bad request fails alone before it joins a batch."""
        start = time.perf_counter()
        if task is None:  # an API client that leaves the task out
            task = self.default_task
        if task not in self.model.adapters:
            raise gr.Error(f"task {task!r} has no adapter loaded; choose one of "
                           f"{list(self.model.adapters)}")
        text = self.check_question(task, question)
        picture = self.load_image(image)
        output = self.batcher.answer(picture, text, task)
        return output, f"{time.perf_counter() - start:.2f} s"


def corpus_examples(corpus: str | Path, kinds: dict[str, str], count: int = 3) -> list[list[str]]:
    """[image, question, adapter] rows from the built-in corpus' test split, for one-click
    trying: `count` images with questions of different types, each under every adapter
    (`kinds`: adapter name → task kind; captioning rows leave the question empty)."""
    rows_file = Path(corpus) / "test_vqa.jsonl"
    if not rows_file.is_file():
        return []
    examples, seen_types, seen_images = [], set(), set()
    for line in rows_file.read_text().splitlines()[:200]:
        row = json.loads(line)
        if len(seen_types) >= count or row.get("question_type") in seen_types \
                or row["image"] in seen_images:
            continue
        seen_types.add(row.get("question_type"))
        seen_images.add(row["image"])
        image = str(Path(corpus) / row["image"])
        for adapter, kind in kinds.items():
            examples.append([image, row["question"] if get_task(kind).uses_text else "", adapter])
    return examples


def build_demo(service: DemoService, examples: list[list[str]] | None = None,
               max_queue: int = 64) -> gr.Blocks:
    """The page and its `answer` endpoint, with a bounded queue that lets as many requests in
    at once as one batch holds (they wait together in the batcher)."""
    tasks = service.tasks
    with gr.Blocks(title="dept_vl demo", analytics_enabled=False) as demo:
        gr.Markdown("## dept_vl: adapters on a frozen VL-T5\nUpload an image, pick a task, "
                    "ask a question (captioning ignores it).")
        with gr.Row():
            with gr.Column():
                # image_mode=None: the file reaches load_image as uploaded (gradio's own
                # conversion to RGB turns 16-bit PNGs white and drops alpha)
                image = uploads_only(gr.Image(type="filepath", label="Image", elem_id="image",
                                              sources=["upload", "clipboard"], image_mode=None))
                # custom values reach `answer`, which names the loaded adapters (API callers)
                task = gr.Dropdown(choices=tasks, value=tasks[0][1], label="Task",
                                   elem_id="task", allow_custom_value=True)
                question = gr.Textbox(label="Question", placeholder="what color is the circle ?",
                                      max_lines=2, elem_id="question")
                submit = gr.Button("Submit", variant="primary", elem_id="submit")
            with gr.Column():
                answer = gr.Textbox(label="Answer", interactive=False, elem_id="answer")
                elapsed = gr.Textbox(label="Time taken", interactive=False, elem_id="time")
        if examples:
            gr.Examples(examples=examples, inputs=[image, question, task],
                        label="Examples from the built-in corpus")
        submit.click(service.answer, inputs=[image, question, task], outputs=[answer, elapsed],
                     api_name="answer")
        # a new task or image clears the old answer (in the browser: no server round trip)
        for changed in (task, image):
            changed.change(fn=None, js="() => ['', '']", outputs=[answer, elapsed])
    demo.queue(max_size=max_queue, default_concurrency_limit=service.batcher.max_batch_size)
    return demo


def launch(demo: gr.Blocks, host: str, port: int, **options: Any) -> None:
    """Start the server with the demo's safety settings: no share link, the file-size limit,
    system fonts, and gradio's `/file=<url>` fetching refused."""
    demo.launch(server_name=host, server_port=port, share=False, max_file_size=MAX_FILE_SIZE,
                theme=THEME, app_kwargs={"middleware": [Middleware(NoUrlFetches)]}, **options)


if __name__ == "__main__":  # `python -m dept_vl.demo`: the same command as dept-vl-demo
    from dept_vl.cli.demo import cli

    cli()
