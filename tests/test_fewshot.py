"""k-shot sampling: per-class balanced, deterministic per seed, captions by image."""

import random
from collections import Counter

import pytest

from dept_vl.data.fewshot import class_counts, sample_kshot
from dept_vl.data.records import CaptionRecord, VQARecord


def vqa_records(n=60, seed=0):
    rng = random.Random(seed)
    labels = ["one"] * 30 + ["two"] * 20 + ["three"] * 7 + ["four"] * 3
    return [VQARecord(id=f"q{i}", image=f"img{i}.png", question="how many ?",
                      answers=(label,), question_type="count")
            for i, label in enumerate(rng.sample(labels, n))]


def test_k_per_answer_class_and_all_of_a_small_class():
    chosen = sample_kshot(vqa_records(), k=5, seed=0)
    counts = Counter(r.kshot_key() for r in chosen)
    assert counts == {"one": 5, "two": 5, "three": 5, "four": 3}  # "four" has only 3
    assert len({r.id for r in chosen}) == len(chosen)


def test_same_seed_same_sample_whatever_the_input_order():
    records = vqa_records()
    first = [r.id for r in sample_kshot(records, k=4, seed=7)]
    shuffled = records[::-1]
    assert [r.id for r in sample_kshot(shuffled, k=4, seed=7)] == first
    assert sorted(r.id for r in sample_kshot(records, k=4, seed=8)) != sorted(first)


def test_class_is_the_most_common_answer():
    record = VQARecord(id="a", image="x.png", question="q ?", answers=("red", "blue", "red"))
    assert record.kshot_key() == "red"


def test_captions_are_sampled_by_image_with_all_their_captions():
    records = [CaptionRecord(id=f"c{i}", image=f"img{i // 2}.png", captions=(f"caption {i}",))
               for i in range(20)]  # two caption rows per image
    chosen = sample_kshot(records, k=3, seed=0)
    assert len({r.image for r in chosen}) == 3 and len(chosen) == 6
    assert class_counts(chosen) == {"<caption images>": 3}


def test_k_must_be_positive():
    with pytest.raises(ValueError, match="k_shot"):
        sample_kshot(vqa_records(), k=0, seed=0)
