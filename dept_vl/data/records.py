"""Dataset records: one record type per kind of row (`VQARecord`, `CaptionRecord`), each
registered beside its class (`@record_type`) under the name data files give it (`rows`, the
`task` of a data entry). A record type owns everything that depends on its rows: reading one
(`from_row`), the `datasets` columns it takes (`fields`), what k-shot sampling balances
(`kshot_key`) and which question types it has. A task (dept_vl/tasks.py) names the record type
its data loads into, so a new task with new rows is a record class here or anywhere else, plus
a TaskSpec.

Every supported format (JSONL, official VQAv2 json, COCO Karpathy json, any Hugging Face
`datasets` dataset, dept_vl/data/formats/) ends as these validated records, so the rest of the
toolkit sees one shape. Loaders check everything they cheaply can *at load time* and raise
`DataError` naming the file and row (dept_vl/data/bad_data.py, with the skip policy), because
a bad row found an hour into training is far more expensive than one found before it starts.
A VQAv2 question file read without its annotations (test-dev, test-std) gives `unanswered`
VQA records: predicted, never scored, and refused for training (`refuse_unanswered`).

Images stay where they are until a batch needs them: a record holds a file path, or for a
`datasets` row with embedded bytes a `TableImage` (the memory-mapped arrow table and the row,
dept_vl/data/table_images.py), so loading costs the memory of the text. Loaders check that
image files exist; `validate_images` (dept_vl/data/image_files.py) decodes every image once,
keeping none, before training. Caches key images by `image_key` (a path, or
"datasets:<fingerprint>/<column>#<row>").

This module knows nothing of models: it imports only the standard library and PIL.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from PIL import Image

from dept_vl.data.bad_data import DataError, fail
from dept_vl.data.rows import (
    ImageRef, ImageResolver, id_field, image_field, one_or_many, optional_text, text_field,
)
from dept_vl.data.table_images import LazyImage

# every record type by the name its rows go by (`Record.rows`): what a data entry's `task` is
RECORD_TYPES: dict[str, type["Record"]] = {}


def record_type(cls: type["Record"]) -> type["Record"]:
    """Register a record class under its `rows` name (a decorator, beside the class)."""
    known = RECORD_TYPES.get(cls.rows)
    if known is not None and known.__qualname__ != cls.__qualname__:
        raise ValueError(f"rows {cls.rows!r} are already read by {known.__qualname__}")
    RECORD_TYPES[cls.rows] = cls
    return cls


def rows_type(rows: str) -> type["Record"]:
    """The record class of a row kind; DataError naming the registered ones."""
    if rows not in RECORD_TYPES:
        allowed = ", ".join(repr(name) for name in RECORD_TYPES)
        raise DataError(f"unknown task {rows!r}; allowed tasks: {allowed}", "bad_option")
    return RECORD_TYPES[rows]


def _check_id(value: Any, where: str) -> None:
    if not isinstance(value, str) or not value:
        fail(where, f"record id must be a non-empty string, got {value!r}", "bad_field")


def _check_image(value: Any, where: str) -> ImageRef:
    """Accept a path (made a plain str), an in-memory PIL image or a lazy one (a `datasets`
    row, dept_vl/data/table_images.py); nothing else."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, (Image.Image, LazyImage)) or (isinstance(value, str) and value):
        return value
    fail(where, f"image must be a file path or a PIL image, got {value!r}", "bad_field")


def _check_text(value: Any, what: str, where: str) -> None:
    if not isinstance(value, str) or not value.strip():
        fail(where, f"{what} must be a non-empty string, got {value!r}", "bad_field")
    _check_unicode(value, what, where)


def _check_unicode(value: str, what: str, where: str) -> None:
    """JSON may carry lone surrogates (\\ud800) that only fail when the tokenizer encodes them,
    mid-epoch; refuse them while loading."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        fail(where, f"{what} is not valid Unicode text ({e.reason} at position {e.start})",
             "bad_field")


def _check_texts(values: Any, what: str, where: str) -> tuple[str, ...]:
    """Lists are accepted (and frozen to tuples) so callers may build records from JSON."""
    if not isinstance(values, (list, tuple)) or not values:
        fail(where, f"{what} must be a non-empty sequence of strings, got {values!r}", "bad_field")
    for value in values:
        _check_text(value, f"each of {what}", where)
    return tuple(values)


class Record:
    """What every record is: an `id`, an `image`, where it was read (`source`) and the task it
    serves (`task`, by default its own `rows`), plus what its type says about its rows. A
    subclass is a frozen dataclass with those fields, registered with `@record_type`."""

    __slots__ = ()
    rows: ClassVar[str]  # the row kind data files name (a data entry's `task`)
    # the row fields a `datasets` column may feed: the required groups (the first name of a
    # group wins, the others are aliases) and the optional fields
    fields: ClassVar[tuple[tuple[tuple[str, ...], ...], tuple[str, ...]]]
    # k-shot sampling: False draws k records per `kshot_key`; True draws k keys and keeps every
    # record of each (an image with all its captions)
    kshot_whole_groups: ClassVar[bool] = False
    id: str
    image: ImageRef
    source: str
    task: str

    @classmethod
    def from_row(cls, row: Mapping[str, Any], ident: str, where: str,
                 resolve_image: ImageResolver) -> "Record":
        """The record of one row (its fields read with dept_vl/data/rows.py, texts before the
        image, so the cheapest error is reported first)."""
        raise NotImplementedError

    def kshot_key(self) -> str:
        """What k-shot sampling balances (an answer class, an image)."""
        raise NotImplementedError

    def has_type(self, wanted: set[str]) -> bool:
        """Whether `question_types` keeps this record (a record without types: always)."""
        return True

    @property
    def image_key(self) -> str | None:
        """The image's stable key: its absolute path, or a `datasets` row's key
        ("datasets:<fingerprint>/<column>#<row>"); None for a PIL image held in memory."""
        return image_key(self.image)

    def image_bytes(self) -> bytes | None:
        """The encoded image (file contents, table cell); None for a PIL image built in memory."""
        return encoded(self.image)


@record_type
@dataclass(frozen=True)
class VQARecord(Record):
    """One question about one image, with every reference answer (the metric needs all).

    `unanswered=True` (and `answers=()`) is a question of a test split, read from a VQAv2
    question file without annotations: it can be predicted, never scored or trained on. Only
    that flag allows empty answers, so a record cannot lose its answers by accident."""

    rows = "vqa"
    fields = ((("image",), ("question",), ("answers", "answer")), ("id", "question_type"))
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
            fail(where, f"unanswered must be True or False, got {self.unanswered!r}", "bad_field")
        if self.unanswered and (not isinstance(self.answers, (list, tuple)) or self.answers):
            fail(where, f"an unanswered record holds no answers, got {self.answers!r}",
                 "bad_field")
        answers = () if self.unanswered else _check_texts(self.answers, "answers", where)
        object.__setattr__(self, "answers", answers)
        if self.question_type is not None and not isinstance(self.question_type, str):
            fail(where, f"question_type must be a string or None, got {self.question_type!r}",
                 "bad_field")
        if self.question_type is not None:
            _check_unicode(self.question_type, "question_type", where)

    @classmethod
    def from_row(cls, row: Mapping[str, Any], ident: str, where: str,
                 resolve_image: ImageResolver) -> "VQARecord":
        question = text_field(row, "question", where)
        answers = one_or_many(row, "answers", "answer", where)
        question_type = optional_text(row, "question_type", where)
        image = image_field(row, where, resolve_image)
        return cls(ident, image, question, answers, question_type, source=where)

    def kshot_key(self) -> str:
        """Its answer class: the most common reference answer (ties: the first in order)."""
        counts = Counter(self.answers)
        return min(counts, key=lambda answer: (-counts[answer], answer))

    def has_type(self, wanted: set[str]) -> bool:
        return self.question_type in wanted


@record_type
@dataclass(frozen=True)
class CaptionRecord(Record):
    """One image with all its reference captions (CIDEr / BLEU use every one)."""

    rows = "caption"
    fields = ((("image",), ("captions", "caption")), ("id",))
    kshot_whole_groups = True
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

    @classmethod
    def from_row(cls, row: Mapping[str, Any], ident: str, where: str,
                 resolve_image: ImageResolver) -> "CaptionRecord":
        captions = one_or_many(row, "captions", "caption", where)
        return cls(ident, image_field(row, where, resolve_image), captions, source=where)

    def kshot_key(self) -> str:
        """Its image (a file path or a dataset row): k images, each with all its captions."""
        return self.image_key or str(self.id)


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


def image_key(image: ImageRef) -> str | None:
    """A stable string naming the image: a file's path, a `datasets` row's key; None for a
    PIL image held in memory (nothing outside this process names it)."""
    if isinstance(image, str):
        return image
    return image.key if isinstance(image, LazyImage) else None


def encoded(image: ImageRef) -> bytes | None:
    """The encoded bytes of a file, a `datasets` row, or an in-memory image opened lazily from
    bytes; None for an image that has no bytes behind it (built or decoded in memory)."""
    if isinstance(image, str):
        with open(image, "rb") as f:
            return f.read()
    if isinstance(image, LazyImage):
        return image.read_bytes()
    source = getattr(image, "fp", None)
    return source.getvalue() if isinstance(source, io.BytesIO) else None


def read_row(row: Mapping[str, Any], rows: str, where: str, default_id: str,
             resolve_image: ImageResolver) -> Record:
    """The record of one row of kind `rows` (its id: the row's `id`, a number kept as text,
    else `default_id`)."""
    return rows_type(rows).from_row(row, id_field(row, where, default_id), where, resolve_image)
