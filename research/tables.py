"""What the grids and benchmarks write beside their markdown tables: CSV rows and PNG plots."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Callable

from dept_vl.files import atomic_write_text


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
