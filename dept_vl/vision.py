"""The frozen image side: any timm model as a grid-of-tokens encoder, the trainable projection
into the T5 embedding space, and a disk cache of the frozen encoder's outputs.

timm gives every model the same face (`create_model`, `forward_features`, data config), so one
wrapper serves ViTs (prefix tokens dropped) and CNNs (feature map flattened row by row). A timm
model that cannot be built as asked (unknown name, hub out of reach, a missing, unreadable or
foreign weights file) is a BackboneError naming it and saying how to point `weights_file:` at
local weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import pickle
import struct
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import timm
import torch
from accelerate import PartialState
from huggingface_hub import constants as hub_constants
from PIL import Image
from safetensors import SafetensorError, safe_open
from timm.data import create_transform, resolve_data_config
from timm.models import parse_model_name, split_model_name_tag
from torch import nn
from torch.nn import functional as F

from dept_vl.data.table_images import LazyImage
from dept_vl.errors import BackboneError, UserError, one_line
from dept_vl.files import atomic_write_json, read_json_object
from dept_vl.images import to_rgb


@dataclass
class VisionConfig:
    """How to build the image encoder again: what goes into the backbone's `vision/` folder."""

    model_name: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {"output_stride": 16}
    image_size: int | None = None  # input side in pixels; None keeps the model's default
    pretrained: bool = False  # timm's own weights (hub); ignored when weights_file is given
    weights_file: str | None = None  # local .safetensors/.pth file with the encoder's weights

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# What timm raises for weights it cannot use: a damaged safetensors file, a .pth that is not a
# plain state dict (torch's weights_only refuses it), a truncated pickle, tensors of another
# shape (RuntimeError from load_state_dict) or a model that has no pretrained weights at all.
_WEIGHTS_ERRORS = (SafetensorError, RuntimeError, pickle.UnpicklingError, EOFError)
_WEIGHTS_HINT = ("set `weights_file:` (vision.weights_file) to a local .safetensors/.pth file "
                 "holding the encoder's weights")


def _check_model_name(name: str) -> None:
    """Refuse a name timm does not know before anything is built (hf-hub: and local-dir:
    names are resolved by timm itself)."""
    try:
        source, model_id = parse_model_name(name)
    except ValueError as error:
        raise BackboneError(f"timm model {name!r}: {one_line(error)}") from None
    if source is None and not timm.is_model(split_model_name_tag(model_id)[0]):
        raise BackboneError(
            f"unknown timm model {name!r} (vision.model_name); timm.list_models('*vit*') lists "
            "the known names, a pretrained tag follows a dot: vit_base_patch16_clip_224.openai")


def _check_weights_file(config: VisionConfig) -> None:
    path = Path(str(config.weights_file))
    problem = ("does not exist" if not path.is_file()
               else "cannot be read" if not os.access(path, os.R_OK)
               else "is empty" if path.stat().st_size == 0 else None)
    if problem:
        raise BackboneError(f"timm model {config.model_name!r}: weights_file {path} {problem}; "
                            + _WEIGHTS_HINT)


class _MissingKeys(logging.Handler):
    """timm loads pretrained weights non-strictly once the classifier is dropped (num_classes=0)
    and only logs which model weights the checkpoint lacked; this collects that report, so a
    checkpoint of another model is an error rather than a randomly initialised frozen encoder."""

    PREFIX = "Missing keys ("

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.keys: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(self.PREFIX):
            self.keys += message[len(self.PREFIX):message.index(")")].split(", ")

    @classmethod
    @contextlib.contextmanager
    def collect(cls) -> Iterator["_MissingKeys"]:
        report = cls()
        timm_logger = logging.getLogger("timm.models._builder")
        level = timm_logger.level
        timm_logger.addHandler(report)
        timm_logger.setLevel(logging.INFO)
        try:
            yield report
        finally:
            timm_logger.removeHandler(report)
            timm_logger.setLevel(level)


def _unusable_weights(config: VisionConfig, error: BaseException) -> BackboneError:
    name = config.model_name
    if isinstance(error, OSError) and not config.weights_file:
        offline = " (HF_HUB_OFFLINE is set)" if hub_constants.HF_HUB_OFFLINE else ""
        return BackboneError(f"timm model {name!r} is not in the local cache and the Hugging "
                             f"Face hub cannot be reached{offline}; " + _WEIGHTS_HINT)
    source = f"weights_file {config.weights_file}" if config.weights_file \
        else "its pretrained weights"
    return BackboneError(f"timm model {name!r}: {source} cannot be loaded "
                         f"({one_line(error) or type(error).__name__}); " + _WEIGHTS_HINT)


def create_timm_model(config: VisionConfig) -> nn.Module:
    """`timm.create_model` without a classifier, loading `weights_file` or timm's pretrained
    weights when asked; what the user can fix (unknown name, hub out of reach, a missing or
    unusable weights file, options the model does not take) is one BackboneError naming it."""
    _check_model_name(config.model_name)
    kwargs = dict(config.model_kwargs)
    if config.weights_file:
        _check_weights_file(config)
        kwargs["pretrained_cfg_overlay"] = {"file": config.weights_file}
    pretrained = config.pretrained or bool(config.weights_file)
    try:
        with _MissingKeys.collect() as report:
            model = timm.create_model(config.model_name, pretrained=pretrained, num_classes=0,
                                      **kwargs)
    except OSError as error:  # huggingface_hub's LocalEntryNotFoundError is one
        raise _unusable_weights(config, error) from error
    except TypeError as error:
        if not config.model_kwargs:
            raise
        raise BackboneError(f"timm model {config.model_name!r} does not take model_kwargs "
                            f"{config.model_kwargs}: {one_line(error)}") from error
    except _WEIGHTS_ERRORS as error:
        if not pretrained:
            raise
        raise _unusable_weights(config, error) from error
    if report.keys:
        source = config.weights_file or "its pretrained weights"
        raise BackboneError(
            f"timm model {config.model_name!r}: {source} lacks {len(report.keys)} of the "
            f"model's weights ({', '.join(report.keys[:3])}, ...); is it a checkpoint of this "
            "model? " + _WEIGHTS_HINT)
    return model


class ImageEncoder(nn.Module):
    """timm model → (B, N, D) visual tokens, with its preprocessing from timm's data config."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        self.model = create_timm_model(config)
        self.feature_dim: int = self.model.num_features
        self.num_prefix_tokens: int = getattr(self.model, "num_prefix_tokens", 0)
        data_args: dict[str, Any] = {}
        if config.image_size:
            data_args = {"input_size": (3, config.image_size, config.image_size), "crop_pct": 1.0}
        self.data_config = resolve_data_config(data_args, model=self.model)
        self.transform: Callable[[Image.Image], torch.Tensor] = create_transform(
            **self.data_config, is_training=False
        )

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.data_config["input_size"])

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images → (B, 3, H, W) normalised as the encoder expects. Every mode becomes RGB
        through `to_rgb` (16-bit scaled, alpha composited on white), as in training's
        `load_image`, so generate() on a PIL image sees the pixels training saw."""
        return torch.stack([self.transform(to_rgb(img)) for img in images])

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = self.model.forward_features(pixel_values)
        if features.dim() == 4:  # CNN: (B, C, H, W) → (B, H·W, C)
            return features.flatten(2).transpose(1, 2)
        return features[:, self.num_prefix_tokens:]  # ViT: drop class / register tokens


def pool_grid(features: torch.Tensor, num_tokens: int | None) -> torch.Tensor:
    """Adaptive max-pool of a square (B, N, D) token grid to `num_tokens`; a grid already of
    that size (e.g. pooled when it was cached) passes through, as does `num_tokens` None."""
    if num_tokens is None or features.shape[1] == num_tokens:
        return features
    batch, count, dim = features.shape
    side = math.isqrt(count)
    if side * side != count:
        raise ValueError(f"cannot pool {count} visual tokens: not a square grid")
    grid = features.transpose(1, 2).reshape(batch, dim, side, side)
    return F.adaptive_max_pool2d(grid, math.isqrt(num_tokens)).flatten(2).transpose(1, 2)


VISUAL_POSITIONS = ("none", "sincos", "learned")


def grid_positions(side: int, dim: int) -> torch.Tensor:
    """(side², dim) fixed 2-D sine-cosine embeddings of a side x side grid, row-major like the
    tokens: the first half of the channels encode the row, the second half the column."""
    if dim % 4:
        raise ValueError(f"2-D position embeddings need a width divisible by 4, got {dim}")
    freqs = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    angles = torch.arange(side, dtype=torch.float64)[:, None] * freqs[None]  # (side, dim/4)
    one_axis = torch.cat([angles.sin(), angles.cos()], dim=1)  # (side, dim/2)
    rows = one_axis[:, None, :].expand(side, side, dim // 2)
    cols = one_axis[None, :, :].expand(side, side, dim // 2)
    return torch.cat([rows, cols], dim=2).reshape(side * side, dim).float()


class VisualProjection(nn.Module):
    """Visual tokens → T5 embeddings: Linear + LayerNorm (VL-T5), with an optional adaptive
    max-pool of the square token grid to `num_tokens` (VL-Adapter pools 7x7 to 6x6).

    `positions` adds where each token sits in the grid (VL-T5 adds its regions' box embeddings
    the same way, before the LayerNorm): "sincos" a fixed 2-D table, "learned" one that starts
    from it and trains with the projection, "none" as before. Without them the tokens are a
    set to T5 (its relative position bias only covers the text), so "left of" cannot be
    learnt. Both need the pooled grid's size, `num_tokens`."""

    def __init__(self, feature_dim: int, d_model: int, num_tokens: int | None = None,
                 positions: str = "none"):
        super().__init__()
        if num_tokens is not None and math.isqrt(num_tokens) ** 2 != num_tokens:
            raise ValueError(f"num_visual_tokens must be a square number, got {num_tokens}")
        if positions not in VISUAL_POSITIONS:
            raise ValueError(f"visual positions must be one of {VISUAL_POSITIONS}, got "
                             f"{positions!r}")
        if positions != "none" and num_tokens is None:
            raise ValueError(f"visual_positions {positions!r} needs num_visual_tokens (the "
                             "grid the table is laid out for)")
        self.num_tokens, self.positions = num_tokens, positions
        self.linear = nn.Linear(feature_dim, d_model)
        self.norm = nn.LayerNorm(d_model)
        if positions != "none":
            table = grid_positions(math.isqrt(num_tokens), d_model)
            if positions == "learned":
                self.position = nn.Parameter(table)
            else:  # saved with the weights too: the backbone's fingerprint sees it
                self.register_buffer("position", table)

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        return pool_grid(features, self.num_tokens)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        tokens = self.linear(self.pool(features))
        if self.positions != "none":
            tokens = tokens + self.position.to(tokens.dtype)
        return self.norm(tokens)


def encoder_fingerprint(encoder: ImageEncoder) -> str:
    """What the encoder's outputs depend on: the timm model and its options, its weights and the
    input transform. Another encoder (or other weights) gets another cache folder."""
    digest = hashlib.sha256()
    digest.update(json.dumps(encoder.config.to_dict(), sort_keys=True, default=str).encode())
    digest.update(repr(encoder.transform).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


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
