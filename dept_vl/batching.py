"""Dynamic batching for serving: requests that arrive while the model is busy are answered
together in one mixed-adapter `generate` call, each with its own adapter, so the answers equal
one-by-one runs. `generate` makes the passes through the frozen backbone: one per task for
every prompt adapter, and one per task for each adapter that changes T5's weights (LoRA).

Gradio's own `batch=True` is not used: it fails every request of a batch when one of them
raises, while here each request is checked on its own thread first and a failing batch is
retried one request at a time, so a bad request only ever fails itself.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
from PIL import Image

from dept_vl.model import VLT5

logger = logging.getLogger(__name__)


@dataclass
class Request:
    image: Image.Image
    text: str
    adapter: str
    answer: Future = field(default_factory=Future)


class MixedBatcher:
    """One worker thread owns the model; `answer` blocks its caller until its batch is done.

    The worker takes everything waiting (up to `max_batch_size`) the moment it is free, so an
    idle server adds no delay and a busy one batches whatever piled up meanwhile."""

    def __init__(self, model: VLT5, max_batch_size: int = 16):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model = model
        self.max_batch_size = max_batch_size
        self.batch_sizes: Counter[int] = Counter()  # batch size -> batches run (logs, tests)
        self._waiting: queue.SimpleQueue[Request] = queue.SimpleQueue()
        threading.Thread(target=self._serve, name="dept_vl-batcher", daemon=True).start()

    def answer(self, image: Image.Image, text: str, adapter: str) -> str:
        request = Request(image, text, adapter)
        self._waiting.put(request)
        return request.answer.result()

    def _serve(self) -> None:
        while True:
            batch = [self._waiting.get()]
            while len(batch) < self.max_batch_size:
                try:
                    batch.append(self._waiting.get_nowait())
                except queue.Empty:
                    break
            self._run(batch)

    def _run(self, batch: list[Request]) -> None:
        try:
            with torch.inference_mode():
                answers = self.model.generate([r.image for r in batch], [r.text for r in batch],
                                              adapter=[r.adapter for r in batch])
        except Exception as error:  # noqa: BLE001 - handed to the waiting caller(s)
            if len(batch) == 1:
                batch[0].answer.set_exception(error)
                return
            logger.warning("a batch of %d failed (%s); answering its requests one by one",
                           len(batch), error)
            for request in batch:
                self._run([request])
            return
        self.batch_sizes[len(batch)] += 1
        for request, text in zip(batch, answers):
            request.answer.set_result(text)
