"""Run the benchmarks and write JSON + markdown + PNG per benchmark, plus `summary.md`.

    python -m benchmarks.run --suite all            # the measured setting (about half an hour)
    python -m benchmarks.run --suite all --quick    # tiny shapes, a few repeats (CI)
    python -m benchmarks.run --suite methods,padding --out runs/benchmarks
    python -m benchmarks.run --suite methods_large --out runs/benchmarks-large   # T5-large shape
    python -m benchmarks.run --suite scale --images 2000 --steps 300   # paper-scale rehearsal
    python -m benchmarks.run --suite scale --quick                     # its tiny CI version

With a GPU, methods, padding, mixed and serving run on it (CUDA events, torch.cuda.max_memory_allocated);
features always runs on the CPU, where its data loading happens.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks import features, methods, mixed, padding, scale, serving
from benchmarks.common import device_name, pin_threads, write_outputs

SUITES = ("methods", "padding", "features", "mixed", "serving")
# not in "all": T5-large on a CPU takes a long time; the scale rehearsal needs a GPU at full size
EXTRA_SUITES = ("methods_large", "scale")
# (full setting, quick setting) keyword arguments of each benchmark's run()
SETTINGS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # the measured setting is sized for a 2-core CPU; on a GPU add "large" to methods' shapes
    "methods": ({"shapes": ["small", "base"], "batch_size": 2, "warmup": 1, "repeats": 5},
                {"shapes": ["tiny"], "batch_size": 2, "warmup": 1, "repeats": 2,
                 "fresh_processes": False}),
    "padding": ({"shape": "small", "batch_size": 16, "warmup": 1, "repeats": 3},
                {"shape": "tiny", "batch_size": 8, "warmup": 1, "repeats": 2}),
    "features": ({"shape": "small", "encoder": "vit_base_patch16_224", "image_size": 224,
                  "images": 64, "batch_size": 16, "warmup": 1, "repeats": 3},
                 {"shape": "tiny", "encoder": "test_vit", "image_size": 32, "images": 8,
                  "batch_size": 4, "warmup": 0, "repeats": 2}),
    # full fine-tuning left out at large: its weights plus optimizer state would need more memory
    # than the others' five models together on a 24 GiB machine
    "methods_large": ({"shapes": ["large"], "batch_size": 2, "warmup": 1, "repeats": 5,
                       "methods": ("none", "pt100", "dept60_30", "lora")},
                      {"shapes": ["tiny"], "batch_size": 2, "warmup": 1, "repeats": 2,
                       "methods": ("none", "pt100", "dept60_30", "lora"),
                       "fresh_processes": False}),
    "mixed": ({"shape": "small", "batch_size": 16, "warmup": 1, "repeats": 3},
              {"shape": "tiny", "batch_size": 8, "warmup": 1, "repeats": 2}),
    "serving": ({"shape": "small", "requests_at_once": 16, "warmup": 1, "repeats": 3},
                {"shape": "tiny", "requests_at_once": 8, "warmup": 0, "repeats": 2}),
    # configs/vqav2_t5base_vit.yaml's shapes; quick: one process only (torchrun's start-up
    # alone would double its time in CI), tiny T5 and timm's test_vit at 64 px
    "scale": ({"images": 2000, "steps": 300, "processes": (1, 2), "shape": "base",
               "encoder": "vit_base_patch16_clip_224.openai", "image_size": None,
               "num_visual_tokens": 36, "eval_examples": 500, "warmup": 1, "repeats": 5},
              {"images": 16, "steps": 4, "processes": (1,), "shape": "tiny", "encoder": "test_vit",
               "image_size": 64, "num_visual_tokens": 4, "batch_size": 4, "eval_batch_size": 8,
               "eval_examples": 8, "warmup": 1, "repeats": 3}),
}
# command-line options that change the scale suite's setting
SCALE_OPTIONS = ("images", "steps", "processes", "batch_size")


def run_suite(name: str, quick: bool, out: Path, changes: dict[str, Any] | None = None) -> str:
    """One benchmark at its (quick) setting, `changes` applied; its files written to `out`."""
    module = {"methods": methods, "methods_large": methods, "padding": padding,
              "features": features, "mixed": mixed, "serving": serving, "scale": scale}[name]
    settings = {**SETTINGS[name][1 if quick else 0], **(changes or {})}
    if module is scale:
        settings["log_dir"] = str(out / "scale-logs")
    start = time.perf_counter()
    results = module.run(**settings)
    results["device"] = device_name()
    results["wall_seconds"] = round(time.perf_counter() - start, 1)
    made = module.table(results)
    text = made[0] if module is methods else made
    plot = module.plot(results) if hasattr(module, "plot") else _bar_plot(name, results)
    write_outputs(out, name, results, text, plot)
    return f"## {name}\n\n{text}\n"


def _bar_plot(name: str, results: dict[str, Any]) -> Callable[[Any], Any]:
    """Median time per case (the cases each benchmark timed), with min–max as error bars."""
    def draw(plt: Any) -> Any:
        groups = {k: v for k, v in results.items() if isinstance(v, dict) and "median" in v} or {
            f"{mode}/{case}": v for mode in ("inference", "train")
            for case, v in results.get(mode, {}).items()}
        figure, ax = plt.subplots(figsize=(6, 3.5))
        labels = list(groups)
        medians = [groups[k]["median"] for k in labels]
        spread = [[m - groups[k]["min"] for k, m in zip(labels, medians)],
                  [groups[k]["max"] - m for k, m in zip(labels, medians)]]
        ax.bar(labels, medians, yerr=spread, capsize=4)
        ax.set_ylabel("seconds (median)")
        ax.set_title(name)
        return figure
    return draw


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run")
    parser.add_argument("--suite", default="all", help=f"all, or a comma list of {SUITES}")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few repeats (CI)")
    parser.add_argument("--out", default=None, help="default runs/benchmarks[-quick]")
    parser.add_argument("--images", type=int, help="scale: generated COCO images")
    parser.add_argument("--steps", type=int, help="scale: training steps (checkpoint half way)")
    parser.add_argument("--processes", type=lambda v: tuple(map(int, v.split(","))),
                        help="scale: process counts to run, e.g. 1,2")
    parser.add_argument("--batch-size", type=int, help="scale: global batch (default: "
                        "the config's 32)")
    args = parser.parse_args(argv)
    changes = {k: getattr(args, k) for k in SCALE_OPTIONS if getattr(args, k) is not None}
    names = SUITES if args.suite == "all" else tuple(args.suite.split(","))
    unknown = sorted(set(names) - set(SUITES) - set(EXTRA_SUITES))
    if unknown:
        parser.error(f"unknown suite(s) {unknown}; choose from {SUITES + EXTRA_SUITES}")
    out = Path(args.out or ("runs/benchmarks-quick" if args.quick else "runs/benchmarks"))
    pin_threads()
    parts = [f"# Benchmarks ({device_name()}{', quick' if args.quick else ''})\n"]
    for name in names:
        print(f"[benchmarks] {name} ...", flush=True)
        parts.append(run_suite(name, args.quick, out, changes if name == "scale" else None))
    (out / "summary.md").write_text("\n".join(parts))
    print(f"[benchmarks] wrote {out}/summary.md and <suite>.json / .md / .png", flush=True)
    return out


if __name__ == "__main__":
    main()
