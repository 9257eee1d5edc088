"""The COCO Karpathy split (dataset_coco.json; Flickr30k's file has the same shape)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dept_vl.data.bad_data import DataError, Policy, fail
from dept_vl.data.rows import ImageResolver, finish, path_resolver, text_field
from dept_vl.data.records import CaptionRecord, Record, read_row
from dept_vl.data.formats.documents import check_dir, json_list, read_json

# Karpathy's "restval" images are training images in every paper that uses the split.
KARPATHY_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("train", "restval"),
    "restval": ("restval",),
    "val": ("val",),
    "test": ("test",),
}


def _karpathy_row(entry: dict[str, Any], where: str) -> dict[str, Any]:
    filename = text_field(entry, "filename", where)
    folder = entry.get("filepath") or ""
    if not isinstance(folder, str):
        fail(where, f"field 'filepath' must be a string, got {type(folder).__name__}", "bad_field")
    sentences = entry.get("sentences")
    if not isinstance(sentences, list) or not all(isinstance(s, dict) for s in sentences):
        fail(where, "field 'sentences' must be a list of {'raw': ...} objects", "bad_field")
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
        fail(where, f"expected a JSON object, got {type(entry).__name__}", "not_an_object")
    if text_field(entry, "split", where) not in wanted:
        return None
    row = _karpathy_row(entry, where)
    return read_row(row, "caption", where, Path(row["image"]).stem, resolve)


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
    images = json_list(read_json(path), "images", path)
    if check_images:
        check_dir(image_dir, "image_dir", path)
    resolve = path_resolver(Path(image_dir).expanduser().absolute(), check_images)
    wanted = KARPATHY_SPLITS[split]
    policy = Policy(skipped)
    records = []
    for k, entry in enumerate(images):
        where = f"{path}:images[{k}]"
        records.append(policy.row(where, _karpathy_record, entry, where, wanted, resolve))
    return finish(records, f"{path} (split {split!r})", policy)  # type: ignore[return-value]
