"""Results tables and plots, shared by the experiment grids (`research/experiments.py`), the
benchmarks (`benchmarks/`) and the report of finished runs (`dept_vl/cli/report.py`)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Callable

from dept_vl.files import atomic_write_text


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]],
                   formats: dict[str, Callable[[Any], str]] | None = None) -> str:
    """A markdown table: `columns` are (row key, title); `formats` turn values into text."""
    formats = formats or {}
    lines = ["| " + " | ".join(title for _, title in columns) + " |",
             "|" + "---|" * len(columns)]
    for row in rows:
        cells = [formats.get(key, str)(row.get(key, "")) for key, _ in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """One line per row; the columns are every key in the order first seen (a key a row lacks
    is an empty cell)."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


def save_plot(path: Path, draw: Callable[[Any], Any]) -> None:
    """`draw(pyplot)` returns a figure; saved as a PNG (Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = draw(plt)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
