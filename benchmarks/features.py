"""Training epochs with the frozen image encoder run on the fly vs read from the feature cache,
with a ViT-shaped timm encoder; the two loss curves are compared as well."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader
from transformers import T5Config

from benchmarks.common import T5_SHAPES, interleaved, pin_threads, timed
from dept_vl import DePTConfig, VLT5
from dept_vl.data.collate import RecordDataset, VLCollator
from dept_vl.data.records import VQARecord
from dept_vl.tables import markdown_table
from dept_vl.tokenization import build_word_tokenizer
from dept_vl.vision import FeatureCache

WORDS = "vqa: what color is the circle square red green blue yes no ?"


def make_records(folder: Path, count: int, size: int) -> list[VQARecord]:
    records = []
    for i in range(count):
        path = folder / f"{i}.png"
        Image.effect_noise((size, size), 40 + i % 50).convert("RGB").save(path)
        records.append(VQARecord(id=str(i), image=str(path), question="what color is the circle ?",
                                 answers=("red",)))
    return records


def run(shape: str, encoder: str, image_size: int, images: int, batch_size: int, warmup: int,
        repeats: int) -> dict[str, Any]:
    pin_threads()
    torch.manual_seed(0)
    tokenizer = build_word_tokenizer([WORDS])
    config = T5Config(vocab_size=len(tokenizer), num_decoder_layers=T5_SHAPES[shape]["num_layers"],
                      dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                      **T5_SHAPES[shape])
    model = VLT5.from_components(config, encoder, tokenizer=tokenizer, image_size=image_size,
                                 num_visual_tokens=36)
    adapter = model.add_adapter("bench", DePTConfig(prompt_length=60, rank=30, max_length=32))
    folder = Path(tempfile.mkdtemp(prefix="dept_vl-bench-"))
    records = make_records(folder, images, image_size)
    cache = FeatureCache(folder / "cache", model.vision)
    build_seconds = timed(lambda: cache.build([r.image for r in records], batch_size))
    initial = {k: v.clone() for k, v in adapter.state_dict().items()}

    def epoch(feature_cache: FeatureCache | None, losses: list[float] | None = None) -> None:
        adapter.load_state_dict(initial)  # every epoch from the same start: comparable losses
        optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-3)
        collator = VLCollator(model.tokenizer, model.vision.transform, 32, train=False,
                              feature_cache=feature_cache)
        model.train()
        for batch in DataLoader(RecordDataset(records), batch_size=batch_size,
                                collate_fn=collator):
            loss = model(batch["input_ids"], batch["attention_mask"], batch.get("pixel_values"),
                         labels=batch["labels"], visual_features=batch.get("visual_features"),
                         adapter="bench").loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if losses is not None:
                losses.append(loss.item())

    curves: dict[str, list[float]] = {"on_the_fly": [], "cached": []}
    epoch(None, curves["on_the_fly"])
    epoch(cache, curves["cached"])
    times = interleaved({"on_the_fly": lambda: epoch(None), "cached": lambda: epoch(cache)},
                        warmup, repeats)
    difference = max(abs(a - b) for a, b in zip(curves["on_the_fly"], curves["cached"]))
    return {"shape": shape, "encoder": encoder, "image_size": image_size, "images": images,
            "batch_size": batch_size, "cache_build_seconds": build_seconds,
            "loss_curve": curves, "max_loss_difference": difference, **times}


def table(results: dict[str, Any]) -> str:
    fly, cached = results["on_the_fly"]["median"], results["cached"]["median"]
    rows = [{"how": "encoder on the fly", "s": f"{fly:.2f}"},
            {"how": "cached features", "s": f"{cached:.2f}"}]
    return (f"One DePT(60, 30) training epoch over {results['images']} images (batch "
            f"{results['batch_size']}), T5 {results['shape']}, timm `{results['encoder']}` at "
            f"{results['image_size']} px: **{fly / cached:.1f}x faster with the cache** (built "
            f"once in {results['cache_build_seconds']:.1f} s); largest difference between the two "
            f"loss curves {results['max_loss_difference']:.1e}.\n\n"
            + markdown_table(rows, [("how", "how"), ("s", "median s / epoch")]))
