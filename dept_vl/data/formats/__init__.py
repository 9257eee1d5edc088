"""The data formats and the one entry point, `load_records`: every format (JSONL, VQAv2,
Karpathy, Hugging Face `datasets`) ends as the validated records of dept_vl/data/records.py.
A new format is one function `(path, task, LoadOptions) -> list[Record]` and one line in
`LOADERS`."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dept_vl.data.records import Record, rows_type
from dept_vl.data.bad_data import DataError
from dept_vl.data.formats.documents import read_json
from dept_vl.data.formats.hf import HF_FILE_BUILDERS, load_hf
from dept_vl.data.formats.jsonl import load_jsonl
from dept_vl.data.formats.karpathy import load_karpathy
from dept_vl.data.formats.vqav2 import load_vqav2


# a non-existing path with one of these endings is a missing file, never a hub name
_FILE_SUFFIXES = {
    ".json", ".jsonl", ".parquet", ".csv", ".tsv", ".arrow", ".txt", ".yaml", ".yml",
    ".png", ".jpg", ".jpeg", ".zip", ".tar", ".gz",
}
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


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
    doc = read_json(path)
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
    if p.is_dir() or suffix in HF_FILE_BUILDERS:
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
    """Load any supported dataset into validated records of one row kind (a registered record
    type's `rows`: 'vqa', 'caption', ...); `dept_vl.tasks.load_task_records` loads them for any
    registered task.

    `skipped`: None stops at the first bad row; a list drops bad rows into it (module docstring).
    """
    rows_type(task)
    label = os.fspath(path)
    fmt = detect_format(label) if format == "auto" else format
    if fmt not in LOADERS:
        raise DataError(f"{label}: unknown format {fmt!r}; "
                        f"known formats: {['auto', *sorted(LOADERS)]}", "bad_option")
    opts = LoadOptions(image_dir, annotations, split, column_map, check_images, skipped)
    return LOADERS[fmt](label, task, opts)
