"""Accuracy by the number of objects in the scene, for a question type of the built-in corpus,
from a comparison grid's test predictions (no model is run):

    python -m benchmarks.by_objects runs/compare --type spatial
    python -m benchmarks.by_objects runs/compare --type count --corpus runs/shapes

Each cell of the table pools the test questions of every seed of a run (correct / asked). It
shows what a per-type accuracy hides: a spatial question about a scene with one object needs no
binding of colour and shape to a place, and scenes with one object are a third of the corpus
(object counts are drawn with weights 1/n).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from dept_vl.data.shapes import object_count

BUCKETS = ("1", "2", "3", "4", "5-9")


def bucket(n: int) -> str:
    return str(n) if n < 5 else "5-9"


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def counts_by_question(corpus: Path, split: str = "test") -> dict[str, int]:
    """{question id: number of objects in its image}, from the split's listing captions."""
    objects = {row["image"]: object_count(row["captions"][0])
               for row in read_jsonl(corpus / f"{split}_caption.jsonl")}
    return {row["id"]: objects[row["image"]] for row in read_jsonl(corpus / f"{split}_vqa.jsonl")}


def tally(predictions: list[Path], objects: dict[str, int], qtype: str) -> dict[str, list[int]]:
    """{bucket: [correct, asked]} over the rows of `qtype` in every predictions file."""
    cells: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for path in predictions:
        for row in json.loads(path.read_text(encoding="utf-8")):
            if row.get("question_type") != qtype:
                continue
            if row["id"] not in objects:
                raise SystemExit(f"{path}: question {row['id']!r} is not in the corpus' test "
                                 "split (--corpus: the grid's corpus)")
            cell = cells[bucket(objects[row["id"]])]
            cell[0] += row["prediction"] in row["answers"]
            cell[1] += 1
    return cells


def table(grid: Path, objects: dict[str, int], qtype: str) -> str:
    lines = [f"| run | seeds | {' | '.join(BUCKETS)} | all |",
             "|---|---|" + "---|" * (len(BUCKETS) + 1)]
    for run in sorted(p for p in (grid / "runs").iterdir() if p.is_dir()):
        files = sorted(run.glob("seed*/test_predictions.json"))
        if not files:
            continue
        cells = tally(files, objects, qtype)
        shown = [f"{100 * c / n:.1f} ({n // len(files)})" if n else "-"
                 for c, n in (cells[b] for b in BUCKETS)]
        correct, asked = (sum(cell[i] for cell in cells.values()) for i in (0, 1))
        shown.append(f"{100 * correct / asked:.1f}" if asked else "-")
        lines.append(f"| {run.name} | {len(files)} | {' | '.join(shown)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("grid", type=Path, help="an `experiments compare` output directory")
    parser.add_argument("--type", default="spatial", help="question type (default: spatial)")
    parser.add_argument("--corpus", type=Path, default=Path("runs/shapes"))
    args = parser.parse_args(argv)
    if not (args.grid / "runs").is_dir():
        parser.error(f"{args.grid}: no runs/ folder (not an `experiments compare` output)")
    for split_file in ("test_caption.jsonl", "test_vqa.jsonl"):
        if not (args.corpus / split_file).is_file():
            parser.error(f"{args.corpus / split_file}: missing (--corpus: the shapes corpus)")
    print(f"{args.type} test accuracy % by the number of objects in the scene (columns), "
          "pooled over seeds; questions per seed in brackets\n")
    print(table(args.grid, counts_by_question(args.corpus), args.type))


if __name__ == "__main__":
    main()
