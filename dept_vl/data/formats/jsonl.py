"""JSONL: one JSON object per line, image paths relative to the file (records.py has the
row fields and the bad-data policy)."""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dept_vl.data.records import Record, read_row, rows_type
from dept_vl.data.bad_data import DataError, Policy, fail
from dept_vl.data.rows import ImageResolver, finish, path_resolver
from dept_vl.errors import one_line


def _read_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """Yield (line number, raw line) of the non-blank lines; blank lines still count.

    Lines are decoded one by one (`_parse_line`), so a bad byte spoils one row, not the file.
    """
    try:
        with open(path, "rb") as f:
            for number, line in enumerate(f, start=1):
                if number == 1:
                    line = line.removeprefix(codecs.BOM_UTF8)
                if line.strip():
                    yield number, line
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror or e})") from None


def _parse_line(line: bytes, where: str) -> Any:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        fail(where, f"not UTF-8 text ({e.reason} at byte {e.start})", "invalid_json")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        fail(where, f"invalid JSON ({e.msg} at column {e.colno})", "invalid_json")
    except (ValueError, RecursionError) as e:  # an int over Python's digit limit, deep nesting
        fail(where, f"invalid JSON ({type(e).__name__}: {one_line(e)})", "invalid_json")


def _jsonl_record(
    line: bytes, number: int, where: str, task: str, stem: str, resolve: ImageResolver
) -> Record:
    row = _parse_line(line, where)
    if not isinstance(row, dict):
        fail(where, f"expected a JSON object, got {type(row).__name__}", "not_an_object")
    return read_row(row, task, where, f"{stem}-{number}", resolve)


def load_jsonl(
    path: str | os.PathLike,
    task: str,
    check_images: bool = True,
    *,
    skipped: list[dict[str, str]] | None = None,
) -> list[Record]:
    """One JSON object per line; image paths resolve against the JSONL file's folder."""
    rows_type(task)
    label = os.fspath(path)
    resolve = path_resolver(Path(label).expanduser().absolute().parent, check_images)
    stem = Path(label).stem
    policy = Policy(skipped)
    records = []
    for number, line in _read_lines(label):
        where = f"{label}:{number}"
        records.append(policy.row(where, _jsonl_record, line, number, where, task, stem, resolve))
    return finish(records, label, policy)
