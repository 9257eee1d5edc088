"""Dynamic padding vs padding every input to s (the official DePT code's behaviour) on
VQA-length questions: one DePT(60, 30) forward and train step per batch."""

from __future__ import annotations

import random
from typing import Any

import torch

from benchmarks.common import bench_device, interleaved, pin_threads
from benchmarks.methods import VISUAL_TOKENS, build, inference, train_step
from dept_vl.tables import markdown_table

QUESTION_TOKENS = (6, 20)  # VQAv2 questions: about 6-7 words, 8-20 T5 tokens with the prefix


def batches(model: Any, batch: int, max_length: int, seed: int = 0) -> dict[str, dict]:
    rng = random.Random(seed)
    lengths = [rng.randint(*QUESTION_TOKENS) for _ in range(batch)]
    longest = max(lengths)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 32000, (batch, max_length), generator=generator)
    mask = torch.zeros(batch, max_length, dtype=torch.long)
    for i, length in enumerate(lengths):
        mask[i, :length] = 1
    ids = ids * mask
    common = {"visual_features": torch.randn(batch, VISUAL_TOKENS, model.vision.feature_dim,
                                             generator=generator),
              "labels": torch.randint(3, 32000, (batch, 4), generator=generator)}
    cases = {"dynamic": {"input_ids": ids[:, :longest], "attention_mask": mask[:, :longest],
                         **common},
             "pad_to_s": {"input_ids": ids, "attention_mask": mask, **common}}
    return {case: {name: tensor.to(bench_device()) for name, tensor in tensors.items()}
            for case, tensors in cases.items()}


def run(shape: str, batch_size: int, warmup: int, repeats: int) -> dict[str, Any]:
    pin_threads()
    model, adapter, params = build(shape, "dept60_30")
    data = batches(model, batch_size, model.get_adapter(adapter).config.max_length)
    infer = interleaved({k: inference(model, adapter, b) for k, b in data.items()}, warmup, repeats)
    train = interleaved({k: train_step(model, adapter, params, b) for k, b in data.items()},
                        warmup, repeats)
    return {"shape": shape, "batch_size": batch_size,
            "dynamic_length": int(data["dynamic"]["input_ids"].shape[1]),
            "padded_length": int(data["pad_to_s"]["input_ids"].shape[1]),
            "inference": infer, "train": train}


def table(results: dict[str, Any]) -> str:
    rows = []
    for mode in ("inference", "train"):
        dynamic, padded = results[mode]["dynamic"]["median"], results[mode]["pad_to_s"]["median"]
        rows.append({"mode": mode, "dynamic": f"{dynamic * 1000:.0f}",
                     "padded": f"{padded * 1000:.0f}", "speedup": f"{padded / dynamic:.2f}x"})
    return (f"T5 {results['shape']}, DePT(60, 30), batch {results['batch_size']}: text padded to "
            f"the longest question ({results['dynamic_length']} tokens) vs to s = "
            f"{results['padded_length']}; median ms per batch.\n\n"
            + markdown_table(rows, [("mode", "mode"), ("dynamic", "dynamic padding ms"),
                              ("padded", "pad to s ms"), ("speedup", "speed-up")]))
