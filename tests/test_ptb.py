"""PTB-style caption tokenisation (dept_vl/ptb.py): the tokens the COCO caption evaluation's
Java PTBTokenizer gives, checked against fixed outputs of that tokenizer and, where `java` is
installed, against the tokenizer itself."""

import shutil

import pytest

from benchmarks.caption_tokenization import SAMPLE, coco_style_groups, report
from dept_vl.metrics import caption_scores
from dept_vl.ptb import ptb_tokenize

# (caption, what the Java PTBTokenizer + the official punctuation removal give)
EXPECTED = [
    ("A man riding a wave on top of a surfboard.", "a man riding a wave on top of a surfboard"),
    ("A black-and-white photo of a dog's toy (a ball) on the grass.",
     "a black-and-white photo of a dog 's toy -lrb- a ball -rrb- on the grass"),
    ("Two people aren't sitting on a bench; they're standing \"near\" it...",
     "two people are n't sitting on a bench they 're standing near it"),
    ("The cat can't get in, it's on the 2nd floor -- and won't move!",
     "the cat ca n't get in it 's on the 2nd floor and wo n't move"),
    ("A plate with $5.50 worth of food, 1,000 fries & a 50% discount.",
     "a plate with $ 5.50 worth of food 1,000 fries & a 50 % discount"),
    ("Is this a man/woman? It's Mr. Smith's car at St. John's St.",
     "is this a man/woman it 's mr. smith 's car at st. john 's st."),
    ("kids' toys are on the table: [red] {blue} cats' beds.",
     "kids toys are on the table -lsb- red -rsb- -lcb- blue -rcb- cats beds"),
    ("A sign that says 'STOP' in the middle of the road.",
     "a sign that says stop in the middle of the road"),
    ("An old-fashioned train cannot go gonna wanna fast, I'd say.",
     "an old-fashioned train can not go gon na wan na fast i 'd say"),
    ("A café with crème brûlée \u2014 and tea \u2013 on a table.",
     "a café with crème brûlée and tea on a table"),
    ("A man on a skateboard does a trick , on a ramp .",
     "a man on a skateboard does a trick on a ramp"),
    ("A dog.A cat on a mat.", "a dog.a cat on a mat"),
    ("A U.S. Navy ship near the U.S.", "a u.s. navy ship near the u.s."),
    ("The No. 1 pick. No. 5 and no.", "the no. 1 pick no. 5 and no"),
    ("Vitamin C. is good in Mass. but mass. is ill.", "vitamin c. is good in mass. but mass is ill"),
    ("wait... what!! really?! ok?.", "wait what !! really ?! ok"),
    ("It\u2019s 10 o\u2019clock \u201cnow\u201d", "it 's 10 o\u2019clock now"),
    ("A 10-year-old, -10-year-old and a 5'6\" man.",
     "a 10-year-old -10 year-old and a 5 6 man"),
    ("the '90s rock 'n' roll, y'all 'tis o'clock", "the '90s rock 'n' roll y' all 't is o'clock"),
    ("it's-raining that's.looking a-white.airplane with.10",
     "it 's raining that 's looking a-white airplane with .10"),
    ("   two  dogs playing with a frisbee in the grass   ",
     "two dogs playing with a frisbee in the grass"),
]


@pytest.mark.parametrize("caption, expected", EXPECTED)
def test_tokens_are_those_of_the_java_ptb_tokenizer(caption, expected):
    assert ptb_tokenize(caption) == expected


def java_ptb(texts):
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    out = PTBTokenizer().tokenize({i: [{"caption": t}] for i, t in enumerate(texts)})
    return [out[i][0] for i in range(len(texts))]


needs_java = pytest.mark.skipif(shutil.which("java") is None,
                                reason="the official PTBTokenizer runs through java")


@needs_java
def test_same_tokens_as_java_on_every_sample_caption_and_the_fixed_cases():
    texts = [t for group in coco_style_groups() for t in group] + [c for c, _ in EXPECTED]
    java = java_ptb(texts)
    differ = [(t, j, ptb_tokenize(t)) for t, j in zip(texts, java) if ptb_tokenize(t) != j]
    assert not differ
    assert java[-len(EXPECTED):] == [e for _, e in EXPECTED]  # the fixed outputs are Java's


def test_sample_has_five_captions_an_image():
    groups = coco_style_groups()
    assert len(groups) == 51 and {len(g) for g in groups} == {5}
    assert SAMPLE.read_text().count("\n\n") == 51  # a blank line before each image


@needs_java
def test_scores_equal_javas_and_a_simple_tokenisation_moves_them():
    result = report("COCO-style", coco_style_groups())
    assert result["ptb_style"] == result["java_ptb"]
    assert result["simple"]["cider"] - result["java_ptb"]["cider"] == pytest.approx(4.36, abs=0.01)


def test_clitics_and_punctuation_are_split_off_before_scoring():
    references = [["a dog 's toy on the grass", "a toy of the dog on a lawn"]]
    assert caption_scores(["A dog's toy on the grass."], references) == caption_scores(
        ["a dog 's toy on the grass"], references)
    # (one image: CIDEr's IDF is 0 throughout, BLEU-4 tells)
    assert caption_scores(["a dog's toy on the grass"], references)["bleu4"] == pytest.approx(100)
    assert caption_scores(["a dogs toy on the grass"], references)["bleu4"] < 50
