"""The feature cache: the frozen image encoder's outputs computed once and kept on disk, pooled
as the model's projection pools them, in shards of a bounded size, one folder per encoder
fingerprint (another encoder, other weights or another transform never share entries).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import struct
import uuid
from pathlib import Path
from typing import Any, Iterator

import torch
from accelerate import PartialState
from PIL import Image
from safetensors import safe_open
from torch import nn

from dept_vl.data.table_images import LazyImage
from dept_vl.errors import UserError
from dept_vl.files import atomic_write_json, read_json_object
from dept_vl.images import to_rgb
from dept_vl.vision import ImageEncoder, encoder_fingerprint, pool_grid

logger = logging.getLogger(__name__)


# how cached features may be stored (TrainConfig.feature_cache_dtype); safetensors' dtype names
STORAGE_DTYPES = {"float16": torch.float16, "float32": torch.float32}
_SAFETENSORS_DTYPES = {torch.float16: "F16", torch.float32: "F32"}
_CACHE_LAYOUT = 2  # 1: one fp32 shard of un-pooled grids per build


def cache_fingerprint(encoder: ImageEncoder, pool_tokens: int | None, dtype: str) -> str:
    """The cache folder's name: the encoder's fingerprint plus what is stored (pooled grid size,
    dtype, layout), so caches of other settings never share entries."""
    settings = {"encoder": encoder_fingerprint(encoder), "pool_tokens": pool_tokens,
                "dtype": dtype, "layout": _CACHE_LAYOUT}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


class FeatureCacheError(UserError, OSError):
    """A feature cache folder whose index cannot be read."""


class _ShardWriter:
    """One safetensors shard of `rows` feature rows, written batch by batch as they come.

    safetensors' writers take whole tensors, which would hold a shard in memory. Its format is
    an 8-byte little-endian header length, a JSON header (name: dtype, shape, byte range) and
    the raw bytes, so with the row count known up front the header goes first and the rows
    stream after it. The file is written beside its name, checked by safetensors itself (the
    header against the file size) and renamed into place only when complete."""

    def __init__(self, path: Path, rows: int, row_shape: tuple[int, ...], dtype: torch.dtype):
        self.path, self.rows, self.written = path, rows, 0
        nbytes = rows * math.prod(row_shape) * torch.empty(0, dtype=dtype).element_size()
        header = json.dumps({"features": {"dtype": _SAFETENSORS_DTYPES[dtype],
                                          "shape": [rows, *row_shape],
                                          "data_offsets": [0, nbytes]}}).encode()
        header += b" " * (-len(header) % 8)  # the data starts 8-byte aligned
        self.tmp = path.with_name(f".{path.name}.tmp")
        self.file = open(self.tmp, "wb")  # noqa: SIM115 (open across writes; close/abort)
        self.file.write(struct.pack("<Q", len(header)) + header)

    @property
    def free(self) -> int:
        return self.rows - self.written

    def write(self, block: torch.Tensor) -> None:
        self.file.write(block.contiguous().numpy().data)
        self.written += len(block)

    def close(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        with safe_open(self.tmp, "pt"):  # raises when the bytes do not match the header
            pass
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


class _ShardSequence:
    """Feature rows into shards of at most `shard_bytes` each (the last one smaller); a row's
    index entry is handed back only once its shard is complete on disk."""

    def __init__(self, folder: Path, rank: int, total: int, shard_bytes: float,
                 dtype: torch.dtype):
        self.folder, self.rank, self.remaining = folder, rank, total
        self.shard_bytes, self.dtype = shard_bytes, dtype
        self.writer: _ShardWriter | None = None
        self.pending: dict[str, dict[str, Any]] = {}

    def add(self, features: torch.Tensor, metas: list[tuple[str, dict[str, Any]]]
            ) -> dict[str, dict[str, Any]]:
        """Write (B, N, D) `features` of the images `metas` describes; the entries of every
        shard this completed."""
        done: dict[str, dict[str, Any]] = {}
        offset = 0
        while offset < len(features):
            self.writer = self.writer or self._open(tuple(features.shape[1:]))
            take = min(self.writer.free, len(features) - offset)
            for i, (key, meta) in enumerate(metas[offset:offset + take]):
                self.pending[key] = {"shard": self.writer.path.name,
                                     "row": self.writer.written + i, **meta}
            self.writer.write(features[offset:offset + take])
            offset += take
            if self.writer.free == 0:
                self.writer.close()
                done.update(self.pending)
                self.pending, self.writer = {}, None
        return done

    def _open(self, row_shape: tuple[int, ...]) -> _ShardWriter:
        row_bytes = math.prod(row_shape) * torch.empty(0, dtype=self.dtype).element_size()
        rows = min(self.remaining, max(1, int(self.shard_bytes // row_bytes)))
        self.remaining -= rows
        # a fresh name per shard: ranks and builds never write over one another's shards
        name = f"features-r{self.rank}-{uuid.uuid4().hex[:12]}.safetensors"
        return _ShardWriter(self.folder / name, rows, row_shape, self.dtype)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_image(image: str | LazyImage) -> tuple[Image.Image, dict[str, Any]]:
    """The image as training sees it (`to_rgb`) and its index entry's size, mtime and sha256
    (a `datasets` row: sha256 only), all from the same bytes."""
    if isinstance(image, LazyImage):
        data, meta = image.read_bytes(), {}
    else:
        stat = os.stat(image)
        data, meta = Path(image).read_bytes(), {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    with Image.open(io.BytesIO(data)) as opened:
        rgb = to_rgb(opened)
    return rgb, {**meta, "sha256": hashlib.sha256(data).hexdigest()}


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


class FeatureCache:
    """Frozen-encoder outputs on disk, computed once: safetensors shards of (n, N, D) features
    (pooled to `pool_tokens` when given: adaptive max-pooling has no parameters, so a pooled
    cache is exact; stored as `dtype`) plus `index.json` {image path: shard, row, file size,
    mtime, sha256}, in a folder named by the encoder's and these settings' fingerprint.

    A cached entry is only used for the same file content: when an image's size or mtime
    changed, its sha256 is compared and a changed image is encoded again (never served stale).

    Building holds one batch in memory, whatever the number of images: rows stream into shards
    of at most `shard_mb`. Each process of a distributed build (accelerate's PartialState)
    encodes its share into its own shards and, after each shard is complete, rewrites its own
    `index-part-*.json`; the main process merges the parts into `index.json`. So a killed build
    keeps its finished shards, the next build encodes only what is missing, and an index entry
    never names a shard that is not complete on disk.
    """

    INDEX = "index.json"
    PARTS = "index-part-*.json"

    def __init__(self, root: str | Path, encoder: ImageEncoder, pool_tokens: int | None = None,
                 dtype: str = "float16", shard_mb: float = 256):
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"feature cache dtype must be one of {sorted(STORAGE_DTYPES)}, "
                             f"got {dtype!r}")
        if not shard_mb > 0:
            raise ValueError(f"feature cache shard_mb must be positive, got {shard_mb}")
        self.encoder, self.pool_tokens, self.dtype = encoder, pool_tokens, dtype
        self.shard_bytes = shard_mb * 2**20
        self.fingerprint = cache_fingerprint(encoder, pool_tokens, dtype)
        self.dir = Path(root) / self.fingerprint
        self.dir.mkdir(parents=True, exist_ok=True)
        self.index: dict[str, dict[str, Any]] = self._load()
        self._shards: dict[str, Any] = {}  # open (memory-mapped) shard files

    @staticmethod
    def key(image: str | Path | LazyImage) -> str:
        """A file's absolute path; a `datasets` row's key (its dataset's fingerprint and row)."""
        return image.key if isinstance(image, LazyImage) else str(Path(image).resolve())

    def _load(self) -> dict[str, dict[str, Any]]:
        """index.json with the entries of index parts not merged yet (a build that was killed,
        or is still running on other processes) on top."""
        files = [self.dir / self.INDEX] if (self.dir / self.INDEX).is_file() else []
        index: dict[str, dict[str, Any]] = {}
        for file in files + sorted(self.dir.glob(self.PARTS)):
            with contextlib.suppress(FileNotFoundError):  # a part merged meanwhile
                index.update(read_json_object(file, FeatureCacheError).get("images", {}))
        return index

    def is_fresh(self, path: str | Path | LazyImage) -> bool:
        """True when `path` has an entry whose file content is unchanged (a `datasets` row's
        key names its dataset's content: an entry is fresh)."""
        entry = self.index.get(self.key(path))
        if entry is None or isinstance(path, LazyImage):
            return entry is not None
        stat = Path(path).stat()
        if (entry["size"], entry["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns):
            return True
        if entry["sha256"] != _file_digest(Path(path)):
            return False
        entry.update(size=stat.st_size, mtime_ns=stat.st_mtime_ns)  # touched, same content
        return True

    @torch.no_grad()
    def build(self, paths: list[str | Path | LazyImage], batch_size: int = 64,
              state: PartialState | None = None) -> int:
        """Encode every image of `paths` that has no fresh entry; return how many were (by all
        processes). Under several processes every one calls this with the same `paths`."""
        state = state or PartialState()
        if state.is_main_process:
            self.index = self._load()
            self._merge_parts()  # a killed build's parts: every process starts from index.json
        state.wait_for_everyone()
        self.index = self._load()
        # the images themselves (a dataset row cannot be read back from its key), one per key
        todo = list({self.key(p): p if isinstance(p, LazyImage) else self.key(p)
                     for p in paths if not self.is_fresh(p)}.values())
        mine = todo[state.process_index::state.num_processes]
        if mine:
            with _eval_mode(self.encoder):
                self._encode(mine, batch_size, state.process_index)
        state.wait_for_everyone()
        if state.is_main_process:
            self._merge_parts()
        state.wait_for_everyone()
        self.index = self._load()
        return len(todo)

    def _encode(self, todo: list[str | LazyImage], batch_size: int, rank: int) -> None:
        """Encode `todo` into new shards; this process's index part is rewritten after each."""
        part = self.dir / f"index-part-r{rank}-{uuid.uuid4().hex[:8]}.json"
        shards = _ShardSequence(self.dir, rank, len(todo), self.shard_bytes,
                                STORAGE_DTYPES[self.dtype])
        device = next(self.encoder.parameters()).device
        written: dict[str, dict[str, Any]] = {}
        try:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start:start + batch_size]
                images, metas = zip(*(_read_image(path) for path in chunk))
                grid = self.encoder(self.encoder.preprocess(list(images)).to(device))
                stored = pool_grid(grid, self.pool_tokens).to("cpu", STORAGE_DTYPES[self.dtype])
                done = shards.add(stored, list(zip(map(self.key, chunk), metas)))
                if done:
                    written.update(done)
                    self.index.update(done)
                    atomic_write_json(part, {"images": written})
        except BaseException:
            shards.abort()  # the open shard's half-written file; finished shards are kept
            raise

    def _merge_parts(self) -> None:
        """Main process: the index parts' entries into index.json (written atomically), then
        the parts removed; a crash in between leaves parts whose entries are already in it."""
        parts = sorted(self.dir.glob(self.PARTS))
        for part in parts:
            self.index.update(read_json_object(part, FeatureCacheError).get("images", {}))
        atomic_write_json(self.dir / self.INDEX, {
            "encoder": self.encoder.config.to_dict(), "fingerprint": self.fingerprint,
            "pool_tokens": self.pool_tokens, "dtype": self.dtype, "images": self.index})
        for part in parts:
            part.unlink(missing_ok=True)

    def features(self, paths: list[str | Path]) -> torch.Tensor:
        """(B, N, D) cached features as float32 (what the encoder gives); a missing or stale
        image is an error naming it."""
        rows = []
        for path in paths:
            if not self.is_fresh(path):
                raise KeyError(f"{path}: no fresh cached features in {self.dir}; build the "
                               "cache first (python -m dept_vl.cli.features)")
            entry = self.index[self.key(path)]
            if entry["shard"] not in self._shards:
                self._shards[entry["shard"]] = safe_open(self.dir / entry["shard"], "pt")
            row = entry["row"]
            rows.append(self._shards[entry["shard"]].get_slice("features")[row:row + 1])
        return torch.cat(rows).float()
