"""VQA normalisation and soft accuracy, BLEU-4 / CIDEr wrappers."""

import pytest

from dept_vl.metrics import (caption_scores, normalize_answer, vqa_accuracy,
                             vqa_accuracy_by_type, vqa_score)


@pytest.mark.parametrize("raw, expected", [
    ("Two", "2"),
    ("zero", "0"),
    ("none", "0"),
    ("ten dogs", "10 dogs"),
    ("the dog", "dog"),
    ("A Red Circle", "red circle"),
    ("an apple", "apple"),
    ("yes.", "yes"),
    ("Yes!", "yes"),
    ("2.5", "2.5"),
    ("1,000", "1000"),
    ("black/white", "black white"),
    ("black / white", "black white"),
    ("t-shirt", "t shirt"),
    ("dont", "don't"),
    ("isnt it", "isn't it"),
    ("its", "its"),
    ("  many \t spaces\n", "many spaces"),
    # a mark's neighbours are those of the answer as given (official script), so "c-d" is
    # split although deleting "(" put a space before a "-"
    ("x(-y c-d", "x y c d"),
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_single_reference_is_exact_match_after_normalisation():
    assert vqa_score("Two", ["2"]) == 1.0
    assert vqa_score("the red", ["red"]) == 1.0
    assert vqa_score("red circle", ["red"]) == 0.0
    assert vqa_score("blue", ["red", "blue"]) == 1.0


def test_ten_answers_use_leave_one_out_rule():
    # Humans who said it see 2 other matches (2/3); the other 7 see 3 (capped at 1).
    assert vqa_score("red", ["red"] * 3 + ["blue"] * 7) == pytest.approx(0.9)
    # 1 match: its giver sees 0 others, the 9 others see 1 -> 9 * (1/3) / 10.
    assert vqa_score("red", ["red"] + ["blue"] * 9) == pytest.approx(0.3)
    # 2 matches: givers see 1 (1/3), others see 2 (2/3) -> (2/3 + 8 * 2/3) / 10.
    assert vqa_score("red", ["red"] * 2 + ["blue"] * 8) == pytest.approx(0.6)
    assert vqa_score("red", ["red"] * 4 + ["blue"] * 6) == 1.0
    assert vqa_score("green", ["red"] * 4 + ["blue"] * 6) == 0.0
    assert vqa_score("Two", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)


def test_vqa_score_needs_references():
    with pytest.raises(ValueError):
        vqa_score("red", [])


def test_vqa_accuracy_is_percent_over_examples():
    preds = ["red", "two", "no", "square"]
    refs = [["red"], ["2"], ["yes"], ["red"] * 3 + ["square"] * 7]
    assert vqa_accuracy(preds, refs) == pytest.approx(100 * (1 + 1 + 0 + 1) / 4)


def test_vqa_accuracy_by_type_sorts_keys():
    preds = ["red", "blue", "yes", "3"]
    refs = [["red"], ["red"], ["yes"], ["three"]]
    by_type = vqa_accuracy_by_type(preds, refs, ["color", "color", "exists", "count"])
    assert list(by_type) == ["color", "count", "exists"]
    assert by_type == {"color": 50.0, "count": 100.0, "exists": 100.0}


def test_length_mismatch_names_both_lengths():
    with pytest.raises(ValueError, match=r"2 predictions.*1 references"):
        vqa_accuracy(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match=r"1 types"):
        vqa_accuracy_by_type(["a", "b"], [["a"], ["b"]], ["t"])
    with pytest.raises(ValueError, match=r"3 predictions.*2 references"):
        caption_scores(["a", "b", "c"], [["a"], ["b"]])


REFS = [
    ["three objects : large red circle left of small blue square above large green triangle"],
    ["one object : small white square"],
    ["two objects : large orange triangle above small purple circle"],
    ["two objects : small yellow circle right of large blue triangle"],
]


def test_identical_captions_score_bleu4_100_and_beat_mismatches():
    perfect = caption_scores([r[0] for r in REFS], REFS)
    assert perfect["bleu4"] == pytest.approx(100.0, abs=1e-3)
    assert set(perfect) == {"bleu4", "cider"}

    partial = caption_scores([
        "three objects : large red circle left of small blue square",
        "one object : small white circle",
        "two objects : large orange triangle below small purple circle",
        "two objects : small yellow square right of large blue triangle",
    ], REFS)
    wrong = caption_scores(["a dog on a bench"] * 4, REFS)
    assert perfect["cider"] > partial["cider"] > wrong["cider"] >= 0.0
    assert perfect["bleu4"] > partial["bleu4"] > wrong["bleu4"] >= 0.0
    assert wrong["bleu4"] < 1.0


def test_caption_tokenisation_ignores_case_and_punctuation():
    plain = caption_scores([r[0] for r in REFS], REFS)
    noisy = caption_scores([r[0].upper().replace(" :", ":") + "." for r in REFS], REFS)
    assert noisy == pytest.approx(plain)


def test_caption_scores_reject_empty_inputs():
    with pytest.raises(ValueError):
        caption_scores([], [])
    with pytest.raises(ValueError):
        caption_scores(["a dog"], [[]])
