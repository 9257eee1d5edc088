"""The demo's serving path: N requests arriving at once for 4 DePT adapters, answered by
`MixedBatcher` in mixed-adapter batches vs one request at a time (max_batch_size=1, what the
demo did before): throughput, and whether every answer is the same."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PIL import Image

from benchmarks.common import interleaved, pin_threads
from benchmarks.mixed import ADAPTERS, with_adapters
from dept_vl.batching import MixedBatcher
from dept_vl.tables import markdown_table

WORDS = "a b c d".split()


def requests(count: int, seed: int = 0) -> list[tuple[Image.Image, str, str]]:
    """(image, VQA-length question, adapter) per request, adapters taken in turn."""
    rng = random.Random(seed)
    return [(Image.effect_noise((32, 32), 20 + i).convert("RGB"),
             " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))),
             ADAPTERS[i % len(ADAPTERS)]) for i in range(count)]


def run(shape: str, requests_at_once: int, warmup: int, repeats: int) -> dict[str, Any]:
    pin_threads()
    model = with_adapters(shape)
    work = requests(requests_at_once)
    batchers = {"batched": MixedBatcher(model, max_batch_size=requests_at_once),
                "one_at_a_time": MixedBatcher(model, max_batch_size=1)}
    pool = ThreadPoolExecutor(max_workers=requests_at_once)

    def serve(batcher: MixedBatcher) -> list[str]:
        return list(pool.map(lambda request: batcher.answer(*request), work))

    answers = {name: serve(batcher) for name, batcher in batchers.items()}
    times = interleaved({name: lambda b=batcher: serve(b) for name, batcher in batchers.items()},
                        warmup, repeats)
    pool.shutdown()
    return {"shape": shape, "requests": requests_at_once, "adapters": len(ADAPTERS),
            "same_answers": answers["batched"] == answers["one_at_a_time"],
            "batch_sizes": {name: dict(b.batch_sizes) for name, b in batchers.items()}, **times}


def table(results: dict[str, Any]) -> str:
    batched, single = results["batched"]["median"], results["one_at_a_time"]["median"]
    rows = [{"how": how, "s": f"{results[key]['median']:.2f}",
             "rate": f"{results['requests'] / results[key]['median']:.1f}"}
            for key, how in (("batched", "MixedBatcher (mixed-adapter batches)"),
                             ("one_at_a_time", "one request at a time"))]
    return (f"T5 {results['shape']}, {results['adapters']} DePT(60, 30) VQA adapters, "
            f"{results['requests']} requests arriving at once (greedy decoding, up to 8 "
            f"tokens): **{single / batched:.2f}x the throughput with batching**; identical "
            f"answers: {results['same_answers']}.\n\n"
            + markdown_table(rows, [("how", "how"), ("s", "median s for all"),
                              ("rate", "requests / s")]))
