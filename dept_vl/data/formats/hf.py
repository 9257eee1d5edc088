"""Hugging Face `datasets`: a saved dataset folder, a parquet / csv / arrow file, or a hub name
(offline: the local cache); columns mapped to record fields, images left in the arrow table."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from dept_vl.data.table_images import ImageColumn, LazyImage, TableImage
from dept_vl.data.records import Record, read_row, rows_type
from dept_vl.data.bad_data import DataError, Policy, fail
from dept_vl.data.rows import ImageRef, ImageResolver, finish, path_resolver


# single-file formats that `datasets` reads with a packaged builder
HF_FILE_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
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
            builder = HF_FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                known = sorted(HF_FILE_BUILDERS)
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
    groups, optional = rows_type(task).fields  # `column_map` keys must be among these
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
    resolve_path = path_resolver(base_dir or Path.cwd(), check_exists)

    def resolve(value: Any, where: str) -> ImageRef:
        if isinstance(value, LazyImage):
            return value
        if isinstance(value, Mapping):
            if value.get("bytes"):  # a struct column whose 'bytes' is not binary
                fail(where, "field 'image' bytes must be bytes, got "
                     f"{type(value['bytes']).__name__}", "bad_field")
            if value.get("path"):
                return resolve_path(value["path"], where)
            fail(where, "field 'image' has neither bytes nor a path", "bad_field")
        if isinstance(value, str):
            return resolve_path(value, where)
        fail(where, f"field 'image' has unsupported type {type(value).__name__}", "bad_field")

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
    rows_type(task)
    name = os.fspath(name_or_path)
    split = split or "train"
    label = f"hf:{name}[{split}]"
    dataset, base_dir = _open_hf(name, split, label)
    columns = _map_columns(task, column_map, dataset.column_names, label)
    images = _image_table(dataset, columns["image"])
    resolve = _hf_image_resolver(base_dir, check_images)
    stem = Path(name.rstrip("/\\")).stem or "hf"
    policy = Policy(skipped)
    records = []
    for index, row in _hf_rows(dataset, columns, images):
        where = f"{label}#{index}"
        records.append(policy.row(where, read_row, row, task, where, f"{stem}-{index}",
                                  resolve))
    return finish(records, label, policy)
