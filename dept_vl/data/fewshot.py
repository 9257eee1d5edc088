"""k-shot sampling: k examples per answer class (VQA) or k images (captioning), drawn with a seed.

The same function draws the k-shot training set from the training split and the k-shot dev set
(for model selection) from held-out data; the score is always taken on the full test split.
What a record is balanced on is its type's (`Record.kshot_key`, `kshot_whole_groups`). Knows
nothing of models.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import Sequence

from dept_vl.data.records import RECORD_TYPES, Record


def sample_kshot(records: Sequence[Record], k: int, seed: int) -> list[Record]:
    """k records per key of a record type that balances records (VQA: per answer class), and
    every record of k keys of one that keeps whole groups (captions: k images).

    Deterministic for a seed whatever order `records` come in (they are sorted by id first);
    record types are drawn in the order they were registered. A key with fewer than k records
    contributes all it has. The result is in a seeded random order, so a loader without
    shuffling still sees classes mixed.
    """
    if k < 1:
        raise ValueError(f"k_shot: must be at least 1, got {k}")
    rng = random.Random(seed)
    groups: dict[type, dict[str, list[Record]]] = defaultdict(lambda: defaultdict(list))
    for record in sorted(records, key=lambda r: str(r.id)):
        groups[type(record)][record.kshot_key()].append(record)
    known = list(RECORD_TYPES.values())
    order = [*known, *(kind for kind in groups if kind not in known)]
    chosen: list[Record] = []
    for kind in (kind for kind in order if not kind.kshot_whole_groups and kind in groups):
        for key in sorted(groups[kind]):
            chosen += rng.sample(groups[kind][key], min(k, len(groups[kind][key])))
    for kind in (kind for kind in order if kind.kshot_whole_groups and kind in groups):
        keys = sorted(groups[kind])
        for key in rng.sample(keys, min(k, len(keys))):
            chosen += groups[kind][key]
    rng.shuffle(chosen)
    return chosen


def class_counts(records: Sequence[Record]) -> dict[str, int]:
    """Records per key of the types that balance records (VQA: answer classes), and the keys
    of those that keep whole groups (`<caption images>`): what a k-shot log line shows."""
    counts = Counter(r.kshot_key() for r in records if not r.kshot_whole_groups)
    whole: dict[str, set[str]] = defaultdict(set)
    for record in records:
        if record.kshot_whole_groups:
            whole[f"<{record.rows} images>"].add(record.kshot_key())
    counts.update({label: len(keys) for label, keys in whole.items()})
    return dict(sorted(counts.items()))
