"""Row fields: what every format reads from a row (a JSONL object, a joined VQAv2 question, a
Karpathy entry, a `datasets` row) before a record type builds its record, and the end of every
load (`finish`: no empty dataset, no repeated id). Every problem is a `DataError` naming the
file and row, with a row reason the skip policy may drop it for (dept_vl/data/bad_data.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from dept_vl.data.bad_data import DataError, Policy, fail
from dept_vl.data.table_images import LazyImage

if TYPE_CHECKING:
    from dept_vl.data.records import Record

ImageRef = str | Image.Image | LazyImage  # a file path, an in-memory image or a `datasets` row
ImageResolver = Callable[[Any, str], ImageRef]  # a row's image value, where → the image


def text_field(row: Mapping[str, Any], field: str, where: str) -> str:
    """A required string field, stripped; messages name the field the user wrote."""
    value = row.get(field)
    if value is None:
        fail(where, f"missing field '{field}'", "missing_field")
    if not isinstance(value, str):
        fail(where, f"field '{field}' must be a string, got {type(value).__name__}", "bad_field")
    if not value.strip():
        fail(where, f"empty {field}", "bad_field")
    return value.strip()


def texts_field(row: Mapping[str, Any], field: str, where: str) -> tuple[str, ...]:
    value = row.get(field)
    if (
        not isinstance(value, (list, tuple))
        or not value
        or not all(isinstance(v, str) for v in value)
    ):
        fail(where, f"field '{field}' must be a non-empty list of strings, got {value!r}",
             "bad_field")
    for k, text in enumerate(value):
        if not text.strip():
            fail(where, f"field '{field}' item {k} is empty", "bad_field")
    return tuple(v.strip() for v in value)


def one_or_many(row: Mapping[str, Any], plural: str, singular: str, where: str) -> tuple[str, ...]:
    """Rows may carry one answer/caption or a list; both end as a tuple."""
    if row.get(plural) is not None:
        return texts_field(row, plural, where)
    if row.get(singular) is not None:
        return (text_field(row, singular, where),)
    fail(where, f"missing field '{plural}' (or '{singular}')", "missing_field")


def optional_text(row: Mapping[str, Any], field: str, where: str) -> str | None:
    value = row.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        fail(where, f"field '{field}' must be a string, got {type(value).__name__}", "bad_field")
    return value.strip() or None


def id_field(row: Mapping[str, Any], where: str, default: str) -> str:
    """Ids may be written as numbers (question ids are); they are kept as strings."""
    value = row.get("id")
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value) == "":
        fail(where, f"field 'id' must be a non-empty string or an integer, got {value!r}",
             "bad_field")
    return str(value)


def image_field(row: Mapping[str, Any], where: str, resolve_image: ImageResolver) -> Any:
    if row.get("image") is None:
        fail(where, "missing field 'image'", "missing_field")
    return resolve_image(row["image"], where)


def resolve_path(value: str, base_dir: Path) -> str:
    """Relative paths are relative to the data file, never to the current directory."""
    return os.path.abspath(os.path.join(base_dir, os.path.expanduser(value)))


def path_resolver(base_dir: Path, check_exists: bool) -> ImageResolver:
    """Turn image fields into absolute paths; existence is checked once per distinct file."""
    seen: set[str] = set()

    def resolve(value: Any, where: str) -> str:
        if not isinstance(value, str) or not value.strip():
            fail(where, f"field 'image' must be a non-empty string (a file path), got {value!r}",
                 "bad_field")
        path = resolve_path(value, base_dir)
        if check_exists and path not in seen:
            if os.path.isdir(path):
                fail(where, f"image path is a directory, not a file: {path}", "image_not_found")
            if not os.path.isfile(path):
                fail(where, f"image file not found: {path}", "image_not_found")
            seen.add(path)
        return path

    return resolve


def finish(records: list[Record | None], label: str, policy: Policy) -> list[Record]:
    """Every loader ends here: an empty dataset or clashing ids is an error, not a surprise.

    `records` may hold None for rows the policy dropped (or a split left out); they go here.
    Of two records with one id the first is kept: the second is the error (or the skip).
    """
    first: dict[str, Record] = {}
    kept = []
    for record in records:
        if record is not None and policy.row(record.source, _claim_id, first, record):
            kept.append(record)
    if not kept:
        dropped = f" ({policy.count} bad rows skipped)" if policy.count else ""
        raise DataError(f"{label}: no records{dropped}", "no_records")
    return kept


def _claim_id(first: dict[str, Record], record: Record) -> Record:
    other = first.setdefault(record.id, record)
    if other is not record:
        fail(record.source, f"duplicate id {record.id!r} (first used at {other.source})",
             "duplicate_id")
    return record
