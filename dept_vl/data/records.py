"""Dataset records and the loaders that produce them.

Every supported format (JSONL, official VQAv2 json, COCO Karpathy json, any Hugging Face
`datasets` dataset) ends as the same validated `VQARecord` / `CaptionRecord` objects, so the
rest of the toolkit sees one shape. Loaders check everything they cheaply can *at load time*
and raise `DataError` naming the file and row, because a bad row found an hour into training
is far more expensive than one found before it starts.

This module knows nothing of models: it imports only the standard library and PIL, and
`datasets` lazily inside the HF loader.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NoReturn

from PIL import Image

from dept_vl.errors import UserError

__all__ = [
    "TASKS",
    "DataError",
    "VQARecord",
    "CaptionRecord",
    "Record",
    "LoadOptions",
    "LOADERS",
    "KARPATHY_SPLITS",
    "detect_format",
    "load_records",
    "load_jsonl",
    "load_vqav2",
    "load_karpathy",
    "load_hf",
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


class DataError(UserError, ValueError):
    """Raised for bad dataset input; the message always names the file (and line / row / field)."""


def _fail(where: str, message: str) -> NoReturn:
    """One place that formats errors, so every message starts with where it happened."""
    raise DataError(f"{where}: {message}")


# --------------------------------------------------------------------------------------
# Record types
# --------------------------------------------------------------------------------------


def _check_id(value: Any, where: str) -> None:
    if not isinstance(value, str) or not value:
        _fail(where, f"record id must be a non-empty string, got {value!r}")


def _check_image(value: Any, where: str) -> str | Image.Image:
    """Accept a path (made a plain str) or an in-memory PIL image; nothing else."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, Image.Image) or (isinstance(value, str) and value):
        return value
    _fail(where, f"image must be a file path or a PIL image, got {value!r}")


def _check_text(value: Any, what: str, where: str) -> None:
    if not isinstance(value, str) or not value.strip():
        _fail(where, f"{what} must be a non-empty string, got {value!r}")


def _check_texts(values: Any, what: str, where: str) -> tuple[str, ...]:
    """Lists are accepted (and frozen to tuples) so callers may build records from JSON."""
    if not isinstance(values, (list, tuple)) or not values:
        _fail(where, f"{what} must be a non-empty sequence of strings, got {values!r}")
    for value in values:
        _check_text(value, f"each of {what}", where)
    return tuple(values)


@dataclass(frozen=True)
class VQARecord:
    """One question about one image, with every reference answer (the metric needs all)."""

    id: str
    image: str | Image.Image
    question: str
    answers: tuple[str, ...]
    question_type: str | None = None
    source: str = ""
    task: ClassVar[str] = "vqa"

    def __post_init__(self) -> None:
        where = self.source or f"record {self.id!r}"
        _check_id(self.id, where)
        object.__setattr__(self, "image", _check_image(self.image, where))
        _check_text(self.question, "question", where)
        object.__setattr__(self, "answers", _check_texts(self.answers, "answers", where))
        if self.question_type is not None and not isinstance(self.question_type, str):
            _fail(where, f"question_type must be a string or None, got {self.question_type!r}")


@dataclass(frozen=True)
class CaptionRecord:
    """One image with all its reference captions (CIDEr / BLEU use every one)."""

    id: str
    image: str | Image.Image
    captions: tuple[str, ...]
    source: str = ""
    task: ClassVar[str] = "caption"

    def __post_init__(self) -> None:
        where = self.source or f"record {self.id!r}"
        _check_id(self.id, where)
        object.__setattr__(self, "image", _check_image(self.image, where))
        object.__setattr__(self, "captions", _check_texts(self.captions, "captions", where))


Record = VQARecord | CaptionRecord


def _check_task(task: str) -> None:
    if task not in TASKS:
        allowed = ", ".join(repr(t) for t in TASKS)
        raise DataError(f"unknown task {task!r}; allowed tasks: {allowed}")


# --------------------------------------------------------------------------------------
# Row fields (shared by JSONL, VQAv2, Karpathy and HF rows)
# --------------------------------------------------------------------------------------


def _text_field(row: Mapping[str, Any], field: str, where: str) -> str:
    """A required string field, stripped; messages name the field the user wrote."""
    value = row.get(field)
    if value is None:
        _fail(where, f"missing field '{field}'")
    if not isinstance(value, str):
        _fail(where, f"field '{field}' must be a string, got {type(value).__name__}")
    if not value.strip():
        _fail(where, f"empty {field}")
    return value.strip()


def _texts_field(row: Mapping[str, Any], field: str, where: str) -> tuple[str, ...]:
    value = row.get(field)
    if (
        not isinstance(value, (list, tuple))
        or not value
        or not all(isinstance(v, str) for v in value)
    ):
        _fail(where, f"field '{field}' must be a non-empty list of strings, got {value!r}")
    for k, text in enumerate(value):
        if not text.strip():
            _fail(where, f"field '{field}' item {k} is empty")
    return tuple(v.strip() for v in value)


def _one_or_many(row: Mapping[str, Any], plural: str, singular: str, where: str) -> tuple[str, ...]:
    """Rows may carry one answer/caption or a list; both end as a tuple."""
    if row.get(plural) is not None:
        return _texts_field(row, plural, where)
    if row.get(singular) is not None:
        return (_text_field(row, singular, where),)
    _fail(where, f"missing field '{plural}' (or '{singular}')")


def _optional_text(row: Mapping[str, Any], field: str, where: str) -> str | None:
    value = row.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        _fail(where, f"field '{field}' must be a string, got {type(value).__name__}")
    return value.strip() or None


def _id_field(row: Mapping[str, Any], where: str, default: str) -> str:
    """Ids may be written as numbers (question ids are); they are kept as strings."""
    value = row.get("id")
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value) == "":
        _fail(where, f"field 'id' must be a non-empty string or an integer, got {value!r}")
    return str(value)


ImageResolver = Callable[[Any, str], "str | Image.Image"]


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
        _fail(where, "missing field 'image'")
    return resolve_image(row["image"], where)


def _resolve_path(value: str, base_dir: Path) -> str:
    """Relative paths are relative to the data file, never to the current directory."""
    return os.path.abspath(os.path.join(base_dir, os.path.expanduser(value)))


def _path_resolver(base_dir: Path, check_exists: bool) -> ImageResolver:
    """Turn image fields into absolute paths; existence is checked once per distinct file."""
    seen: set[str] = set()

    def resolve(value: Any, where: str) -> str:
        if not isinstance(value, str) or not value.strip():
            _fail(where, f"field 'image' must be a non-empty string (a file path), got {value!r}")
        path = _resolve_path(value, base_dir)
        if check_exists and path not in seen:
            if not os.path.isfile(path):
                _fail(where, f"image file not found: {path}")
            seen.add(path)
        return path

    return resolve


def _finish(records: list[Record], label: str) -> list[Record]:
    """Every loader ends here: an empty dataset or clashing ids is an error, not a surprise."""
    if not records:
        raise DataError(f"{label}: no records")
    first: dict[str, Record] = {}
    for record in records:
        other = first.setdefault(record.id, record)
        if other is not record:
            _fail(record.source, f"duplicate id {record.id!r} (first used at {other.source})")
    return records


# --------------------------------------------------------------------------------------
# JSONL
# --------------------------------------------------------------------------------------


def _read_jsonl(path: str) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed object); blank lines are skipped but still counted."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as e:
                    _fail(f"{path}:{number}", f"invalid JSON ({e.msg} at column {e.colno})")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason})") from None


def load_jsonl(path: str | os.PathLike, task: str, check_images: bool = True) -> list[Record]:
    """One JSON object per line; image paths resolve against the JSONL file's folder."""
    _check_task(task)
    label = os.fspath(path)
    resolve = _path_resolver(Path(label).expanduser().absolute().parent, check_images)
    stem = Path(label).stem
    records = []
    for number, row in _read_jsonl(label):
        where = f"{label}:{number}"
        if not isinstance(row, dict):
            _fail(where, f"expected a JSON object, got {type(row).__name__}")
        records.append(_row_to_record(row, task, where, f"{stem}-{number}", resolve))
    return _finish(records, label)


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


def _json_list(doc: Any, key: str, path: str | os.PathLike) -> list[Any]:
    if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
        raise DataError(f"{os.fspath(path)}: expected a JSON object with a list under '{key}'")
    return doc[key]


def _check_dir(directory: str | os.PathLike, option: str, label: str) -> Path:
    path = Path(directory).expanduser()
    if not path.is_dir():
        raise DataError(f"{label}: {option} is not a directory: {os.fspath(directory)}")
    return path


# --------------------------------------------------------------------------------------
# VQAv2 (official question + annotation files, COCO image folder)
# --------------------------------------------------------------------------------------


def _index_annotations(doc: Any, path: str | os.PathLike) -> dict[Any, dict]:
    by_question: dict[Any, dict] = {}
    for k, ann in enumerate(_json_list(doc, "annotations", path)):
        if not isinstance(ann, dict) or "question_id" not in ann:
            raise DataError(f"{os.fspath(path)}:annotations[{k}]: missing field 'question_id'")
        by_question[ann["question_id"]] = ann
    return by_question


def _vqav2_answers(ann: dict, qid: Any, annotations_file: str) -> list[Any]:
    """All ten human answers, duplicates kept: VQA accuracy counts agreeing annotators."""
    answers = ann.get("answers")
    if not isinstance(answers, list) or not all(isinstance(a, dict) for a in answers):
        raise DataError(
            f"{annotations_file}: annotation for question_id {qid}: "
            "field 'answers' must be a list of {'answer': ...} objects"
        )
    return [a.get("answer") for a in answers]


def _vqav2_row(
    question: Any, where: str, annotations: dict[Any, dict], subtype: str, files: tuple[str, str]
) -> dict[str, Any]:
    """Join one question with its annotation into a plain row for `_row_to_record`."""
    if not isinstance(question, dict):
        _fail(where, "expected a JSON object")
    for field in ("question_id", "image_id"):
        if question.get(field) is None:
            _fail(where, f"missing field '{field}'")
    qid, image_id = question["question_id"], question["image_id"]
    if not isinstance(image_id, int) or isinstance(image_id, bool):
        _fail(where, f"field 'image_id' must be an integer, got {image_id!r}")
    ann = annotations.get(qid)
    if ann is None:
        _fail(where, f"question_id {qid} has no annotation in {files[1]} (questions: {files[0]})")
    return {
        "id": qid,
        "image": f"COCO_{subtype}_{image_id:012d}.jpg",
        "question": question.get("question"),
        "answers": _vqav2_answers(ann, qid, files[1]),
        "question_type": ann.get("answer_type", ann.get("question_type")),
    }


def load_vqav2(
    questions_file: str | os.PathLike,
    annotations_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    check_images: bool = True,
) -> list[VQARecord]:
    """Official VQAv2 json pair; images are `image_dir/COCO_<subtype>_<image_id:012d>.jpg`."""
    qfile, afile = os.fspath(questions_file), os.fspath(annotations_file)
    qdoc = _read_json(qfile)
    questions = _json_list(qdoc, "questions", qfile)
    subtype = qdoc.get("data_subtype")
    if not isinstance(subtype, str) or not subtype:
        raise DataError(f"{qfile}: missing 'data_subtype' (e.g. 'train2014'; it names the images)")
    annotations = _index_annotations(_read_json(afile), afile)
    if check_images:
        _check_dir(image_dir, "image_dir", qfile)
    resolve = _path_resolver(Path(image_dir).expanduser().absolute(), check_images)
    records = []
    for k, question in enumerate(questions):
        where = f"{qfile}:questions[{k}]"
        row = _vqav2_row(question, where, annotations, subtype, (qfile, afile))
        records.append(_row_to_record(row, "vqa", where, str(row["id"]), resolve))
    return _finish(records, qfile)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------
# COCO Karpathy split (dataset_coco.json; Flickr30k's file has the same shape)
# --------------------------------------------------------------------------------------


def _karpathy_row(entry: dict[str, Any], where: str) -> dict[str, Any]:
    filename = _text_field(entry, "filename", where)
    sentences = entry.get("sentences")
    if not isinstance(sentences, list) or not all(isinstance(s, dict) for s in sentences):
        _fail(where, "field 'sentences' must be a list of {'raw': ...} objects")
    return {
        "id": entry.get("cocoid", entry.get("imgid")),
        "image": os.path.join(entry.get("filepath") or "", filename),
        "captions": [s.get("raw") for s in sentences],
    }


def load_karpathy(
    json_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    split: str,
    check_images: bool = True,
) -> list[CaptionRecord]:
    """Karpathy json; split 'train' includes 'restval'; image = image_dir/filepath/filename."""
    path = os.fspath(json_file)
    if split not in KARPATHY_SPLITS:
        raise DataError(f"{path}: unknown Karpathy split {split!r}; choose one of {list(KARPATHY_SPLITS)}")
    images = _json_list(_read_json(path), "images", path)
    if check_images:
        _check_dir(image_dir, "image_dir", path)
    resolve = _path_resolver(Path(image_dir).expanduser().absolute(), check_images)
    wanted = KARPATHY_SPLITS[split]
    records = []
    for k, entry in enumerate(images):
        where = f"{path}:images[{k}]"
        if not isinstance(entry, dict):
            _fail(where, "expected a JSON object")
        if _text_field(entry, "split", where) not in wanted:
            continue
        row = _karpathy_row(entry, where)
        records.append(_row_to_record(row, "caption", where, Path(entry["filename"]).stem, resolve))
    return _finish(records, f"{path} (split {split!r})")  # type: ignore[return-value]


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


def _is_saved_dataset(path: Path) -> bool:
    """`save_to_disk` leaves state.json (Dataset) or dataset_dict.json (DatasetDict)."""
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def _from_disk(path: Path, split: str, label: str) -> Any:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"{label}: no split {split!r}; available splits: {sorted(loaded)}")
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
        f"available columns: {list(available)}; map it with column_map={{'{field}': '<column>'}}"
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
            f"fields for task '{task}': {sorted(known)}"
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


def _open_image_bytes(data: bytes, name: str | None, where: str) -> Image.Image:
    """Open lazily (header only) so a bad image fails now but pixels decode on use."""
    try:
        return Image.open(io.BytesIO(data))
    except (OSError, SyntaxError, ValueError) as e:
        _fail(where, f"cannot read image {name or '<embedded bytes>'}: {e}")


def _hf_image_resolver(base_dir: Path | None, check_exists: bool) -> ImageResolver:
    """HF image cells are PIL images, {'bytes', 'path'} dicts, or path strings."""
    resolve_path = _path_resolver(base_dir or Path.cwd(), check_exists)

    def resolve(value: Any, where: str) -> str | Image.Image:
        if isinstance(value, Image.Image):
            return value
        if isinstance(value, Mapping):
            if value.get("bytes"):
                return _open_image_bytes(value["bytes"], value.get("path"), where)
            if value.get("path"):
                return resolve_path(value["path"], where)
            _fail(where, "field 'image' has neither bytes nor a path")
        if isinstance(value, str):
            return resolve_path(value, where)
        _fail(where, f"field 'image' has unsupported type {type(value).__name__}")

    return resolve


def _undecoded(dataset: Any, column: str) -> Any:
    """Keep images as bytes/paths while loading: decoding every image up front costs minutes."""
    import datasets

    if isinstance(dataset.features.get(column), datasets.Image):
        return dataset.cast_column(column, datasets.Image(decode=False))
    return dataset


def load_hf(
    name_or_path: str | os.PathLike,
    task: str,
    split: str = "train",
    column_map: dict[str, str] | None = None,
    *,
    check_images: bool = True,
) -> list[Record]:
    """Hub name, data directory, `save_to_disk` folder, or one parquet/csv/arrow file."""
    _check_task(task)
    name = os.fspath(name_or_path)
    split = split or "train"
    label = f"hf:{name}[{split}]"
    dataset, base_dir = _open_hf(name, split, label)
    columns = _map_columns(task, column_map, dataset.column_names, label)
    dataset = _undecoded(dataset.select_columns(sorted(set(columns.values()))), columns["image"])
    resolve = _hf_image_resolver(base_dir, check_images)
    stem = Path(name.rstrip("/\\")).stem or "hf"
    records = []
    for index, cells in enumerate(dataset):
        row = {field: cells[column] for field, column in columns.items()}
        for field in ("answers", "captions"):
            if field in row:
                row[field] = _flatten_texts(row[field])
        records.append(_row_to_record(row, task, f"{label}#{index}", f"{stem}-{index}", resolve))
    return _finish(records, label)


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


def _need(value: str | None, option: str, fmt: str, path: str) -> str:
    if value is None:
        raise DataError(f"{path}: format '{fmt}' needs the option '{option}'")
    return value


def _need_task(task: str, wanted: str, fmt: str, path: str) -> None:
    if task != wanted:
        raise DataError(f"{path}: format '{fmt}' holds task '{wanted}' data, not '{task}'")


def _jsonl_entry(path: str, task: str, opts: LoadOptions) -> list[Record]:
    return load_jsonl(path, task, opts.check_images)


def _vqav2_entry(path: str, task: str, opts: LoadOptions) -> list[Record]:
    _need_task(task, "vqa", "vqav2", path)
    annotations = _need(opts.annotations, "annotations", "vqav2", path)
    image_dir = _need(opts.image_dir, "image_dir", "vqav2", path)
    return list(load_vqav2(path, annotations, image_dir, opts.check_images))


def _karpathy_entry(path: str, task: str, opts: LoadOptions) -> list[Record]:
    _need_task(task, "caption", "karpathy", path)
    image_dir = _need(opts.image_dir, "image_dir", "karpathy", path)
    split = _need(opts.split, "split", "karpathy", path)
    return list(load_karpathy(path, image_dir, split, opts.check_images))


def _hf_entry(path: str, task: str, opts: LoadOptions) -> list[Record]:
    return load_hf(path, task, opts.split or "train", opts.column_map, check_images=opts.check_images)


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
) -> list[Record]:
    """Load any supported dataset into validated records; the one call the toolkit uses."""
    _check_task(task)
    label = os.fspath(path)
    fmt = detect_format(label) if format == "auto" else format
    if fmt not in LOADERS:
        raise DataError(f"{label}: unknown format {fmt!r}; known formats: {['auto', *sorted(LOADERS)]}")
    opts = LoadOptions(image_dir, annotations, split, column_map, check_images)
    return LOADERS[fmt](label, task, opts)


# --------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------

_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _image_name(image: str | Image.Image) -> str:
    if isinstance(image, str):
        return image
    return getattr(image, "filename", "") or "<in-memory image>"


def _to_rgb(image: Image.Image) -> Image.Image:
    """Palette images with transparency go through RGBA, as PIL asks, to avoid a warning."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def load_image(record: Record) -> Image.Image:
    """The record's image as RGB; any read failure names the image and the record's row."""
    image = record.image
    try:
        if isinstance(image, Image.Image):
            return _to_rgb(image)
        with Image.open(image) as opened:
            return _to_rgb(opened)
    except _IMAGE_ERRORS as e:
        where = record.source or f"record {record.id!r}"
        raise DataError(f"{where}: cannot read image {_image_name(image)}: {e}") from e


def validate_images(records: Sequence[Record]) -> None:
    """Open and verify every image file once (cheaper than decoding) before training starts."""
    checked: set[str] = set()
    for record in records:
        if not isinstance(record.image, str) or record.image in checked:
            continue
        try:
            with Image.open(record.image) as opened:
                opened.verify()
        except _IMAGE_ERRORS as e:
            where = record.source or f"record {record.id!r}"
            raise DataError(f"{where}: cannot read image {record.image}: {e}") from e
        checked.add(record.image)
