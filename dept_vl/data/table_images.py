"""Images that stay in their `datasets` table until a batch needs them.

`datasets` memory-maps a dataset's arrow files (hub, parquet, arrow, imagefolder, save_to_disk
folder). A record of one of its rows holds a `TableImage` -- the dataset's shared `ImageColumn`
and a row number -- never the decoded image or its bytes, so loading VQAv2's 443k rows costs
the memory of their text, and the bytes are read (one row, one copy) when a batch needs them.

Pickling (DataLoader workers, spawn or fork, and every batch a worker hands back):
- a memory-mapped dataset's column pickles as `datasets`' own pickle of the dataset, which
  names its arrow files and replays (~2 KB whatever the dataset's size), made once; a process
  that has the column already (the one that loaded it, or a worker after its first batch)
  reuses its open copy instead of mapping the files again;
- a dataset held in memory (no arrow file: `Dataset.from_dict`, or `datasets` told to keep
  small datasets in memory) would pickle its whole table, so its images pickle as
  `EncodedImage`s instead: each record carries its own image's bytes, never the table.

Every image here has a `key`, a string stable across runs (the dataset's fingerprint, which
`datasets` derives from the data files or the content, the column and the row) for caches
that key images, and `read_bytes()`, the encoded file.
"""

from __future__ import annotations

import pickle
import uuid
import weakref
from typing import Any

__all__ = ["EncodedImage", "ImageColumn", "LazyImage", "TableImage"]

# Columns open in this process, by token: unpickling reuses them instead of mapping again.
_OPEN: weakref.WeakValueDictionary[str, ImageColumn] = weakref.WeakValueDictionary()


class LazyImage:
    """An encoded image read on use: `key` (stable string), `name` (for messages), `read_bytes()`."""

    __slots__ = ()
    key: str
    name: str

    def read_bytes(self) -> bytes:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LazyImage) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key!r})"


class ImageColumn:
    """One image column of a loaded `datasets` dataset (struct<bytes, path> cells), shared by
    every record of the dataset. `dataset` may hold other columns; only `column` is read."""

    def __init__(self, dataset: Any, column: str, fingerprint: str, token: str | None = None):
        self.dataset = dataset.select_columns([column]).with_format("arrow")
        self.column = column
        self.prefix = f"datasets:{fingerprint}/{column}"
        self.memory_mapped = bool(dataset.cache_files)
        self.token = token or uuid.uuid4().hex
        self._pickled: bytes | None = None
        _OPEN[self.token] = self

    def field(self, row: int, name: str) -> Any:
        """One field ('bytes' or 'path') of one cell; only that row is read from the table."""
        return self.dataset[row].column(self.column)[0][name].as_py()

    def __reduce__(self) -> tuple[Any, ...]:
        if self._pickled is None:
            self._pickled = pickle.dumps(self.dataset)
        return (_reopen, (self.token, self._pickled, self.column, self.prefix))


def _reopen(token: str, pickled: bytes, column: str, prefix: str) -> ImageColumn:
    open_column = _OPEN.get(token)
    if open_column is not None:
        return open_column
    restored = ImageColumn.__new__(ImageColumn)
    restored.dataset = pickle.loads(pickled)
    restored.column, restored.prefix, restored.memory_mapped = column, prefix, True
    restored.token, restored._pickled = token, pickled
    _OPEN[token] = restored
    return restored


class TableImage(LazyImage):
    """Row `row` of an `ImageColumn`: its image stays in the table until `read_bytes()`."""

    __slots__ = ("images", "row")

    def __init__(self, images: ImageColumn, row: int):
        self.images = images
        self.row = row

    @property
    def key(self) -> str:
        return f"{self.images.prefix}#{self.row}"

    @property
    def name(self) -> str:
        return self.images.field(self.row, "path") or "<embedded bytes>"

    def read_bytes(self) -> bytes:
        return self.images.field(self.row, "bytes") or b""

    def __reduce__(self) -> tuple[Any, ...]:
        if self.images.memory_mapped:
            return (TableImage, (self.images, self.row))
        return (EncodedImage, (self.read_bytes(), self.key, self.name))


class EncodedImage(LazyImage):
    """An image's encoded bytes, decoded on use (a `TableImage` of an in-memory dataset, once
    pickled)."""

    __slots__ = ("data", "key", "name")

    def __init__(self, data: bytes, key: str, name: str):
        self.data = data
        self.key = key
        self.name = name

    def read_bytes(self) -> bytes:
        return self.data
