"""The frozen image side: any timm model as a grid-of-tokens encoder and the trainable projection
into the T5 embedding space (the disk cache of the encoder's outputs: dept_vl/feature_cache.py).

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
from safetensors import SafetensorError
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
