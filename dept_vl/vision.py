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
import json
import logging
import math
import os
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import timm
import torch
from huggingface_hub import constants as hub_constants
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from timm.data import create_transform, resolve_data_config
from timm.models import parse_model_name, split_model_name_tag
from torch import nn
from torch.nn import functional as F

from dept_vl.errors import BackboneError, one_line
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


class VisualProjection(nn.Module):
    """Visual tokens → T5 embeddings: Linear + LayerNorm (VL-T5), with an optional adaptive
    max-pool of the square token grid to `num_tokens` (VL-Adapter pools 7x7 to 6x6)."""

    def __init__(self, feature_dim: int, d_model: int, num_tokens: int | None = None):
        super().__init__()
        if num_tokens is not None and math.isqrt(num_tokens) ** 2 != num_tokens:
            raise ValueError(f"num_visual_tokens must be a square number, got {num_tokens}")
        self.num_tokens = num_tokens
        self.linear = nn.Linear(feature_dim, d_model)
        self.norm = nn.LayerNorm(d_model)

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        if self.num_tokens is None or features.shape[1] == self.num_tokens:
            return features
        batch, count, dim = features.shape
        side = math.isqrt(count)
        if side * side != count:
            raise ValueError(f"cannot pool {count} visual tokens: not a square grid")
        grid = features.transpose(1, 2).reshape(batch, dim, side, side)
        target = math.isqrt(self.num_tokens)
        return F.adaptive_max_pool2d(grid, target).flatten(2).transpose(1, 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.norm(self.linear(self.pool(features)))


def encoder_fingerprint(encoder: ImageEncoder) -> str:
    """What the cached features depend on: the timm model and its options, its weights and the
    input transform. Another encoder (or other weights) gets another cache folder."""
    digest = hashlib.sha256()
    digest.update(json.dumps(encoder.config.to_dict(), sort_keys=True, default=str).encode())
    digest.update(repr(encoder.transform).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class FeatureCache:
    """Frozen-encoder outputs on disk, computed once: safetensors shards of (n, N, D) features
    plus `index.json` {image path: shard, row, file size, mtime, sha256}, in a folder named by
    the encoder's fingerprint.

    A cached entry is only used for the same file content: when an image's size or mtime
    changed, its sha256 is compared and a changed image is encoded again (never served stale).
    """

    INDEX = "index.json"

    def __init__(self, root: str | Path, encoder: ImageEncoder):
        self.encoder = encoder
        self.fingerprint = encoder_fingerprint(encoder)
        self.dir = Path(root) / self.fingerprint
        self.dir.mkdir(parents=True, exist_ok=True)
        index_file = self.dir / self.INDEX
        self.index: dict[str, dict[str, Any]] = (
            json.loads(index_file.read_text())["images"] if index_file.is_file() else {})
        self._shards: dict[str, Any] = {}  # open (memory-mapped) shard files

    @staticmethod
    def key(path: str | Path) -> str:
        return str(Path(path).resolve())

    def is_fresh(self, path: str | Path) -> bool:
        """True when `path` has an entry whose file content is unchanged."""
        entry = self.index.get(self.key(path))
        if entry is None:
            return False
        stat = Path(path).stat()
        if (entry["size"], entry["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns):
            return True
        if entry["sha256"] != _file_digest(Path(path)):
            return False
        entry.update(size=stat.st_size, mtime_ns=stat.st_mtime_ns)  # touched, same content
        return True

    @torch.no_grad()
    def build(self, paths: list[str | Path], batch_size: int = 64) -> int:
        """Encode every image of `paths` that has no fresh entry; return how many were."""
        todo = list(dict.fromkeys(self.key(p) for p in paths if not self.is_fresh(p)))
        if not todo:
            self._write_index()
            return 0
        was_training = self.encoder.training
        self.encoder.eval()
        device = next(self.encoder.parameters()).device
        chunks = []
        for start in range(0, len(todo), batch_size):
            images = []
            for path in todo[start:start + batch_size]:
                with Image.open(path) as image:
                    images.append(to_rgb(image))  # the pixels training sees
            chunks.append(self.encoder(self.encoder.preprocess(images).to(device)).float().cpu())
        shard = f"features-{len(list(self.dir.glob('features-*.safetensors'))):05d}.safetensors"
        save_file({"features": torch.cat(chunks).contiguous()}, self.dir / shard)
        for row, path in enumerate(todo):
            stat = Path(path).stat()
            self.index[path] = {"shard": shard, "row": row, "size": stat.st_size,
                                "mtime_ns": stat.st_mtime_ns, "sha256": _file_digest(Path(path))}
        self.encoder.train(was_training)
        self._write_index()
        return len(todo)

    def _write_index(self) -> None:
        payload = {"encoder": self.encoder.config.to_dict(), "fingerprint": self.fingerprint,
                   "images": self.index}
        tmp = self.dir / (self.INDEX + ".tmp")
        tmp.write_text(json.dumps(payload, default=str))
        tmp.replace(self.dir / self.INDEX)  # never a half-written index

    def features(self, paths: list[str | Path]) -> torch.Tensor:
        """(B, N, D) cached features; a missing or stale image is an error naming it."""
        rows = []
        for path in paths:
            if not self.is_fresh(path):
                raise KeyError(f"{path}: no fresh cached features in {self.dir}; build the "
                               "cache first (python -m dept_vl.features)")
            entry = self.index[self.key(path)]
            if entry["shard"] not in self._shards:
                self._shards[entry["shard"]] = safe_open(self.dir / entry["shard"], "pt")
            row = entry["row"]
            rows.append(self._shards[entry["shard"]].get_slice("features")[row:row + 1])
        return torch.cat(rows)
