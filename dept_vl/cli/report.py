"""`dept-vl-report`: markdown results tables from the eval_results.json files training runs leave.

    dept-vl-report runs/quickstart runs/quickstart-pt runs/quickstart-full

Each argument is a run directory holding eval_results.json (one job) or <job>/eval_results.json
(several jobs, as the quickstart writes). The README's tables are this command's output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from dept_vl.errors import ResultsError, run_cli
from dept_vl.tables import markdown_table


def _job_results(run: Path) -> list[dict[str, Any]]:
    single = run / "eval_results.json"
    found = [single] if single.is_file() and "method" in json.loads(single.read_text()) else []
    found += sorted(run.glob("*/eval_results.json"))
    if not found:
        raise ResultsError(f"{run}: no eval_results.json (did the run finish?)")
    return [json.loads(path.read_text()) for path in found]


FROZEN = "frozen backbone, no adapter"


def with_frozen(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each result preceded by its frozen-backbone row when the run measured one
    (`evaluate_frozen`), so a table shows what the adapter added."""
    rows = []
    for result in results:
        frozen = result.get("frozen_backbone")
        if frozen and "tasks" not in frozen:
            rows.append({**frozen, "task": result["task"], "method": FROZEN,
                         "trainable_parameters": 0})
        rows.append(result)
    return rows


def _fmt(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) else "–"


def vqa_table(results: list[dict[str, Any]]) -> str:
    types = sorted({t for r in results for t in r.get("vqa_accuracy_by_type", {})})
    rows = [{**r, **{f"type:{t}": r.get("vqa_accuracy_by_type", {}).get(t) for t in types}}
            for r in results]
    columns = [("method", "method"), ("trainable_parameters", "trainable params"),
               ("vqa_accuracy", "VQA acc"), ("vqa_accuracy_reserved_types", "reserved types"),
               ("vqa_accuracy_pretrained_types", "pretrained types"),
               *[(f"type:{t}", t) for t in types], ("train_seconds", "train s")]
    return markdown_table(rows, columns, _formats(columns))


def caption_table(results: list[dict[str, Any]]) -> str:
    columns = [("method", "method"), ("trainable_parameters", "trainable params"),
               ("bleu4", "BLEU-4"), ("cider", "CIDEr"), ("train_seconds", "train s")]
    return markdown_table(results, columns, _formats(columns))


def _formats(columns: list[tuple[str, str]]) -> dict[str, Callable[[Any], str]]:
    """Parameter counts with thousands separators, every other number to one decimal."""
    formats = {key: _fmt for key, _ in columns if key != "method"}
    formats["trainable_parameters"] = lambda v: f"{v:,}"
    return formats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="dept-vl-report", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    results = with_frozen([r for run in args.runs for r in _job_results(run)])
    vqa = [r for r in results if r["task"] == "vqa"]
    captions = [r for r in results if r["task"] == "caption"]
    if vqa:
        print("VQA (test split, accuracy %)\n\n" + vqa_table(vqa) + "\n")
    if captions:
        print("Captioning (test split)\n\n" + caption_table(captions) + "\n")


def cli() -> None:
    """A user error (a run without results) is one line on stderr and exit code 2."""
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
