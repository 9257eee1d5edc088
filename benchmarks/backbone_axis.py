"""One pair of runs across comparison grids that differ only in their backbone (pretrained with
another seed), from each grid's `results.csv` (no model is run):

    python -m benchmarks.backbone_axis runs/compare runs/compare-bb1 runs/compare-bb2 \\
        --pair dept-m12-r12 pt-l26

A grid's seeds cover the adapters' randomness (initialisation, batch order) on one frozen
backbone; a claim such as "DePT ahead of PT" can still rest on that one backbone. Per grid this
prints the paired difference on the seed with its 95% t interval, as the grid's own report
does; across grids, the interval of the per-backbone mean differences (one value a backbone,
so with three backbones the t quantile is 4.3 and the interval is wide by design).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from dept_vl.errors import UserError
from dept_vl.files import read_json_object
from research.stats import Paired, paired

COLUMNS = {"overall": "score", "reserved types": "reserved_types"}


def scores(grid: Path, run: str, column: str) -> dict[int, float]:
    """{seed: value of `column`} of one run of a grid (empty when the grid lacks the run)."""
    path = grid / "results.csv"
    with path.open(newline="", encoding="utf-8") as handle:
        try:
            return {int(row["seed"]): float(row[column]) for row in csv.DictReader(handle)
                    if row["name"] == run and row[column] != ""}
        except (KeyError, TypeError, ValueError) as problem:  # a missing column, a bad number
            raise SystemExit(f"{path}: not a compare grid's results ({problem!r})") from None


def fingerprint(grid: Path, run: str) -> str:
    """The backbone fingerprint the run's first adapter was trained on ("?" if none saved)."""
    for config in sorted((grid / "runs" / run).glob("seed*/adapter/adapter_config.json")):
        try:
            return str(read_json_object(config, UserError).get("backbone_fingerprint", "?"))
        except UserError as problem:
            raise SystemExit(str(problem)) from None
    return "?"


def across(differences: list[Paired], first: str, second: str) -> str:
    """The per-backbone mean differences as one sample: a backbone is the unit, not a seed."""
    sample = Paired(tuple(range(len(differences))), tuple(d.mean for d in differences))
    verdict = sample.verdict(f"{first} ahead", f"{second} ahead")
    return (f"across {len(differences)} backbones (one mean a backbone): {sample.mean:+.1f} "
            f"(95% CI {sample.interval_text(1)}): {verdict}")


def seed_mean(arm: dict[int, float], seeds: tuple[int, ...]) -> float:
    return sum(arm[seed] for seed in seeds) / len(seeds)


def check_distinct(grids: list[Path], run: str) -> None:
    """Two grids on one backbone are one sample counted twice: refused, naming both."""
    seen: dict[str, Path] = {}
    for grid in grids:
        backbone = fingerprint(grid, run)
        if backbone in seen and backbone != "?":
            raise SystemExit(f"{seen[backbone]} and {grid} share the backbone {backbone}: the "
                             "axis needs one grid a backbone")
        seen[backbone] = grid


def report(grids: list[Path], first: str, second: str) -> str:
    check_distinct(grids, first)
    lines = []
    for label, column in COLUMNS.items():
        lines += [f"\n{first} − {second}, {label}:", "",
                  f"| grid | backbone | {first} | {second} | difference (95% CI) | seeds |",
                  "|---|---|---|---|---|---|"]
        differences = []
        for grid in grids:
            a, b = scores(grid, first, column), scores(grid, second, column)
            difference = paired(a, b)
            if difference is None:
                raise SystemExit(f"{grid}/results.csv: no seed has both {first} and {second}")
            differences.append(difference)
            shown = [f"{seed_mean(arm, difference.seeds):.1f}" for arm in (a, b)]
            lines.append(f"| {grid} | {fingerprint(grid, first)} | {' | '.join(shown)} "
                         f"| {difference.mean:+.1f} ({difference.interval_text(1)}) "
                         f"| {len(difference.seeds)} |")
        lines += ["", across(differences, first, second)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("grids", type=Path, nargs="+", help="`experiments compare` outputs")
    parser.add_argument("--pair", nargs=2, metavar=("FIRST", "SECOND"), required=True)
    args = parser.parse_args(argv)
    missing = [str(grid) for grid in args.grids if not (grid / "results.csv").is_file()]
    if missing:
        parser.error(f"no results.csv in {', '.join(missing)} (not a finished compare grid)")
    print(report(args.grids, *args.pair))


if __name__ == "__main__":
    main()
