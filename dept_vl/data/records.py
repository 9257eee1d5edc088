"""Dataset records and the loaders that produce them.

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

import codecs
import io
import json
import os
import re
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from PIL import Image, ImageFile, UnidentifiedImageError

from dept_vl.data.table_images import ImageColumn, LazyImage, TableImage
from dept_vl.errors import UserError, one_line
from dept_vl.images import to_rgb

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
    "LoadOptions",
    "LOADERS",
    "KARPATHY_SPLITS",
    "detect_format",
    "load_records",
    "load_jsonl",
    "load_vqav2",
    "load_karpathy",
    "load_hf",
    "image_key",
    "read_image",
    "load_image",
    "validate_images",
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


# --------------------------------------------------------------------------------------
# JSONL
# --------------------------------------------------------------------------------------


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
        _fail(where, f"not UTF-8 text ({e.reason} at byte {e.start})", "invalid_json")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        _fail(where, f"invalid JSON ({e.msg} at column {e.colno})", "invalid_json")
    except (ValueError, RecursionError) as e:  # an int over Python's digit limit, deep nesting
        _fail(where, f"invalid JSON ({type(e).__name__}: {one_line(e)})", "invalid_json")


def _jsonl_record(
    line: bytes, number: int, where: str, task: str, stem: str, resolve: ImageResolver
) -> Record:
    row = _parse_line(line, where)
    if not isinstance(row, dict):
        _fail(where, f"expected a JSON object, got {type(row).__name__}", "not_an_object")
    return _row_to_record(row, task, where, f"{stem}-{number}", resolve)


def load_jsonl(
    path: str | os.PathLike,
    task: str,
    check_images: bool = True,
    *,
    skipped: list[dict[str, str]] | None = None,
) -> list[Record]:
    """One JSON object per line; image paths resolve against the JSONL file's folder."""
    _check_task(task)
    label = os.fspath(path)
    resolve = _path_resolver(Path(label).expanduser().absolute().parent, check_images)
    stem = Path(label).stem
    policy = _Policy(skipped)
    records = []
    for number, line in _read_lines(label):
        where = f"{label}:{number}"
        records.append(policy.row(where, _jsonl_record, line, number, where, task, stem, resolve))
    return _finish(records, label, policy)


# --------------------------------------------------------------------------------------
# JSON documents (VQAv2, Karpathy)
# --------------------------------------------------------------------------------------


def _read_json(path: str | os.PathLike) -> Any:
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{os.fspath(path)}: file not found") from None
    except OSError as e:
        raise DataError(f"{os.fspath(path)}: cannot read file ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{os.fspath(path)}: not UTF-8 text ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise DataError(
            f"{os.fspath(path)}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})"
        ) from None
    except (ValueError, RecursionError) as e:  # an int over Python's digit limit, deep nesting
        raise DataError(f"{os.fspath(path)}: invalid JSON ({type(e).__name__}: {one_line(e)})"
                        ) from None


def _json_list(doc: Any, key: str, path: str | os.PathLike) -> list[Any]:
    if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
        raise DataError(f"{os.fspath(path)}: expected a JSON object with a list under '{key}'")
    return doc[key]


def _check_dir(directory: str | os.PathLike, option: str, label: str) -> Path:
    path = Path(directory).expanduser()
    if not path.is_dir():
        raise DataError(f"{label}: {option} is not a directory: {os.fspath(directory)}",
                        "bad_option")
    return path


# --------------------------------------------------------------------------------------
# VQAv2 (official question + annotation files, COCO image folder)
# --------------------------------------------------------------------------------------


def _question_id(value: Any, where: str) -> int | str:
    """VQAv2 question ids are integers; strings are accepted for hand-made files."""
    if value is None:
        _fail(where, "missing field 'question_id'", "missing_field")
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        _fail(where, f"field 'question_id' must be an integer or a string, got {value!r}",
              "bad_field")
    return value


def _annotation(ann: Any, where: str, by_question: dict[Any, tuple[str, dict]]) -> None:
    if not isinstance(ann, dict):
        _fail(where, f"expected a JSON object, got {type(ann).__name__}", "not_an_object")
    qid = _question_id(ann.get("question_id"), where)
    if qid in by_question:
        _fail(where, f"second annotation for question_id {qid} (first at {by_question[qid][0]})",
              "duplicate_id")
    by_question[qid] = (where, ann)


def _index_annotations(
    doc: Any, path: str, policy: _Policy
) -> dict[Any, tuple[str, dict]]:
    """question_id -> (where the annotation is, the annotation); bad entries obey the policy."""
    by_question: dict[Any, tuple[str, dict]] = {}
    for k, ann in enumerate(_json_list(doc, "annotations", path)):
        where = f"{path}:annotations[{k}]"
        policy.row(where, _annotation, ann, where, by_question)
    return by_question


def _vqav2_answers(ann: dict, qid: Any, where: str, at: str) -> list[Any]:
    """All ten human answers, duplicates kept: VQA accuracy counts agreeing annotators."""
    answers = ann.get("answers")
    if not isinstance(answers, list) or not all(isinstance(a, dict) for a in answers):
        _fail(where, f"the annotation of question_id {qid} ({at}): "
              "field 'answers' must be a list of {'answer': ...} objects", "bad_field")
    return [a.get("answer") for a in answers]


def _check_same_image(question_image: int, ann: dict, qid: Any, where: str, at: str) -> None:
    """An annotation about another image would train the answer on the wrong picture."""
    ann_image = ann.get("image_id")
    if ann_image is None:
        return  # nothing to compare with (hand-made files); the question's image is used
    if type(ann_image) is not int or ann_image != question_image:
        _fail(where, f"question_id {qid} is about image_id {question_image}, but its annotation "
              f"({at}) has image_id {ann_image!r}", "id_mismatch")


def _vqav2_row(
    question: Any, where: str, annotations: dict[Any, tuple[str, dict]] | None, subtype: str,
    files: tuple[str, str | None],
) -> dict[str, Any]:
    """Join one question with its annotation into a plain row for `_row_to_record`; without
    annotations (a test split) the row has no answers."""
    if not isinstance(question, dict):
        _fail(where, f"expected a JSON object, got {type(question).__name__}", "not_an_object")
    qid = _question_id(question.get("question_id"), where)
    image_id = question.get("image_id")
    if image_id is None:
        _fail(where, "missing field 'image_id'", "missing_field")
    if not isinstance(image_id, int) or isinstance(image_id, bool):
        _fail(where, f"field 'image_id' must be an integer, got {image_id!r}", "bad_field")
    row = {"id": qid, "image": f"COCO_{subtype}_{image_id:012d}.jpg",
           "question": question.get("question")}
    if annotations is None:
        return row
    if qid not in annotations:
        _fail(where, f"question_id {qid} has no annotation in {files[1]} (questions: {files[0]})",
              "missing_annotation")
    at, ann = annotations[qid]
    _check_same_image(image_id, ann, qid, where, at)
    return {**row, "answers": _vqav2_answers(ann, qid, where, at),
            "question_type": ann.get("answer_type", ann.get("question_type"))}


def _vqav2_record(
    question: Any, where: str, annotations: dict[Any, tuple[str, dict]] | None, subtype: str,
    files: tuple[str, str | None], resolve: ImageResolver,
) -> Record:
    row = _vqav2_row(question, where, annotations, subtype, files)
    if annotations is not None:
        return _row_to_record(row, "vqa", where, str(row["id"]), resolve)
    ident = _id_field(row, where, str(row["id"]))
    question_text = _text_field(row, "question", where)
    image = _image_field(row, where, resolve)
    return VQARecord(ident, image, question_text, (), source=where, unanswered=True)


def load_vqav2(
    questions_file: str | os.PathLike,
    annotations_file: str | os.PathLike | None,
    image_dir: str | os.PathLike,
    check_images: bool = True,
    *,
    skipped: list[dict[str, str]] | None = None,
) -> list[VQARecord]:
    """Official VQAv2 json pair; images are `image_dir/COCO_<subtype>_<image_id:012d>.jpg`.

    Each question is joined with the annotation of its question_id, which must be about the
    same image_id (a mismatch is an error, never a silent join). `annotations_file=None` reads
    a question file alone (test-dev / test-std come without annotations): every record is
    `unanswered`, to be predicted (`python -m dept_vl.evaluate --submission`), not scored.
    """
    qfile = os.fspath(questions_file)
    afile = None if annotations_file is None else os.fspath(annotations_file)
    qdoc = _read_json(qfile)
    questions = _json_list(qdoc, "questions", qfile)
    subtype = qdoc.get("data_subtype")
    if not isinstance(subtype, str) or not subtype:
        raise DataError(f"{qfile}: missing 'data_subtype' (e.g. 'train2014'; it names the images)")
    policy = _Policy(skipped)
    annotations = None if afile is None else _index_annotations(_read_json(afile), afile, policy)
    if check_images:
        _check_dir(image_dir, "image_dir", qfile)
    resolve = _path_resolver(Path(image_dir).expanduser().absolute(), check_images)
    records = []
    for k, question in enumerate(questions):
        where = f"{qfile}:questions[{k}]"
        records.append(policy.row(where, _vqav2_record, question, where, annotations, subtype,
                                  (qfile, afile), resolve))
    return _finish(records, qfile, policy)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------
# COCO Karpathy split (dataset_coco.json; Flickr30k's file has the same shape)
# --------------------------------------------------------------------------------------


def _karpathy_row(entry: dict[str, Any], where: str) -> dict[str, Any]:
    filename = _text_field(entry, "filename", where)
    folder = entry.get("filepath") or ""
    if not isinstance(folder, str):
        _fail(where, f"field 'filepath' must be a string, got {type(folder).__name__}", "bad_field")
    sentences = entry.get("sentences")
    if not isinstance(sentences, list) or not all(isinstance(s, dict) for s in sentences):
        _fail(where, "field 'sentences' must be a list of {'raw': ...} objects", "bad_field")
    return {
        "id": entry.get("cocoid", entry.get("imgid")),
        "image": os.path.join(folder, filename),
        "captions": [s.get("raw") for s in sentences],
    }


def _karpathy_record(
    entry: Any, where: str, wanted: tuple[str, ...], resolve: ImageResolver
) -> Record | None:
    """The entry's record, or None when it belongs to another split."""
    if not isinstance(entry, dict):
        _fail(where, f"expected a JSON object, got {type(entry).__name__}", "not_an_object")
    if _text_field(entry, "split", where) not in wanted:
        return None
    row = _karpathy_row(entry, where)
    return _row_to_record(row, "caption", where, Path(row["image"]).stem, resolve)


def load_karpathy(
    json_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    split: str,
    check_images: bool = True,
    *,
    skipped: list[dict[str, str]] | None = None,
) -> list[CaptionRecord]:
    """Karpathy json; split 'train' includes 'restval'; image = image_dir/filepath/filename."""
    path = os.fspath(json_file)
    if split not in KARPATHY_SPLITS:
        raise DataError(f"{path}: unknown Karpathy split {split!r}; "
                        f"choose one of {list(KARPATHY_SPLITS)}", "bad_option")
    images = _json_list(_read_json(path), "images", path)
    if check_images:
        _check_dir(image_dir, "image_dir", path)
    resolve = _path_resolver(Path(image_dir).expanduser().absolute(), check_images)
    wanted = KARPATHY_SPLITS[split]
    policy = _Policy(skipped)
    records = []
    for k, entry in enumerate(images):
        where = f"{path}:images[{k}]"
        records.append(policy.row(where, _karpathy_record, entry, where, wanted, resolve))
    return _finish(records, f"{path} (split {split!r})", policy)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------
# Hugging Face datasets
# --------------------------------------------------------------------------------------

# Per task: required field groups (first name wins, the others are accepted aliases) and
# optional fields. `column_map` keys must be among these names.
_HF_FIELDS: dict[str, tuple[tuple[tuple[str, ...], ...], tuple[str, ...]]] = {
    "vqa": ((("image",), ("question",), ("answers", "answer")), ("id", "question_type")),
    "caption": ((("image",), ("captions", "caption")), ("id",)),
}
_TEXT_KEYS = ("answer", "raw", "caption", "text")
_HF_BATCH = 1024  # rows read from the arrow table at a time while loading


def _is_saved_dataset(path: Path) -> bool:
    """`save_to_disk` leaves state.json (Dataset) or dataset_dict.json (DatasetDict)."""
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def _from_disk(path: Path, split: str, label: str) -> Any:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"{label}: no split {split!r}; available splits: {sorted(loaded)}",
                            "bad_option")
        return loaded[split]
    return loaded


def _open_hf(name: str, split: str, label: str) -> tuple[Any, Path | None]:
    """Open any dataset `datasets` can read; returns it and the folder relative paths use."""
    import datasets

    path = Path(name).expanduser().absolute()  # datasets resolves against the cwd otherwise
    try:
        if path.is_dir() and _is_saved_dataset(path):
            return _from_disk(path, split, label), path
        if path.is_dir():
            return datasets.load_dataset(str(path), split=split), path
        if path.is_file():
            builder = _HF_FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                known = sorted(_HF_FILE_BUILDERS)
                raise DataError(f"{label}: cannot read {path.suffix!r} files; use one of {known}")
            # A single data file always forms the 'train' split, whatever split was asked for.
            return datasets.load_dataset(builder, data_files=str(path), split="train"), path.parent
        return datasets.load_dataset(name, split=split), None
    except DataError:
        raise
    except Exception as e:  # datasets raises many types; users need the name and the cause
        raise DataError(f"{label}: cannot load dataset: {type(e).__name__}: {e}") from e


def _missing_column(label: str, field: str, column: str, available: Sequence[str]) -> NoReturn:
    raise DataError(
        f"{label}: column '{column}' (for field '{field}') not found; "
        f"available columns: {list(available)}; map it with column_map={{'{field}': '<column>'}}",
        "bad_option",
    )


def _map_columns(
    task: str, column_map: Mapping[str, str] | None, available: Sequence[str], label: str
) -> dict[str, str]:
    """Decide which dataset column feeds each of our fields (identity unless mapped)."""
    groups, optional = _HF_FIELDS[task]
    known = {f for group in groups for f in group} | set(optional)
    given = dict(column_map or {})
    unknown = sorted(set(given) - known)
    if unknown:
        raise DataError(
            f"{label}: column_map has unknown field(s) {unknown}; "
            f"fields for task '{task}': {sorted(known)}",
            "bad_option",
        )
    mapping: dict[str, str] = {}
    for group in groups:
        field = next((f for f in group if f in given), None)
        if field is None:
            field = next((f for f in group if f in available), group[0])
        column = given.get(field, field)
        if column not in available:
            _missing_column(label, field, column, available)
        mapping[field] = column
    for field in optional:
        column = given.get(field, field)
        if column in available:
            mapping[field] = column
        elif field in given:
            _missing_column(label, field, column, available)
    return mapping


def _flatten_texts(value: Any) -> Any:
    """Answers/captions come as str, [str], [{'answer': ...}] or {'answer': [...]}: make [str].

    Anything else is returned unchanged so the row validator reports it with the row number.
    """
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        key = next((k for k in _TEXT_KEYS if k in value), None)
        return value if key is None else _flatten_texts(value[key])
    if isinstance(value, (list, tuple)):
        return [_item_text(item) for item in value]
    return value


def _item_text(item: Any) -> Any:
    if isinstance(item, Mapping):
        key = next((k for k in _TEXT_KEYS if k in item), None)
        return item if key is None else item[key]
    return item


def _hf_image_resolver(base_dir: Path | None, check_exists: bool) -> ImageResolver:
    """HF image cells (`_image_cells`): a row of the table, a path dict, or a path string."""
    resolve_path = _path_resolver(base_dir or Path.cwd(), check_exists)

    def resolve(value: Any, where: str) -> ImageRef:
        if isinstance(value, LazyImage):
            return value
        if isinstance(value, Mapping):
            if value.get("bytes"):  # a struct column whose 'bytes' is not binary
                _fail(where, "field 'image' bytes must be bytes, got "
                      f"{type(value['bytes']).__name__}", "bad_field")
            if value.get("path"):
                return resolve_path(value["path"], where)
            _fail(where, "field 'image' has neither bytes nor a path", "bad_field")
        if isinstance(value, str):
            return resolve_path(value, where)
        _fail(where, f"field 'image' has unsupported type {type(value).__name__}", "bad_field")

    return resolve


def _image_table(dataset: Any, column: str) -> ImageColumn | None:
    """The column as an `ImageColumn` when its cells hold encoded bytes (struct<bytes, path>,
    what `datasets.Image` stores), else None (a column of path strings)."""
    import pyarrow as pa

    kind = dataset.data.schema.field(column).type
    if not pa.types.is_struct(kind) or kind.get_field_index("bytes") < 0:
        return None
    data = kind.field("bytes").type
    if not (pa.types.is_binary(data) or pa.types.is_large_binary(data)
            or pa.types.is_binary_view(data)):
        return None
    return ImageColumn(dataset, column, dataset._fingerprint)


def _image_cells(column: Any, start: int, images: ImageColumn | None) -> list[Any]:
    """One arrow batch's image cells for the resolver, reading no image bytes (only the
    lengths): a `TableImage` where a cell has bytes, {'path': ...} where it has none, None
    for a null cell."""
    import pyarrow.compute as pc

    if images is None:
        return column.to_pylist()
    cells: list[Any] = []
    for chunk in column.chunks:
        sizes = pc.binary_length(chunk.field("bytes")).to_pylist()
        has_path = chunk.type.get_field_index("path") >= 0
        paths = chunk.field("path").to_pylist() if has_path else [None] * len(chunk)
        for valid, size, path in zip(chunk.is_valid().to_pylist(), sizes, paths):
            cell = TableImage(images, start + len(cells)) if size else {"bytes": None, "path": path}
            cells.append(cell if valid else None)
    return cells


def _hf_rows(
    dataset: Any, columns: Mapping[str, str], images: ImageColumn | None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, {field: value}) read in arrow batches; images stay in the table."""
    table = dataset.select_columns(sorted(set(columns.values()))).with_format("arrow")
    start = 0
    for batch in table.iter(batch_size=_HF_BATCH):
        values = batch.drop_columns([columns["image"]]).to_pydict()
        values[columns["image"]] = _image_cells(batch.column(columns["image"]), start, images)
        for k in range(batch.num_rows):
            row = {field: values[column][k] for field, column in columns.items()}
            for field in ("answers", "captions"):
                if field in row:
                    row[field] = _flatten_texts(row[field])
            yield start + k, row
        start += batch.num_rows


def load_hf(
    name_or_path: str | os.PathLike,
    task: str,
    split: str = "train",
    column_map: dict[str, str] | None = None,
    *,
    check_images: bool = True,
    skipped: list[dict[str, str]] | None = None,
) -> list[Record]:
    """Hub name, data directory, `save_to_disk` folder, or one parquet/csv/arrow file.

    Embedded images stay in the memory-mapped table (`TableImage`, read when a batch needs
    them); they are decoded, and bad ones found, by `validate_images`, not here.
    """
    _check_task(task)
    name = os.fspath(name_or_path)
    split = split or "train"
    label = f"hf:{name}[{split}]"
    dataset, base_dir = _open_hf(name, split, label)
    columns = _map_columns(task, column_map, dataset.column_names, label)
    images = _image_table(dataset, columns["image"])
    resolve = _hf_image_resolver(base_dir, check_images)
    stem = Path(name.rstrip("/\\")).stem or "hf"
    policy = _Policy(skipped)
    records = []
    for index, row in _hf_rows(dataset, columns, images):
        where = f"{label}#{index}"
        records.append(policy.row(where, _row_to_record, row, task, where, f"{stem}-{index}",
                                  resolve))
    return _finish(records, label, policy)

# --------------------------------------------------------------------------------------
# Format registry and the one entry point
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadOptions:
    """Everything `load_records` may pass on; each format reads only what it needs."""

    image_dir: str | None = None
    annotations: str | None = None
    split: str | None = None
    column_map: dict[str, str] | None = None
    check_images: bool = True
    skipped: list[dict[str, str]] | None = None  # the bad-data policy (module docstring)


def _need(value: str | None, option: str, fmt: str, path: str) -> str:
    if value is None:
        raise DataError(f"{path}: format '{fmt}' needs the option '{option}'", "bad_option")
    return value


def _need_task(task: str, wanted: str, fmt: str, path: str) -> None:
    if task != wanted:
        raise DataError(f"{path}: format '{fmt}' holds task '{wanted}' data, not '{task}'",
                        "bad_option")


def _jsonl_entry(path: str, task: str, opts: LoadOptions) -> list[Record]:
    return load_jsonl(path, task, opts.check_images, skipped=opts.skipped)


def _vqav2_entry(path: str, task: str, opts: LoadOptions) -> list[Record]:
    """Without `annotations` the questions are read alone, unanswered (a test split)."""
    _need_task(task, "vqa", "vqav2", path)
    image_dir = _need(opts.image_dir, "image_dir", "vqav2", path)
    return list(load_vqav2(path, opts.annotations, image_dir, opts.check_images,
                           skipped=opts.skipped))


def _karpathy_entry(path: str, task: str, opts: LoadOptions) -> list[Record]:
    _need_task(task, "caption", "karpathy", path)
    image_dir = _need(opts.image_dir, "image_dir", "karpathy", path)
    split = _need(opts.split, "split", "karpathy", path)
    return list(load_karpathy(path, image_dir, split, opts.check_images, skipped=opts.skipped))


def _hf_entry(path: str, task: str, opts: LoadOptions) -> list[Record]:
    return load_hf(path, task, opts.split or "train", opts.column_map,
                   check_images=opts.check_images, skipped=opts.skipped)


# A new format = one function `(path, task, LoadOptions) -> list[Record]` + one line here.
LOADERS: dict[str, Callable[[str, str, LoadOptions], list[Record]]] = {
    "jsonl": _jsonl_entry,
    "vqav2": _vqav2_entry,
    "karpathy": _karpathy_entry,
    "hf": _hf_entry,
}


def _detect_json(path: Path, label: str) -> str:
    """Peek at the top level: VQAv2 has 'questions', Karpathy has images with 'sentences'."""
    if not path.is_file():
        raise DataError(f"{label}: file not found")
    doc = _read_json(path)
    if isinstance(doc, dict) and "questions" in doc:
        return "vqav2"
    images = doc.get("images") if isinstance(doc, dict) else None
    if isinstance(images, list) and images and isinstance(images[0], dict) and "sentences" in images[0]:
        return "karpathy"
    raise DataError(
        f"{label}: cannot tell the format of this json (expected VQAv2 'questions' or Karpathy "
        f"'images' with 'sentences'); pass format= one of {sorted(LOADERS)}"
    )


def detect_format(path: str | os.PathLike) -> str:
    """Guess the format from the path (and, for .json, the top-level keys)."""
    label = os.fspath(path)
    p = Path(label).expanduser()
    suffix = p.suffix.lower()
    if suffix == ".jsonl":
        return "jsonl"
    if suffix == ".json":
        return _detect_json(p, label)
    if p.is_dir() or suffix in _HF_FILE_BUILDERS:
        return "hf"
    if not p.exists() and suffix not in _FILE_SUFFIXES and _HUB_NAME.fullmatch(label):
        return "hf"
    what = "file not found" if not p.exists() else "cannot tell the dataset format"
    raise DataError(f"{label}: {what}; known formats: {sorted(LOADERS)} (or pass format=...)")


def load_records(
    path: str | os.PathLike,
    task: str,
    format: str = "auto",
    *,
    image_dir: str | None = None,
    annotations: str | None = None,
    split: str | None = None,
    column_map: dict[str, str] | None = None,
    check_images: bool = True,
    skipped: list[dict[str, str]] | None = None,
) -> list[Record]:
    """Load any supported dataset into validated records of one of the row kinds (`TASKS`: 'vqa'
    or 'caption'); `dept_vl.tasks.load_task_records` loads them for any registered task.

    `skipped`: None stops at the first bad row; a list drops bad rows into it (module docstring).
    """
    _check_task(task)
    label = os.fspath(path)
    fmt = detect_format(label) if format == "auto" else format
    if fmt not in LOADERS:
        raise DataError(f"{label}: unknown format {fmt!r}; "
                        f"known formats: {['auto', *sorted(LOADERS)]}", "bad_option")
    opts = LoadOptions(image_dir, annotations, split, column_map, check_images, skipped)
    return LOADERS[fmt](label, task, opts)


# --------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------

# What PIL raises for a damaged file depends on the plugin and on where the damage is.
_IMAGE_ERRORS = (
    OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error,
    Image.DecompressionBombError,
)


def _image_name(image: ImageRef) -> str:
    if isinstance(image, str):
        return image
    if isinstance(image, LazyImage):
        return image.name
    return getattr(image, "filename", "") or "<in-memory image>"


def _cause(error: BaseException) -> str:
    """PIL's text for an unknown format names the in-memory buffer we opened, not the file."""
    if isinstance(error, UnidentifiedImageError):
        return "not an image format PIL can identify (or an empty file)"
    return one_line(error)


def _image_error(record: Record, error: BaseException) -> DataError:
    where = record.source or f"record {record.id!r}"
    reason = "image_not_found" if isinstance(error, FileNotFoundError) else "image_unreadable"
    return DataError(f"{where}: cannot read image {_image_name(record.image)}: {_cause(error)}",
                     reason)


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


def _decoded(image: ImageRef, *, cheap: bool = False, data: bytes | None = None) -> Image.Image:
    """The image decoded from its own bytes, never in place: a record keeps its lazy image, so
    a pass over the data does not leave every decoded image alive in memory.

    `cheap` (validation): PIL's JPEG draft mode lets libjpeg scale by 1/8 while it still reads
    every byte, so a truncated JPEG fails exactly as it does at full size (tested). `data`:
    the image's bytes when the caller has read them already.
    """
    data = _encoded(image) if data is None else data
    if data is None:
        return image  # type: ignore[return-value]
    opened = Image.open(io.BytesIO(data))
    if cheap:
        opened.draft(opened.mode, (1, 1))
    opened.load()
    return opened


def read_image(image: ImageRef) -> Image.Image:
    """A record's `image` (path, PIL image, `datasets` row) as RGB (`dept_vl.images.to_rgb`),
    decoded now from its own bytes; for a cache that holds images but not their records."""
    return to_rgb(_decoded(image))


def load_image(record: Record) -> Image.Image:
    """The record's image as RGB (`read_image`); any read failure names the image and the
    record's row."""
    try:
        return read_image(record.image)
    except _IMAGE_ERRORS as e:
        raise _image_error(record, e) from e


def _decode_problem(image: ImageRef) -> BaseException | None:
    """Why the image cannot be used for training, or None. Beyond decoding (which is what
    training does), PNG and other formats with checksums are verified: decoding ignores a
    damaged tail or a bad CRC that verify() reports."""
    try:
        data = _encoded(image)
        if data is not None:
            with Image.open(io.BytesIO(data)) as opened:
                opened.verify()
        to_rgb(_decoded(image, cheap=True, data=data))
    except _IMAGE_ERRORS as e:
        return e
    return None


def _image_ok(record: Record, problem: BaseException | None) -> bool:
    if problem is not None:
        raise _image_error(record, problem)
    return True


def validate_images(
    records: Sequence[Record], skipped: list[dict[str, str]] | None = None
) -> list[Record]:
    """Decode every distinct image (file, `datasets` row or in-memory) once, before training
    starts; nothing decoded is kept (a `datasets` row is read again when a batch needs it).

    `skipped=None`: the first record whose image cannot be decoded raises DataError naming its
    file:line and the image. A list: every record of an undecodable image is dropped and listed
    (reason image_unreadable, or image_not_found for a missing file); the rest is returned in
    order.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise DataError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process (set by other code): "
            "truncated images would decode as grey fill and pass; leave it False", "bad_option")
    policy = _Policy(skipped)
    problems: dict[Any, BaseException | None] = {}
    kept = []
    for record in records:
        key = image_key(record.image) or id(record.image)
        if key not in problems:
            problems[key] = _decode_problem(record.image)
        where = record.source or f"record {record.id!r}"
        if policy.row(where, _image_ok, record, problems[key]):
            kept.append(record)
    return kept
