"""A mixed batch of 4 adapters in one forward vs the same examples as 4 single-adapter batches:
throughput, and whether the outputs agree."""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.common import interleaved, pin_threads
from benchmarks.methods import build, inputs
from dept_vl import DePTConfig, VLT5
from dept_vl.tables import markdown_table

ADAPTERS = ("a", "b", "c", "d")


def with_adapters(shape: str) -> VLT5:
    """A random VL-T5 of `shape` in eval mode with the 4 VQA DePT(60, 30) adapters `ADAPTERS`,
    each with its own non-zero B (B starts at zero, which would make the adapters alike)."""
    model, _, _ = build(shape, "none")
    for i, name in enumerate(ADAPTERS):
        adapter = model.add_adapter(name, DePTConfig(prompt_length=60, rank=30, max_length=256,
                                                     task_prefix="vqa:"))
        with torch.no_grad():
            adapter.tuner.lowrank_B.normal_(std=0.02 * (i + 1))
    return model.eval()


def run(shape: str, batch_size: int, warmup: int, repeats: int) -> dict[str, Any]:
    pin_threads()
    model = with_adapters(shape)
    batch = inputs(model, batch_size)
    batch.pop("labels")
    batch["decoder_input_ids"] = torch.zeros(batch_size, 1, dtype=torch.long,
                                             device=batch["input_ids"].device)
    names = [ADAPTERS[i % len(ADAPTERS)] for i in range(batch_size)]
    groups = {name: [i for i, n in enumerate(names) if n == name] for name in ADAPTERS}

    def encoder_input(adapter: Any, rows: list[int]) -> tuple:
        return model.build_inputs(batch["input_ids"][rows], batch["attention_mask"][rows],
                                  visual_features=batch["visual_features"][rows], adapter=adapter)

    def mixed() -> torch.Tensor:
        with torch.inference_mode():
            embeds, mask = encoder_input(names, list(range(batch_size)))
            return model.t5.encoder(inputs_embeds=embeds, attention_mask=mask).last_hidden_state

    def single() -> list[torch.Tensor]:
        with torch.inference_mode():
            out = []
            for name, rows in groups.items():
                embeds, mask = encoder_input(name, rows)
                out.append(model.t5.encoder(inputs_embeds=embeds,
                                            attention_mask=mask).last_hidden_state)
            return out

    mixed_out, single_out = mixed(), single()
    worst = 0.0
    for name, rows in groups.items():
        width = single_out[ADAPTERS.index(name)].shape[1]
        real = mixed_out[rows][:, :width]
        worst = max(worst, float((real - single_out[ADAPTERS.index(name)]).abs().max()))
    times = interleaved({"mixed": mixed, "single": single}, warmup, repeats)
    return {"shape": shape, "batch_size": batch_size, "adapters": len(ADAPTERS),
            "max_abs_difference": worst, **times}


def table(results: dict[str, Any]) -> str:
    mixed, single = results["mixed"]["median"], results["single"]["median"]
    rows = [{"how": "one mixed batch", "ms": f"{mixed * 1000:.0f}",
             "throughput": f"{results['batch_size'] / mixed:.1f}"},
            {"how": f"{results['adapters']} single-adapter batches", "ms": f"{single * 1000:.0f}",
             "throughput": f"{results['batch_size'] / single:.1f}"}]
    return (f"T5 {results['shape']} encoder, {results['adapters']} DePT(60, 30) adapters, "
            f"{results['batch_size']} examples; mixed ÷ single throughput = "
            f"{single / mixed:.2f}; largest difference of the outputs "
            f"{results['max_abs_difference']:.1e}.\n\n"
            + markdown_table(rows, [("how", "how"), ("ms", "median ms"),
                              ("throughput", "examples / s")]))
