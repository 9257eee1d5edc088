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
from dept_vl.tasks import TASKS, get_task


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


def task_table(task: str, results: list[dict[str, Any]]) -> str:
    """One task's results as its TaskSpec lays them out (`report_*`), titled: the metric
    columns, then one column per type of its by-type metric, if it has one."""
    spec = get_task(task)
    by_type = spec.report_by_type
    types = sorted({t for r in results for t in r.get(by_type, {})}) if by_type else []
    rows = [{**r, **{f"type:{t}": r.get(by_type, {}).get(t) for t in types}} for r in results]
    columns = [("method", "method"), ("trainable_parameters", "trainable params"),
               *(spec.report_columns or ((spec.metric, spec.metric),)),
               *[(f"type:{t}", t) for t in types], ("train_seconds", "train s")]
    title = spec.report_title or f"{spec.label} (test split)"
    return f"{title}\n\n" + markdown_table(rows, columns, _formats(columns))


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
    by_task: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        by_task.setdefault(result["task"], []).append(result)
    order = list(TASKS)  # the registry's order (VQA before captions), then any other task
    for task in sorted(by_task, key=lambda t: order.index(t) if t in order else len(order)):
        print(task_table(task, by_task[task]) + "\n")


def cli() -> None:
    """A user error (a run without results) is one line on stderr and exit code 2."""
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
