"""Markdown results table from the eval_results.json files that training runs leave behind.

    python -m dept_vl.report runs/quickstart runs/quickstart-pt runs/quickstart-full

Each argument is a run directory holding eval_results.json (one job) or <job>/eval_results.json
(several jobs, as the quickstart writes). The README's tables are this command's output.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _job_results(run: Path) -> list[dict[str, Any]]:
    single = run / "eval_results.json"
    found = [single] if single.is_file() and "method" in json.loads(single.read_text()) else []
    found += sorted(run.glob("*/eval_results.json"))
    if not found:
        raise FileNotFoundError(f"{run}: no eval_results.json (did the run finish?)")
    return [json.loads(path.read_text()) for path in found]


def _fmt(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) else "–"


def vqa_table(results: list[dict[str, Any]]) -> str:
    types = sorted({t for r in results for t in r.get("vqa_accuracy_by_type", {})})
    head = ["method", "trainable params", "VQA acc", "reserved types", "pretrained types",
            *types, "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        by_type = r.get("vqa_accuracy_by_type", {})
        cells = [r["method"], f"{r['trainable_parameters']:,}", _fmt(r.get("vqa_accuracy")),
                 _fmt(r.get("vqa_accuracy_reserved_types")),
                 _fmt(r.get("vqa_accuracy_pretrained_types")),
                 *[_fmt(by_type.get(t)) for t in types], _fmt(r.get("train_seconds"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def caption_table(results: list[dict[str, Any]]) -> str:
    head = ["method", "trainable params", "BLEU-4", "CIDEr", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        lines.append("| " + " | ".join([r["method"], f"{r['trainable_parameters']:,}",
                                        _fmt(r.get("bleu4")), _fmt(r.get("cider")),
                                        _fmt(r.get("train_seconds"))]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    results = [r for run in args.runs for r in _job_results(run)]
    vqa = [r for r in results if r["task"] == "vqa"]
    captions = [r for r in results if r["task"] == "caption"]
    if vqa:
        print("VQA (test split, accuracy %)\n\n" + vqa_table(vqa) + "\n")
    if captions:
        print("Captioning (test split)\n\n" + caption_table(captions) + "\n")


if __name__ == "__main__":
    main()
