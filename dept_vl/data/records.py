"""Dataset records: the two record types, the row fields every format reads, and the bad-data
policy. The formats that produce them are dept_vl/data/formats/ (`load_records`); their images
are read and checked by dept_vl/data/image_files.py.

Every supported format (JSONL, official VQAv2 json, COCO Karpathy json, any Hugging Face
`datasets` dataset) ends as the same validated `VQARecord` / `CaptionRecord` objects, so the
rest of the toolkit sees one shape. Loaders check everything they cheaply can *at load time*
and raise `DataError` naming the file and row, because a bad row found an hour into training
is far more expensive than one found before it starts. A VQAv2 question file read without its
annotations (test-dev, test-std) gives `unanswered` VQA records: predicted, never scored, and
refused for training (`refuse_unanswered`).

Bad data policy. Every loader, `load_records` and `validate_images` take `skipped`:
- `skipped=None` (policy "error", the default): the first bad row or image raises `DataError`
  naming the file and line / row (and the image path).
- a list (policy "skip"): each bad *row* is dropped and appended to the list as
  `{"source": "<file>:<line or row>", "reason": <slug>, "error": <the one-line message the
  error policy raises>}`; the good rows are returned in order. Problems with a whole file
  (missing, unreadable, not JSON, unknown format, missing options, no record left) still raise.

Every `DataError` carries `reason`, one of a closed set. Row reasons (skippable, `ROW_REASONS`):
  invalid_json        a JSONL line that is not JSON (or not UTF-8)
  not_an_object       a row that is not a JSON object / mapping
  missing_field       a required field absent or null
  bad_field           a field of the wrong type, empty, or an invalid value
  image_not_found     the image path names no file
  image_unreadable    the image cannot be opened or fully decoded
  duplicate_id        an id (or a VQAv2 annotation's question_id) used twice; the first is kept
  id_mismatch         a VQAv2 annotation about another image than its question
  missing_annotation  a VQAv2 question without an annotation
File reasons (always raised): bad_file (missing, unreadable, not JSON, unknown format),
bad_option (unknown task, a missing or wrong loader option), no_records.

Images stay where they are until a batch needs them: a record holds a file path, or for a
`datasets` row with embedded bytes a `TableImage` (the memory-mapped arrow table and the row,
dept_vl/data/table_images.py), so loading costs the memory of the text. Loaders check that
image files exist; `validate_images` decodes every image once, keeping none, before training.
Caches key images by `image_key` (a path, or "datasets:<fingerprint>/<column>#<row>").

This module knows nothing of models: it imports only the standard library, PIL (with
`dept_vl.images`, PIL only, for the pixels) and `datasets` / pyarrow lazily in the HF loader.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from PIL import Image

from dept_vl.data.table_images import LazyImage
from dept_vl.errors import UserError, one_line

__all__ = [
    "TASKS",
    "DataError",
    "ROW_REASONS",
    "FILE_REASONS",
    "skip_entry",
    "skip_line",
    "skip_summary",
    "VQARecord",
    "CaptionRecord",
    "Record",
    "refuse_unanswered",
    "KARPATHY_SPLITS",
    "image_key",
]

TASKS = ("vqa", "caption")

# Karpathy's "restval" images are training images in every paper that uses the split.
KARPATHY_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("train", "restval"),
    "restval": ("restval",),
    "val": ("val",),
    "test": ("test",),
}

# Single-file formats that `datasets` reads with a packaged builder.
_HF_FILE_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
# A non-existing path with one of these endings is a missing file, never a hub name.
_FILE_SUFFIXES = {
    ".json", ".jsonl", ".parquet", ".csv", ".tsv", ".arrow", ".txt", ".yaml", ".yml",
    ".png", ".jpg", ".jpeg", ".zip", ".tar", ".gz",
}
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


ROW_REASONS = (
    "invalid_json", "not_an_object", "missing_field", "bad_field", "image_not_found",
    "image_unreadable", "duplicate_id", "id_mismatch", "missing_annotation",
)
FILE_REASONS = ("bad_file", "bad_option", "no_records")


class DataError(UserError, ValueError):
    """Raised for bad dataset input; the message always names the file (and line / row / field).

    `reason` is one slug of ROW_REASONS (the policy "skip" may drop the row) or FILE_REASONS.
    """

    def __init__(self, message: str, reason: str = "bad_file"):
        if reason not in ROW_REASONS + FILE_REASONS:
            raise ValueError(f"unknown DataError reason {reason!r}")
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        # DataLoader workers and process pools pickle errors: keep the reason across.
        return (type(self), (str(self), self.reason))


def _fail(where: str, message: str, reason: str) -> NoReturn:
    """One place that formats errors, so every message starts with where it happened."""
    raise DataError(f"{where}: {message}", reason)


def skip_entry(where: str, error: DataError) -> dict[str, str]:
    """The line `skipped` gets for a dropped row: where, why (a slug) and the full message."""
    return {"source": where, "reason": error.reason, "error": one_line(error)}


def skip_summary(skipped: Sequence[dict[str, str]]) -> dict[str, Any]:
    """What a skip policy dropped, by reason: `{"total": n, "by_reason": {reason: n}}`."""
    by_reason: dict[str, int] = {}
    for entry in skipped:
        by_reason[entry["reason"]] = by_reason.get(entry["reason"], 0) + 1
    return {"total": len(skipped), "by_reason": dict(sorted(by_reason.items()))}


def skip_line(skipped: Sequence[dict[str, str]]) -> str:
    """`N rows or images skipped (reason n, ...)`: the line a command prints."""
    summary = skip_summary(skipped)
    reasons = ", ".join(f"{k} {n}" for k, n in summary["by_reason"].items())
    return f"{summary['total']} rows or images skipped ({reasons or 'none'})"


class _Policy:
    """The bad-data policy of one load: raise on the first bad row, or drop it and record it."""

    def __init__(self, skipped: list[dict[str, str]] | None):
        self.skipped = skipped
        self.count = 0

    def row(self, where: str, build: Callable[..., Any], *args: Any) -> Any:
        """`build(*args)`; a row-level DataError under "skip" is recorded and gives None."""
        try:
            return build(*args)
        except DataError as error:
            if self.skipped is None or error.reason not in ROW_REASONS:
                raise
            self.skipped.append(skip_entry(where, error))
            self.count += 1
            return None


# --------------------------------------------------------------------------------------
# Record types
# --------------------------------------------------------------------------------------


def _check_id(value: Any, where: str) -> None:
    if not isinstance(value, str) or not value:
        _fail(where, f"record id must be a non-empty string, got {value!r}", "bad_field")


ImageRef = str | Image.Image | LazyImage


def _check_image(value: Any, where: str) -> ImageRef:
    """Accept a path (made a plain str), an in-memory PIL image or a lazy one (a `datasets`
    row, dept_vl/data/table_images.py); nothing else."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, (Image.Image, LazyImage)) or (isinstance(value, str) and value):
        return value
    _fail(where, f"image must be a file path or a PIL image, got {value!r}", "bad_field")


def _check_text(value: Any, what: str, where: str) -> None:
    if not isinstance(value, str) or not value.strip():
        _fail(where, f"{what} must be a non-empty string, got {value!r}", "bad_field")
    _check_unicode(value, what, where)


def _check_unicode(value: str, what: str, where: str) -> None:
    """JSON may carry lone surrogates (\\ud800) that only fail when the tokenizer encodes them,
    mid-epoch; refuse them while loading."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        _fail(where, f"{what} is not valid Unicode text ({e.reason} at position {e.start})",
              "bad_field")


def _check_texts(values: Any, what: str, where: str) -> tuple[str, ...]:
    """Lists are accepted (and frozen to tuples) so callers may build records from JSON."""
    if not isinstance(values, (list, tuple)) or not values:
        _fail(where, f"{what} must be a non-empty sequence of strings, got {values!r}", "bad_field")
    for value in values:
        _check_text(value, f"each of {what}", where)
    return tuple(values)


class _HasImage:
    """What caches (feature cache, pixels) need of a record's image, whatever holds it."""

    __slots__ = ()
    image: ImageRef

    @property
    def image_key(self) -> str | None:
        """The image's stable key: its absolute path, or a `datasets` row's key
        ("datasets:<fingerprint>/<column>#<row>"); None for a PIL image held in memory."""
        return image_key(self.image)

    def image_bytes(self) -> bytes | None:
        """The encoded image (file contents, table cell); None for a PIL image built in memory."""
        return _encoded(self.image)


@dataclass(frozen=True)
class VQARecord(_HasImage):
    """One question about one image, with every reference answer (the metric needs all).

    `unanswered=True` (and `answers=()`) is a question of a test split, read from a VQAv2
    question file without annotations: it can be predicted, never scored or trained on. Only
    that flag allows empty answers, so a record cannot lose its answers by accident."""

    id: str
    image: ImageRef
    question: str
    answers: tuple[str, ...]
    question_type: str | None = None
    source: str = ""
    task: str = "vqa"  # its TaskSpec (dept_vl/tasks.py); another task may hold VQA records
    unanswered: bool = False

    def __post_init__(self) -> None:
        where = self.source or f"record {self.id!r}"
        _check_id(self.id, where)
        object.__setattr__(self, "image", _check_image(self.image, where))
        _check_text(self.question, "question", where)
        if self.unanswered is not False and self.unanswered is not True:
            _fail(where, f"unanswered must be True or False, got {self.unanswered!r}", "bad_field")
        if self.unanswered and (not isinstance(self.answers, (list, tuple)) or self.answers):
            _fail(where, f"an unanswered record holds no answers, got {self.answers!r}",
                  "bad_field")
        answers = () if self.unanswered else _check_texts(self.answers, "answers", where)
        object.__setattr__(self, "answers", answers)
        if self.question_type is not None and not isinstance(self.question_type, str):
            _fail(where, f"question_type must be a string or None, got {self.question_type!r}",
                  "bad_field")
        if self.question_type is not None:
            _check_unicode(self.question_type, "question_type", where)


@dataclass(frozen=True)
class CaptionRecord(_HasImage):
    """One image with all its reference captions (CIDEr / BLEU use every one)."""

    id: str
    image: ImageRef
    captions: tuple[str, ...]
    source: str = ""
    task: str = "caption"  # its TaskSpec (dept_vl/tasks.py)

    def __post_init__(self) -> None:
        where = self.source or f"record {self.id!r}"
        _check_id(self.id, where)
        object.__setattr__(self, "image", _check_image(self.image, where))
        object.__setattr__(self, "captions", _check_texts(self.captions, "captions", where))


Record = VQARecord | CaptionRecord


def refuse_unanswered(records: Sequence[Record], use: str) -> None:
    """Raise on the first unanswered record (a VQAv2 test split read without annotations):
    `use` (training, say) needs answers, and there are none to learn from or score against."""
    for record in records:
        if getattr(record, "unanswered", False):
            where = record.source or f"record {record.id!r}"
            raise DataError(f"{where}: question without answers (a VQAv2 question file read "
                            f"without annotations); {use} needs answers: give the file's "
                            "annotations, or predict it with `python -m dept_vl.evaluate "
                            "--submission FILE`", "bad_option")


def _check_task(task: str) -> None:
    if task not in TASKS:
        allowed = ", ".join(repr(t) for t in TASKS)
        raise DataError(f"unknown task {task!r}; allowed tasks: {allowed}", "bad_option")


# --------------------------------------------------------------------------------------
# Row fields (shared by JSONL, VQAv2, Karpathy and HF rows)
# --------------------------------------------------------------------------------------


def _text_field(row: Mapping[str, Any], field: str, where: str) -> str:
    """A required string field, stripped; messages name the field the user wrote."""
    value = row.get(field)
    if value is None:
        _fail(where, f"missing field '{field}'", "missing_field")
    if not isinstance(value, str):
        _fail(where, f"field '{field}' must be a string, got {type(value).__name__}", "bad_field")
    if not value.strip():
        _fail(where, f"empty {field}", "bad_field")
    return value.strip()


def _texts_field(row: Mapping[str, Any], field: str, where: str) -> tuple[str, ...]:
    value = row.get(field)
    if (
        not isinstance(value, (list, tuple))
        or not value
        or not all(isinstance(v, str) for v in value)
    ):
        _fail(where, f"field '{field}' must be a non-empty list of strings, got {value!r}",
              "bad_field")
    for k, text in enumerate(value):
        if not text.strip():
            _fail(where, f"field '{field}' item {k} is empty", "bad_field")
    return tuple(v.strip() for v in value)


def _one_or_many(row: Mapping[str, Any], plural: str, singular: str, where: str) -> tuple[str, ...]:
    """Rows may carry one answer/caption or a list; both end as a tuple."""
    if row.get(plural) is not None:
        return _texts_field(row, plural, where)
    if row.get(singular) is not None:
        return (_text_field(row, singular, where),)
    _fail(where, f"missing field '{plural}' (or '{singular}')", "missing_field")


def _optional_text(row: Mapping[str, Any], field: str, where: str) -> str | None:
    value = row.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        _fail(where, f"field '{field}' must be a string, got {type(value).__name__}", "bad_field")
    return value.strip() or None


def _id_field(row: Mapping[str, Any], where: str, default: str) -> str:
    """Ids may be written as numbers (question ids are); they are kept as strings."""
    value = row.get("id")
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value) == "":
        _fail(where, f"field 'id' must be a non-empty string or an integer, got {value!r}",
              "bad_field")
    return str(value)


ImageResolver = Callable[[Any, str], ImageRef]


def _row_to_record(
    row: Mapping[str, Any], task: str, where: str, default_id: str, resolve_image: ImageResolver
) -> Record:
    """Text fields are checked before the image, so the cheapest error is reported first."""
    ident = _id_field(row, where, default_id)
    if task == "vqa":
        question = _text_field(row, "question", where)
        answers = _one_or_many(row, "answers", "answer", where)
        question_type = _optional_text(row, "question_type", where)
        image = _image_field(row, where, resolve_image)
        return VQARecord(ident, image, question, answers, question_type, source=where)
    captions = _one_or_many(row, "captions", "caption", where)
    image = _image_field(row, where, resolve_image)
    return CaptionRecord(ident, image, captions, source=where)


def _image_field(row: Mapping[str, Any], where: str, resolve_image: ImageResolver) -> Any:
    if row.get("image") is None:
        _fail(where, "missing field 'image'", "missing_field")
    return resolve_image(row["image"], where)


def _resolve_path(value: str, base_dir: Path) -> str:
    """Relative paths are relative to the data file, never to the current directory."""
    return os.path.abspath(os.path.join(base_dir, os.path.expanduser(value)))


def _path_resolver(base_dir: Path, check_exists: bool) -> ImageResolver:
    """Turn image fields into absolute paths; existence is checked once per distinct file."""
    seen: set[str] = set()

    def resolve(value: Any, where: str) -> str:
        if not isinstance(value, str) or not value.strip():
            _fail(where, f"field 'image' must be a non-empty string (a file path), got {value!r}",
                  "bad_field")
        path = _resolve_path(value, base_dir)
        if check_exists and path not in seen:
            if os.path.isdir(path):
                _fail(where, f"image path is a directory, not a file: {path}", "image_not_found")
            if not os.path.isfile(path):
                _fail(where, f"image file not found: {path}", "image_not_found")
            seen.add(path)
        return path

    return resolve


def _finish(records: list[Record | None], label: str, policy: _Policy) -> list[Record]:
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
        _fail(record.source, f"duplicate id {record.id!r} (first used at {other.source})",
              "duplicate_id")
    return record


def image_key(image: ImageRef) -> str | None:
    """A stable string naming the image: a file's path, a `datasets` row's key; None for a
    PIL image held in memory (nothing outside this process names it)."""
    if isinstance(image, str):
        return image
    return image.key if isinstance(image, LazyImage) else None


def _encoded(image: ImageRef) -> bytes | None:
    """The encoded bytes of a file, a `datasets` row, or an in-memory image opened lazily from
    bytes; None for an image that has no bytes behind it (built or decoded in memory)."""
    if isinstance(image, str):
        with open(image, "rb") as f:
            return f.read()
    if isinstance(image, LazyImage):
        return image.read_bytes()
    source = getattr(image, "fp", None)
    return source.getvalue() if isinstance(source, io.BytesIO) else None
