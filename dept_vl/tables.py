"""Markdown results tables: the report of finished runs (`dept-vl-report`), the built-in
backbone's card, and the tables the grids and benchmarks write."""

from __future__ import annotations

from typing import Any, Callable


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
