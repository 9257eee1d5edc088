"""The serving batcher: requests that wait together run as one mixed-adapter batch, each with
the answer it gets alone; a failing request fails alone and the others are still answered."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from conftest import mixed_adapter_model
from dept_vl.batching import MixedBatcher

LONG = "what color is the small circle left of the large square in the picture ?"
REQUESTS = [("a", "what color is the circle ?"), ("short", LONG), ("cap", ""), ("b", LONG),
            ("a", "how many objects are there ?"), ("short", "is there a red ?")]


@pytest.fixture(scope="module")
def model():
    # "short" reads at most 6 text tokens: a batch with longer questions must not change it
    return mixed_adapter_model({"a": (3, 2, 24), "b": (6, 0, 24), "short": (2, 2, 6)})


def picture(i):
    return Image.new("RGB", (32, 32), ((60 * i) % 256, 200 - 20 * i, 40 + 30 * i))


def run_held(model, monkeypatch, requests, max_batch_size=8):
    """Answer request 0 while the model is held busy, queue the rest meanwhile, then release:
    (the sizes of the batches `generate` got, each request's answer or exception)."""
    release, sizes, generate = threading.Event(), [], model.generate

    def held_generate(images, texts, adapter):
        sizes.append(len(images))
        release.wait(timeout=30)
        return generate(images, texts, adapter=adapter)

    monkeypatch.setattr(model, "generate", held_generate)
    batcher = MixedBatcher(model, max_batch_size)

    def ask(i):
        name, text = requests[i]
        try:
            return batcher.answer(picture(i), text, name)
        except Exception as error:  # noqa: BLE001 - returned for the test to check
            return error

    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        first = pool.submit(ask, 0)
        while not sizes:
            time.sleep(0.01)
        rest = [pool.submit(ask, i) for i in range(1, len(requests))]
        deadline = time.monotonic() + 30
        while batcher._waiting.qsize() < len(requests) - 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        release.set()
        answers = [first.result()] + [f.result() for f in rest]
    return sizes, answers, batcher


def alone(model, requests):
    """Each request's answer from `generate` on its own (None for an unknown adapter)."""
    return [model.generate([picture(i)], [text], adapter=name)[0] if name in model.adapters
            else None for i, (name, text) in enumerate(requests)]


def test_waiting_requests_run_as_one_mixed_batch_with_their_own_answers(model, monkeypatch):
    expected = alone(model, REQUESTS)
    sizes, answers, batcher = run_held(model, monkeypatch, REQUESTS)
    assert sizes == [1, len(REQUESTS) - 1]
    assert batcher.batch_sizes == {1: 1, len(REQUESTS) - 1: 1}
    assert answers == expected


def test_batches_hold_at_most_max_batch_size(model, monkeypatch):
    sizes, answers, _ = run_held(model, monkeypatch, REQUESTS, max_batch_size=2)
    assert sizes == [1, 2, 2, 1]
    assert answers == alone(model, REQUESTS)


def test_a_failing_request_fails_alone(model, monkeypatch):
    requests = REQUESTS[:3] + [("missing", "what color is the circle ?")] + REQUESTS[3:]
    expected = alone(model, requests)
    sizes, answers, batcher = run_held(model, monkeypatch, requests)
    assert isinstance(answers[3], KeyError) and "missing" in str(answers[3])
    assert answers[:3] + answers[4:] == expected[:3] + expected[4:]
    # the failed batch of 6 was retried one request at a time
    assert sizes == [1, 6, 1, 1, 1, 1, 1, 1]
    assert batcher.batch_sizes == {1: 6}


def test_max_batch_size_must_be_positive(model):
    with pytest.raises(ValueError, match="max_batch_size"):
        MixedBatcher(model, 0)
