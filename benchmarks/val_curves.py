"""The periodic val accuracy of every cell of a comparison grid, finished or not, read from each
cell's `logs/metrics.csv` (no model is run):

    python -m benchmarks.val_curves runs/compare-gpu
    python -m benchmarks.val_curves runs/compare-gpu --pair dept-m12-r12 pt-l26 --step 5000

For a grid cut short before its test evaluation (a device call's time limit), this is what is
left to read. Val is the runs' periodic subset of the val split, the same for every cell (in
the README's grids the first `max_eval_examples` questions, see `eval_sample_seed`): compare
runs with each other on it, not with test accuracy.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from statistics import mean

METRIC = "eval/vqa_accuracy"


def curve(cell: Path) -> dict[int, float]:
    """{step: val accuracy} from one cell's metrics.csv (empty when it logged none)."""
    path = cell / "logs" / "metrics.csv"
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as handle:
        return {int(row["step"]): float(row["value"])
                for row in csv.DictReader(handle) if row["name"] == METRIC}


def curves(grid: Path) -> dict[str, dict[str, dict[int, float]]]:
    """{run: {seed folder: curve}} for every cell under `grid/runs`."""
    return {run.name: {cell.name: curve(cell) for cell in sorted(run.glob("seed*"))}
            for run in sorted(p for p in (grid / "runs").iterdir() if p.is_dir())}


def table(runs: dict[str, dict[str, dict[int, float]]]) -> str:
    steps = sorted({step for cells in runs.values() for c in cells.values() for step in c})
    lines = [f"| run | seeds | {' | '.join(map(str, steps))} |", "|---|---|" + "---|" * len(steps)]
    for name, cells in runs.items():
        shown = []
        for step in steps:
            values = [c[step] for c in cells.values() if step in c]
            partial = f" ({len(values)})" if 0 < len(values) < len(cells) else ""
            shown.append(f"{mean(values):.1f}{partial}" if values else "-")
        lines.append(f"| {name} | {len(cells)} | {' | '.join(shown)} |")
    return "\n".join(lines)


def paired(runs: dict[str, dict[str, dict[int, float]]], first: str, second: str,
           step: int) -> str:
    """first − second at `step`, seed by seed, over the seeds both reached it with."""
    a, b = runs[first], runs[second]
    diffs = {seed: a[seed][step] - b[seed][step] for seed in sorted(a)
             if seed in b and step in a[seed] and step in b[seed]}
    if not diffs:
        return f"{first} − {second} at step {step}: no seed reached it in both"
    each = ", ".join(f"{seed} {d:+.1f}" for seed, d in diffs.items())
    return f"{first} − {second} at step {step}: {each}; mean {mean(diffs.values()):+.1f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("grid", type=Path, help="an `experiments compare` output directory")
    parser.add_argument("--pair", nargs=2, metavar=("FIRST", "SECOND"))
    parser.add_argument("--step", type=int, help="the step of --pair")
    args = parser.parse_args(argv)
    if not (args.grid / "runs").is_dir():
        parser.error(f"{args.grid}: no runs/ folder (not an `experiments compare` output)")
    runs = curves(args.grid)
    unknown = [name for name in args.pair or [] if name not in runs]
    if unknown:
        parser.error(f"--pair {' '.join(unknown)}: no such run in {args.grid} ({sorted(runs)})")
    print("val accuracy % by step, mean over the seeds (how many reached it, where not all)\n")
    print(table(runs))
    if args.pair:
        step = args.step or max(s for c in runs[args.pair[0]].values() for s in c)
        print("\n" + paired(runs, *args.pair, step))


if __name__ == "__main__":
    main()
