"""Training epochs with the frozen image encoder run on the fly vs read from the feature cache,
with a ViT-shaped timm encoder; the two loss curves are compared as well. And building the
cache: peak memory growth at two image counts (a fresh process each, so one build's heap does
not hide the other's), images/s and bytes on disk per image, pooled to 36 tokens in fp16.

    python -m benchmarks.features --images 1024 [--encoder vit_base_patch16_224 ...]  # one probe
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader
from transformers import T5Config

from benchmarks.common import (
    T5_SHAPES,
    RSSPeak,
    in_fresh_process,
    interleaved,
    pin_threads,
    timed,
)
from dept_vl import VLT5, DePTConfig
from dept_vl.data.collate import RecordDataset, VLCollator
from dept_vl.data.records import VQARecord
from dept_vl.tables import markdown_table
from dept_vl.tokenization import build_word_tokenizer
from dept_vl.vision import ImageEncoder, VisionConfig
from dept_vl.feature_cache import FeatureCache

WORDS = "vqa: what color is the circle square red green blue yes no ?"


def make_records(folder: Path, count: int, size: int) -> list[VQARecord]:
    records = []
    for i in range(count):
        path = folder / f"{i}.png"
        Image.effect_noise((size, size), 40 + i % 50).convert("RGB").save(path)
        records.append(VQARecord(id=str(i), image=str(path), question="what color is the circle ?",
                                 answers=("red",)))
    return records


def linked_images(folder: Path, count: int, size: int, distinct: int = 32) -> list[str]:
    """`count` image files for a cache build: `distinct` noise images, each hard-linked under
    many names (the cache keys files by path, so every name is one image to encode) — large
    counts without gigabytes of PNGs."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i}.png"
        if not path.exists():
            if i < distinct:
                Image.effect_noise((size, size), 40 + i).convert("RGB").save(path)
            else:
                os.link(folder / f"{i % distinct}.png", path)
        paths.append(str(path))
    return paths


def build_probe(encoder: str, image_size: int, images: int, batch_size: int, folder: str,
                device: str = "cpu", pool_tokens: int | None = 36, dtype: str = "float16"
                ) -> dict[str, Any]:
    """Build a fresh cache of `images` images in this process: peak RSS growth over the build
    (the encoder, on `device`, and the file list exist before), seconds, images/s and bytes on
    disk. On a GPU the RSS is the host side only: the batch's activations live on the GPU."""
    pin_threads()
    torch.manual_seed(0)
    vision = ImageEncoder(VisionConfig(model_name=encoder, image_size=image_size)).eval()
    vision.to(device)
    paths = linked_images(Path(folder), images, image_size)
    with tempfile.TemporaryDirectory() as root:
        cache = FeatureCache(root, vision, pool_tokens=pool_tokens, dtype=dtype)
        with RSSPeak() as peak:
            start = time.perf_counter()
            cache.build(paths, batch_size)
            seconds = time.perf_counter() - start
        on_disk = sum(f.stat().st_size for f in cache.dir.glob("features-*.safetensors"))
    return {"images": images, "rss_growth_mb": peak.growth / 2**20, "seconds": seconds,
            "images_per_s": images / seconds, "bytes_per_image": on_disk / images,
            "pool_tokens": pool_tokens, "dtype": dtype, "batch_size": batch_size,
            "device": device}


def build_memory(encoder: str, image_size: int, counts: list[int], batch_size: int,
                 device: str = "cpu") -> dict[str, Any]:
    """`build_probe` at each count, each in a fresh process; the growth ratio of the largest
    count to the smallest (flat memory: about 1, whatever the ratio of the counts)."""
    with tempfile.TemporaryDirectory(prefix="dept_vl-bench-images-") as folder:
        linked_images(Path(folder), max(counts), image_size)
        probes = [in_fresh_process("benchmarks.features", [
            "--encoder", encoder, "--image-size", str(image_size), "--images", str(count),
            "--batch-size", str(batch_size), "--folder", folder, "--device", device,
            "--in-process"])
            for count in counts]
    return {"cache_build": probes,
            "rss_growth_ratio": probes[-1]["rss_growth_mb"] / probes[0]["rss_growth_mb"]}


def memory_table(results: dict[str, Any]) -> str:
    rows = [{"images": p["images"], "rss": f"{p['rss_growth_mb']:.0f}",
             "kb": f"{p['bytes_per_image'] / 1000:.1f}", "rate": f"{p['images_per_s']:.1f}"}
            for p in results["cache_build"]]
    first, last = results["cache_build"][0], results["cache_build"][-1]
    return (f"Building the feature cache (timm `{results['encoder']}` at "
            f"{results['image_size']} px, pooled to {first['pool_tokens']} tokens, "
            f"{first['dtype']}, batch {first['batch_size']}, encoder on "
            f"{first['device']}): peak memory growth at "
            f"{last['images']} images is **{results['rss_growth_ratio']:.2f}x** the growth at "
            f"{first['images']} ({last['images'] / first['images']:.0f}x the images).\n\n"
            + markdown_table(rows, [("images", "images"), ("rss", "peak RSS growth (MB)"),
                                    ("kb", "KB / image on disk"), ("rate", "images / s")]))


def run(shape: str, encoder: str, image_size: int, images: int, batch_size: int, warmup: int,
        repeats: int, memory_images: list[int] | None = None) -> dict[str, Any]:
    """The epoch comparison at `images`, and the cache build's memory at `memory_images`
    (default 16x and 64x `images`: 1,024 and 4,096 in the measured setting)."""
    memory = build_memory(encoder, image_size, memory_images or [16 * images, 64 * images],
                          batch_size)
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
    # float32: exact, so the two loss curves agree to float rounding
    cache = FeatureCache(folder / "cache", model.vision, pool_tokens=36, dtype="float32")
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
            "loss_curve": curves, "max_loss_difference": difference, **times, **memory}


def table(results: dict[str, Any]) -> str:
    fly, cached = results["on_the_fly"]["median"], results["cached"]["median"]
    rows = [{"how": "encoder on the fly", "s": f"{fly:.2f}"},
            {"how": "cached features", "s": f"{cached:.2f}"}]
    return (f"One DePT(60, 30) training epoch over {results['images']} images (batch "
            f"{results['batch_size']}), T5 {results['shape']}, timm `{results['encoder']}` at "
            f"{results['image_size']} px: **{fly / cached:.1f}x faster with the cache** (built "
            f"once in {results['cache_build_seconds']:.1f} s); largest difference between the two "
            f"loss curves {results['max_loss_difference']:.1e}.\n\n"
            + markdown_table(rows, [("how", "how"), ("s", "median s / epoch")])
            + "\n\n" + memory_table(results))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.features",
                                     description="peak memory of feature cache builds")
    parser.add_argument("--encoder", default="vit_base_patch16_224")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu", help="where the encoder runs (cpu, cuda)")
    parser.add_argument("--folder", help="image folder (--in-process)")
    parser.add_argument("--in-process", action="store_true",
                        help="one probe in this process (how build_memory runs each count)")
    args = parser.parse_args(argv)
    if args.in_process:
        print(json.dumps(build_probe(args.encoder, args.image_size, args.images[0],
                                     args.batch_size, args.folder, args.device)))
        return
    results = {"encoder": args.encoder, "image_size": args.image_size,
               **build_memory(args.encoder, args.image_size, args.images, args.batch_size,
                              args.device)}
    print(json.dumps(results, indent=2))
    print(memory_table(results))


if __name__ == "__main__":
    main()
