"""DePT(60, 30) vs PT(100) vs ADePT(60, r) vs LoRA (peft) vs the no-prompt frozen backbone vs
full fine-tuning: train-step time, inference latency and peak memory at T5 small / base / large
shapes (random init), s = 256 text tokens plus V visual tokens. ADePT's r is the one whose budget
is closest to DePT(60, 30)'s at each shape (`adept_split`: r = 19 at base, 749 short of 76,800).

ADePT's offset network runs on every row by default; `adept_inference` times that against
running it once per distinct embedding row (`torch.unique`), on the benchmark's batch (all 256
tokens distinct: dedup can only cost) and on a padded batch of short questions over a small
vocabulary (most rows repeat: dedup can pay), for the module alone and for the whole forward.

Times are interleaved in one process per shape; peak memory is measured per method in a fresh
process (`python -m benchmarks.methods --probe ...`), so no method inherits another's heap:
PyTorch's allocator peak (exact; the acceptance ratio) and the process's RSS growth (what the
OS sees, allocator overhead included, but sampled and noisy).

`checkpointing_memory` measures what gradient checkpointing (`gradient_checkpointing: true`)
saves: DePT(60, 30)'s train-step peak with T5 recomputing its blocks in backward and without.
Memory only (no times), so it can run alone on a busy machine:

    python -m benchmarks.methods --checkpointing-memory base large
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Callable

import torch
from transformers import T5Config

from benchmarks.common import (
    T5_SHAPES, AllocatorPeak, RSSPeak, bench_device, in_fresh_process, interleaved, pin_threads,
)
from dept_vl import ADePTConfig, DePTConfig, VLT5, adept_split, dept_budget
from dept_vl.methods.adept import ADePTPrompt
from dept_vl.tables import markdown_table
from dept_vl.tokenization import build_word_tokenizer

METHODS = ("none", "pt100", "dept60_30", "adept60", "lora", "full")
VISUAL_TOKENS = 36
TEXT_TOKENS = 256
TARGET_TOKENS = 8


def build(shape: str, method: str, seed: int = 0) -> tuple[VLT5, str | None, list]:
    """A random VL-T5 of `shape` set up for `method`: (model, adapter name, trainable params)."""
    torch.manual_seed(seed)
    tokenizer = build_word_tokenizer(["a b c d"])
    config = T5Config(vocab_size=32128, num_decoder_layers=T5_SHAPES[shape]["num_layers"],
                      dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                      **T5_SHAPES[shape])
    model = VLT5.from_components(config, "test_vit", tokenizer=tokenizer, image_size=32,
                                 max_text_length=TEXT_TOKENS)
    adapter = None
    if method in ("pt100", "dept60_30"):
        m, r = (100, 0) if method == "pt100" else (60, 30)
        adapter = model.add_adapter("bench", DePTConfig(prompt_length=m, rank=r,
                                                        max_length=TEXT_TOKENS))
    elif method == "adept60":
        # DePT(60, 30)'s budget (PT(100)'s at base), with m = 60 (ADePT's count moves in
        # steps of 2d+1, so it is met only to within d)
        budget = dept_budget(60, 30, TEXT_TOKENS, model.d_model)
        rank = adept_split(budget, model.d_model, prompt_length=60).rank
        adapter = model.add_adapter("bench", ADePTConfig(prompt_length=60, rank=rank,
                                                         max_length=TEXT_TOKENS))
    elif method == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        # rank 2 on the encoder's self-attention q and v: 73,728 parameters at base (PT's 76,800)
        inject_adapter_in_model(LoraConfig(
            r=2, lora_alpha=4, target_modules=r".*encoder\.block\.\d+\.layer\.0\.SelfAttention\.(q|v)"),
            model.t5)
    elif method == "full":
        model.unfreeze_backbone()
    if method == "none":
        model.projection.requires_grad_(True)
    model.to(bench_device())
    return model, ("bench" if adapter is not None else None), [
        p for p in model.parameters() if p.requires_grad]


def inputs(model: VLT5, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tensors = {
        "input_ids": torch.randint(3, 32000, (batch, TEXT_TOKENS), generator=generator),
        "attention_mask": torch.ones(batch, TEXT_TOKENS, dtype=torch.long),
        "visual_features": torch.randn(batch, VISUAL_TOKENS, model.vision.feature_dim,
                                       generator=generator),
        "labels": torch.randint(3, 32000, (batch, TARGET_TOKENS), generator=generator),
    }
    return {name: tensor.to(bench_device()) for name, tensor in tensors.items()}


def train_step(model: VLT5, adapter: str | None, params: list, batch: dict) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        model.train()
        loss = model(**batch, adapter=adapter).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def inference(model: VLT5, adapter: str | None, batch: dict) -> Callable[[], None]:
    def forward() -> None:
        model.eval()
        with torch.inference_mode():
            model(**batch, adapter=adapter)
    return forward


QUESTIONS = 32  # ADePT's repeated-rows batch: 32 questions of at most 16 tokens = 512 rows,
QUESTION_TOKENS = 16  # as many as the benchmark batch's 2 × 256
QUESTION_VOCABULARY = 40  # about the shapes corpus' question words


def question_batch(model: VLT5, seed: int = 0) -> dict[str, torch.Tensor]:
    """Short questions over a small vocabulary, right-padded to the longest: most rows repeat."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 3 + QUESTION_VOCABULARY, (QUESTIONS, QUESTION_TOKENS),
                        generator=generator)
    lengths = torch.randint(6, QUESTION_TOKENS + 1, (QUESTIONS,), generator=generator)
    mask = (torch.arange(QUESTION_TOKENS) < lengths[:, None]).long()
    tensors = {"input_ids": ids * mask, "attention_mask": mask,
               "visual_features": torch.randn(QUESTIONS, VISUAL_TOKENS, model.vision.feature_dim,
                                              generator=generator),
               "labels": torch.randint(3, 32000, (QUESTIONS, TARGET_TOKENS), generator=generator)}
    return {name: tensor.to(bench_device()) for name, tensor in tensors.items()}


def adept_inference(shape: str, batch_size: int, warmup: int, repeats: int) -> dict[str, Any]:
    """ADePT at inference with and without deduplicated rows: the offset update alone and the
    whole forward, on the benchmark batch (distinct rows) and on `question_batch` (repeats)."""
    model, name, _ = build(shape, "adept60")
    module = model.get_adapter(name).tuner
    batches = {"distinct": inputs(model, batch_size), "repeated": question_batch(model)}
    cases: dict[str, Callable[[], None]] = {}
    rows: dict[str, dict[str, int]] = {}
    for case, batch in batches.items():
        with torch.inference_mode():
            embeds = model.t5.get_input_embeddings()(batch["input_ids"])
        flat = embeds.reshape(-1, embeds.shape[-1])
        rows[case] = {"rows": flat.shape[0], "distinct": len(torch.unique(flat, dim=0))}
        for dedup in (True, False):
            mode = "dedup" if dedup else "direct"
            cases[f"{case}/update/{mode}"] = _adept_call(module, dedup, module.update, embeds)
            cases[f"{case}/forward/{mode}"] = _adept_call(
                module, dedup, inference(model, name, batch))
    return {"rows": rows, "times": interleaved(cases, warmup, repeats)}


def _adept_call(module: ADePTPrompt, dedup: bool, fn: Callable[..., Any], *args: Any
                ) -> Callable[[], None]:
    def call() -> None:
        module.dedup_at_inference = dedup  # an instance attribute: this module only
        with torch.inference_mode():
            fn(*args)
    return call


def probe(shape: str, method: str, batch_size: int, mode: str, checkpointing: bool = False
          ) -> dict[str, Any]:
    """In a fresh process: the peak memory of one forward + backward (train) or forward
    (inference) above the model's weights, i.e. activations and gradients. The optimizer state
    is left out: it is allocated once, not per step. RSS is read on the first pass, while the
    heap is still fresh; the allocator peak on a second one (it counts tensors, not pages, so a
    warm heap does not change it). `checkpointing`: T5 recomputes its blocks in backward."""
    model, adapter, params = build(shape, method)
    if checkpointing:
        model.enable_gradient_checkpointing()
    batch = inputs(model, batch_size)

    def train() -> None:
        model.train()
        model(**batch, adapter=adapter).loss.backward()
        model.zero_grad(set_to_none=True)

    fn = train if mode == "train" else inference(model, adapter, batch)
    with RSSPeak() as rss:
        fn()
    with AllocatorPeak() as allocated:
        fn()
    return {"peak_allocated_mb": allocated.peak / 2**20, "peak_rss_growth_mb": rss.growth / 2**20,
            "trainable_parameters": sum(p.numel() for p in params)}


CHECKPOINTED = "dept60_30"  # the method whose train memory is measured with checkpointing


def memory(shape: str, method: str, batch_size: int, mode: str, fresh: bool = True,
           checkpointing: bool = False) -> dict[str, Any]:
    """`probe` in a fresh process; `fresh=False` (quick runs, which check the machinery, not the
    numbers) in this one, which saves a process start per probe but warms the heap first."""
    if not fresh:
        return probe(shape, method, batch_size, mode, checkpointing)
    flag = ["--checkpointing"] if checkpointing else []
    return in_fresh_process("benchmarks.methods", [
        "--probe", shape, method, str(batch_size), mode, *flag])


def checkpointing_memory(shape: str, batch_size: int, without: dict[str, Any] | None = None,
                         fresh: bool = True) -> dict[str, Any]:
    """DePT(60, 30)'s train-step peak memory without and with gradient checkpointing, each in a
    fresh process; `without`: that probe already taken (the methods table's)."""
    def measure(checkpointing: bool) -> dict[str, Any]:
        return memory(shape, CHECKPOINTED, batch_size, "train", fresh, checkpointing)
    return {"method": CHECKPOINTED, "off": without or measure(False), "on": measure(True)}


def run(shapes: list[str], batch_size: int, warmup: int, repeats: int,
        methods: tuple[str, ...] = METHODS, fresh_processes: bool = True) -> dict[str, Any]:
    pin_threads()
    results: dict[str, Any] = {"text_tokens": TEXT_TOKENS, "visual_tokens": VISUAL_TOKENS,
                               "batch_size": batch_size, "shapes": {},
                               "memory_probes": "fresh process" if fresh_processes else
                               "this process (quick run: the numbers mean little)"}
    for shape in shapes:
        built = {m: build(shape, m) for m in methods}
        batches = {m: inputs(built[m][0], batch_size) for m in methods}
        train = interleaved({m: train_step(*built[m], batches[m]) for m in methods},
                            warmup, repeats)
        infer = interleaved({m: inference(built[m][0], built[m][1], batches[m])
                             for m in methods}, warmup, repeats)
        del built
        peaks = {m: {mode: memory(shape, m, batch_size, mode, fresh_processes)
                     for mode in ("train", "inference")} for m in methods}
        results["shapes"][shape] = {
            "train": train, "inference": infer, "memory": peaks,
            "checkpointing": checkpointing_memory(
                shape, batch_size, peaks.get(CHECKPOINTED, {}).get("train"), fresh_processes)}
        if "adept60" in methods:
            results["shapes"][shape]["adept_inference"] = adept_inference(
                shape, batch_size, warmup, repeats)
    return results


def table(results: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    s, v = results["text_tokens"], results["visual_tokens"]
    token_ratio = (s + 60 + v) / (s + 100 + v)
    rows = []
    for shape, data in results["shapes"].items():
        pt = {"train": data["train"]["pt100"]["median"],
              "infer": data["inference"]["pt100"]["median"],
              **{f"{key}_{mode}": data["memory"]["pt100"][mode][key]
                 for key in ("peak_allocated_mb", "peak_rss_growth_mb")
                 for mode in ("train", "inference")}}
        none_train = data["train"]["none"]["median"]
        for method in data["train"]:
            train, infer = data["train"][method], data["inference"][method]
            memory = data["memory"][method]
            row = {
                "shape": shape, "method": method,
                "params": f"{memory['train']['trainable_parameters']:,}",
                "train": f"{train['median']:.3f} ({train['min']:.3f}–{train['max']:.3f})",
                "train_vs_pt": f"{train['median'] / pt['train']:.3f}",
                "train_vs_none": f"{train['median'] / none_train:.3f}",
                "infer": f"{infer['median'] * 1000:.0f}",
                "infer_vs_pt": f"{infer['median'] / pt['infer']:.3f}",
            }
            for mode in ("train", "inference"):
                for key, label in (("peak_allocated_mb", "mem"), ("peak_rss_growth_mb", "rss")):
                    value = memory[mode][key]
                    row[f"{label}_{mode}"] = f"{value:.0f} ({value / pt[f'{key}_{mode}']:.3f})"
            rows.append(row)
    head = (f"Token-count ratio DePT/PT = (s+60+V)/(s+100+V) = ({s}+60+{v})/({s}+100+{v}) = "
            f"{token_ratio:.3f}. Times: median (min–max) over repeats, interleaved. Memory, "
            "each method in a fresh process, in MB with ÷ PT(100) in brackets: *allocated* is "
            "the peak of PyTorch's allocator above the weights during one forward + backward "
            "(train) or forward (inference), from torch.profiler's memory events (exact); "
            "*RSS* is the process's resident-memory growth over the first such pass, sampled "
            "from /proc every 2 ms (it adds allocator and library overhead, and is noisy).\n\n")
    return head + markdown_table(rows, [
        ("shape", "T5 shape"), ("method", "method"), ("params", "trainable"),
        ("train", "train step s"), ("train_vs_pt", "÷ PT(100)"), ("train_vs_none", "÷ no prompt"),
        ("infer", "inference ms"), ("infer_vs_pt", "÷ PT(100)"),
        ("mem_train", "train allocated MB"), ("mem_inference", "inference allocated MB"),
        ("rss_train", "train RSS MB"), ("rss_inference", "inference RSS MB")]) \
        + adept_table(results) + checkpointing_table(results), rows


def checkpointing_table(results: dict[str, Any]) -> str:
    """Train-step peak memory without and with gradient checkpointing, per shape."""
    rows = []
    for shape, data in results["shapes"].items():
        found = data.get("checkpointing")
        if not found:
            continue
        row: dict[str, Any] = {"shape": shape, "method": found["method"]}
        for key, label in (("peak_allocated_mb", "mem"), ("peak_rss_growth_mb", "rss")):
            off, on = found["off"][key], found["on"][key]
            row.update({f"{label}_off": f"{off:.0f}", f"{label}_on": f"{on:.0f}",
                        f"{label}_ratio": f"{on / off:.3f}"})
        rows.append(row)
    if not rows:
        return ""
    return ("\n\nGradient checkpointing (`gradient_checkpointing: true`): the train step's peak "
            "memory above the weights (one forward + backward, batch "
            f"{results['batch_size']}, {results['text_tokens']} text + 60 prompt + "
            f"{results['visual_tokens']} visual tokens), T5 keeping its activations (off) or "
            "recomputing each block in backward (on); MB, each in a fresh process.\n\n"
            + markdown_table(rows, [
                ("shape", "T5 shape"), ("method", "method"), ("mem_off", "allocated off"),
                ("mem_on", "allocated on"), ("mem_ratio", "on ÷ off"), ("rss_off", "RSS off"),
                ("rss_on", "RSS on"), ("rss_ratio", "on ÷ off")]))


def adept_table(results: dict[str, Any]) -> str:
    """ADePT inference, offset network once per distinct row (dedup) vs on every row (direct)."""
    rows = []
    for shape, data in results["shapes"].items():
        found = data.get("adept_inference")
        for case, count in (found or {}).get("rows", {}).items():
            times = {f"{part}/{mode}": found["times"][f"{case}/{part}/{mode}"]["median"]
                     for part in ("update", "forward") for mode in ("dedup", "direct")}
            rows.append({
                "shape": shape, "case": case, "rows": f"{count['distinct']} of {count['rows']}",
                **{key: f"{value * 1000:.2f}" for key, value in times.items()},
                **{f"{part}_ratio": f"{times[f'{part}/dedup'] / times[f'{part}/direct']:.3f}"
                   for part in ("update", "forward")}})
    if not rows:
        return ""
    return ("\n\nADePT at inference: its offset network run once per distinct embedding row "
            "(dedup, torch.unique) or on every row (direct, the default); the outputs are "
            "bit-identical on CPU (tests/test_adept.py). *distinct*: the benchmark batch "
            f"(every token different); *repeated*: {QUESTIONS} questions of at most "
            f"{QUESTION_TOKENS} tokens over {QUESTION_VOCABULARY} words, right-padded. "
            "Medians in ms.\n\n" + markdown_table(rows, [
                ("shape", "T5 shape"), ("case", "batch"), ("rows", "distinct rows"),
                ("update/dedup", "update dedup"), ("update/direct", "update direct"),
                ("update_ratio", "÷ direct"), ("forward/dedup", "forward dedup"),
                ("forward/direct", "forward direct"), ("forward_ratio", "÷ direct")]))


def plot(results: dict[str, Any]) -> Callable[[Any], Any]:
    def draw(plt: Any) -> Any:
        figure, ax = plt.subplots(figsize=(7, 4))
        shapes = list(results["shapes"])
        for method in ("dept60_30", "adept60", "lora", "none", "full"):
            ratios = [results["shapes"][s]["train"][method]["median"]
                      / results["shapes"][s]["train"]["pt100"]["median"] for s in shapes
                      if method in results["shapes"][s]["train"]]
            ax.plot(shapes[:len(ratios)], ratios, marker="o", label=method)
        s, v = results["text_tokens"], results["visual_tokens"]
        ax.axhline((s + 60 + v) / (s + 100 + v), linestyle="--", color="gray",
                   label="token ratio DePT/PT")
        ax.axhline(1.0, color="black", linewidth=0.5)
        ax.set_ylabel("train step time ÷ PT(100)")
        ax.set_xlabel("T5 shape")
        ax.legend(fontsize=8)
        return figure
    return draw


def main() -> None:
    parser = argparse.ArgumentParser()
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--probe", nargs=4, metavar=("SHAPE", "METHOD", "BATCH", "MODE"))
    action.add_argument("--checkpointing-memory", nargs="+", metavar="SHAPE",
                        choices=sorted(T5_SHAPES))
    parser.add_argument("--checkpointing", action="store_true",
                        help="with --probe: T5 recomputes its blocks in backward")
    parser.add_argument("--batch-size", type=int, default=2)
    args = parser.parse_args()
    pin_threads()
    if args.probe:
        shape, method, batch, mode = args.probe
        print(json.dumps(probe(shape, method, int(batch), mode, args.checkpointing)))
        return
    results = {"text_tokens": TEXT_TOKENS, "visual_tokens": VISUAL_TOKENS,
               "batch_size": args.batch_size,
               "shapes": {shape: {"checkpointing": checkpointing_memory(shape, args.batch_size)}
                          for shape in args.checkpointing_memory}}
    print(json.dumps(results, indent=2))
    print(checkpointing_table(results).strip())


if __name__ == "__main__":
    main()
