"""k-shot sampling: k examples per answer class (VQA) or k images (captioning), drawn with a seed.

The same function draws the k-shot training set from the training split and the k-shot dev set
(for model selection) from held-out data; the score is always taken on the full test split.
Knows nothing of models.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import Sequence

from dept_vl.data.records import CaptionRecord, Record, VQARecord


def answer_class(record: VQARecord) -> str:
    """The class a VQA example is balanced on: its most common reference answer."""
    counts = Counter(record.answers)
    return min(counts, key=lambda answer: (-counts[answer], answer))


def _image_key(record: Record) -> str:
    return record.image_key or str(record.id)  # a file path or a dataset row


def sample_kshot(records: Sequence[Record], k: int, seed: int) -> list[Record]:
    """k VQA records per answer class plus every caption record of k images.

    Deterministic for a seed whatever order `records` come in (they are sorted by id first).
    A class with fewer than k examples contributes all it has. The result is in a seeded
    random order, so a loader without shuffling still sees classes mixed.
    """
    if k < 1:
        raise ValueError(f"k_shot: must be at least 1, got {k}")
    rng = random.Random(seed)
    ordered = sorted(records, key=lambda r: str(r.id))
    by_class: dict[str, list[VQARecord]] = defaultdict(list)
    by_image: dict[str, list[CaptionRecord]] = defaultdict(list)
    for record in ordered:
        if isinstance(record, VQARecord):
            by_class[answer_class(record)].append(record)
        else:
            by_image[_image_key(record)].append(record)
    chosen: list[Record] = []
    for label in sorted(by_class):
        group = by_class[label]
        chosen += rng.sample(group, min(k, len(group)))
    images = sorted(by_image)
    for image in rng.sample(images, min(k, len(images))):
        chosen += by_image[image]
    rng.shuffle(chosen)
    return chosen


def class_counts(records: Sequence[Record]) -> dict[str, int]:
    """Examples per answer class (VQA) and images (captions): what a k-shot log line shows."""
    counts = Counter(answer_class(r) for r in records if isinstance(r, VQARecord))
    images = {_image_key(r) for r in records if isinstance(r, CaptionRecord)}
    if images:
        counts["<caption images>"] = len(images)
    return dict(sorted(counts.items()))
