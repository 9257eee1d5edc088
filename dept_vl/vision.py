"""The frozen image side: any timm model as a grid-of-tokens encoder, plus the trainable
projection into the T5 embedding space.

timm gives every model the same face (`create_model`, `forward_features`, data config), so one
wrapper serves ViTs (prefix tokens dropped) and CNNs (feature map flattened row by row).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from torch import nn
from torch.nn import functional as F


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


class ImageEncoder(nn.Module):
    """timm model → (B, N, D) visual tokens, with its preprocessing from timm's data config."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        kwargs = dict(config.model_kwargs)
        if config.weights_file:
            kwargs["pretrained_cfg_overlay"] = {"file": config.weights_file}
        self.model = timm.create_model(
            config.model_name,
            pretrained=config.pretrained or bool(config.weights_file),
            num_classes=0,
            **kwargs,
        )
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
        """PIL images → (B, 3, H, W) normalised as the encoder expects."""
        return torch.stack([self.transform(img.convert("RGB")) for img in images])

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
