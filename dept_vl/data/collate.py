"""Records → tensors: input text and targets as each record's task says (dept_vl/tasks.py),
tokenisation with dynamic padding, image transform.

Knows nothing of models: the tokenizer, the image transform and the image loader are handed in.
"""

from __future__ import annotations

import random
from typing import Any, Callable, NamedTuple, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

from dept_vl.data.image_files import load_image
from dept_vl.data.records import Record
from dept_vl.tasks import spec_of


class Example(NamedTuple):
    """A training record with the seed of its target draw (which of its answers it learns)."""

    record: Record
    draw: int


class RecordDataset(Dataset):
    """A list of records as a map-style dataset; the collator does the work.

    With `seed` (training), item i of epoch e is an Example whose target draw is seeded by
    (seed, e, i) alone: which answer a record learns does not depend on which process collates
    it, in which batch, or whether the run was resumed (a running RNG in the collator would)."""

    def __init__(self, records: Sequence[Record], seed: int | None = None):
        self.records = list(records)
        self.seed = seed
        self.epoch = 0

    def start_epoch(self, epoch: int) -> None:
        # not `set_epoch`: accelerate calls that with its own count of iterations, which
        # restarts at 0 in a resumed run
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Record | Example:
        if self.seed is None:
            return self.records[index]
        draw = random.Random(f"{self.seed}/{self.epoch}/{index}").getrandbits(64)
        return Example(self.records[index], draw)


def target_text(record: Record, rng: random.Random | None) -> str:
    """The decoder target: drawn with `rng` (training) or the most common one (evaluation), as
    the record's task says (dept_vl/tasks.py); "" for an unanswered record (a test split, only
    predicted), whose labels the collator masks whole."""
    if getattr(record, "unanswered", False):
        return ""
    return spec_of(record).target(record, rng)


def input_text(record: Record) -> str:
    """The encoder's text: the task's prefix, then the record's own text if the task reads it."""
    return spec_of(record).input_text(record)


class VLCollator:
    """Batch of records → `input_ids`, `attention_mask` (padded to the batch's longest text, never
    to a fixed length), `pixel_values` (or, with a feature cache, the encoder's cached
    `visual_features`), `labels` (-100 on padding) and the records themselves."""

    def __init__(
        self,
        tokenizer: Any,
        image_transform: Callable[[Image.Image], torch.Tensor],
        max_length: int,
        max_target_length: int = 48,
        train: bool = True,
        seed: int = 0,
        cache_images: bool = False,
        feature_cache: Any = None,
    ):
        self.tokenizer = tokenizer
        self.image_transform = image_transform
        self.max_length = max_length
        self.max_target_length = max_target_length
        self.rng = random.Random(seed) if train else None
        self._pixels: dict[str, torch.Tensor] | None = {} if cache_images else None
        # an object with .features(paths) → (B, N, D): the frozen encoder's cached outputs
        self.feature_cache = feature_cache

    def pixels(self, record: Record) -> torch.Tensor:
        key = record.image_key  # None: an image held in memory, nothing to key it by
        if self._pixels is not None and key is not None and key in self._pixels:
            return self._pixels[key]
        tensor = self.image_transform(load_image(record))
        if self._pixels is not None and key is not None:
            self._pixels[key] = tensor
        return tensor

    def __call__(self, items: Sequence[Record | Example]) -> dict[str, Any]:
        records = [item.record if isinstance(item, Example) else item for item in items]
        rngs = [random.Random(item.draw) if isinstance(item, Example) else self.rng
                for item in items]
        inputs = self.tokenizer(
            [input_text(r) for r in records], padding="longest", truncation=True,
            max_length=self.max_length, return_tensors="pt",
        )
        targets = self.tokenizer(
            [target_text(r, rng) for r, rng in zip(records, rngs)], padding="longest",
            truncation=True, max_length=self.max_target_length, return_tensors="pt",
        )
        labels = targets["input_ids"].masked_fill(targets["attention_mask"] == 0, -100)
        # no answer, nothing to learn or score (training refuses such records beforehand)
        labels[[getattr(r, "unanswered", False) for r in records]] = -100
        batch = {
            "input_ids": inputs["input_ids"],
            "attention_mask": inputs["attention_mask"],
            "labels": labels,
            "records": list(records),
        }
        if self.feature_cache is not None:
            batch["visual_features"] = self.feature_cache.features([r.image for r in records])
        else:
            batch["pixel_values"] = torch.stack([self.pixels(r) for r in records])
        return batch
