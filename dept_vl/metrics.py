"""Evaluation metrics: VQA accuracy (official normalisation) and BLEU-4 / CIDEr.

VQA answers are normalised with the rules of the official VQA evaluation script, so
numbers are comparable with published VQAv2 results. Captions are scored with
pycocoevalcap's pure-Python BLEU and CIDEr-D after PTB-style tokenisation
(`dept_vl.ptb.ptb_tokenize`): the Python counterpart of the official evaluation's Java
PTBTokenizer (Stanford CoreNLP 3.4.1, `-preserveLines -lowerCase`, then its punctuation list
dropped), so no Java is needed. It gives the Java tokenizer's tokens on every caption of
benchmarks/coco_style_captions.txt (255 COCO-style captions), hence the same BLEU-4 and
CIDEr-D there, and scores are comparable with published COCO Karpathy-test numbers computed
with the same metric code (differences remain possible on text outside what captions hold:
see dept_vl/ptb.py). A simpler lowercase / punctuation-to-spaces tokenisation scores that
sample's human captions 4.36 CIDEr-D and 1.32 BLEU-4 higher (docs/guide.md, Metrics;
`python -m benchmarks.caption_tokenization`)."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Sequence

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

from dept_vl.ptb import ptb_tokenize

_NUMBERS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
# Apostrophe-less spellings the official script restores. Words that are also ordinary
# English ("its", "ill", "well", "were", "shed", ...) are deliberately absent.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hasnt": "hasn't", "havent": "haven't", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "im": "i'm", "ive": "i've",
    "isnt": "isn't", "itll": "it'll", "lets": "let's", "maam": "ma'am",
    "mightnt": "mightn't", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "oclock": "o'clock", "shant": "shan't", "shes": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "thats": "that's",
    "thered": "there'd", "therere": "there're", "theres": "there's", "theyd": "they'd",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "wasnt": "wasn't",
    "werent": "weren't", "weve": "we've", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whod": "who'd", "wholl": "who'll", "whos": "who's", "whyd": "why'd",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "yall": "y'all",
    "youd": "you'd", "youll": "you'll", "youre": "you're", "youve": "you've",
}
_PUNCTUATION = ";/[]\"{}()=+\\_-><@`,?!"
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# Official behaviour: a period is dropped unless a digit follows it ("2.5" survives).
_PERIOD = re.compile(r"\.(?!\d)")


def _strip_punctuation(text: str) -> str:
    """The official rule: a mark next to a space (or any text with '1,000'-style numbers)
    is deleted, otherwise it becomes a space ('black/white' -> 'black white'). Whether a mark
    is next to a space is decided on the answer as given, as the official script does, not on
    what earlier marks left ('x(-y c-d' keeps 'c d' apart)."""
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in _PUNCTUATION:
        if delete_all or f"{mark} " in text or f" {mark}" in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out)


def normalize_answer(text: str) -> str:
    """Official VQA normalisation: punctuation, lowercase, number words to digits,
    no articles, restored contractions, single spaces."""
    words = []
    for word in _strip_punctuation(text.replace("\n", " ").replace("\t", " ")).lower().split():
        word = _NUMBERS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def vqa_score(prediction: str, answers: Sequence[str]) -> float:
    """Soft accuracy of one prediction in [0, 1].

    With >= 10 human answers (VQAv2) each human is left out in turn and the prediction
    scores min(1, matches among the others / 3), averaged; fewer references mean
    exact match against any of them.
    """
    if not answers:
        raise ValueError("vqa_score needs at least one reference answer")
    pred = normalize_answer(prediction)
    refs = [normalize_answer(a) for a in answers]
    if len(refs) < 10:
        return float(pred in refs)
    matches = sum(ref == pred for ref in refs)
    # Leaving out a human who gave the prediction removes one match from "the others".
    per_human = [min(1.0, (matches - (ref == pred)) / 3) for ref in refs]
    return sum(per_human) / len(per_human)


def _check_lengths(**sequences: Sequence) -> None:
    lengths = {name: len(seq) for name, seq in sequences.items()}
    if len(set(lengths.values())) > 1:
        described = ", ".join(f"{n} {name}" for name, n in lengths.items())
        raise ValueError(f"length mismatch: {described}")


def vqa_accuracy(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean VQA score in percent (0-100)."""
    _check_lengths(predictions=predictions, references=references)
    if not predictions:
        raise ValueError("vqa_accuracy needs at least one example")
    return 100.0 * sum(map(vqa_score, predictions, references)) / len(predictions)


def vqa_accuracy_by_type(predictions: Sequence[str], references: Sequence[Sequence[str]],
                         types: Sequence[str]) -> dict[str, float]:
    """VQA accuracy in percent per question type, keys sorted."""
    _check_lengths(predictions=predictions, references=references, types=types)
    scores: dict[str, list[float]] = defaultdict(list)
    for pred, refs, qtype in zip(predictions, references, types):
        scores[qtype].append(vqa_score(pred, refs))
    return {t: 100.0 * sum(scores[t]) / len(scores[t]) for t in sorted(scores)}


def caption_scores(predictions: Sequence[str], references: Sequence[Sequence[str]],
                   tokenize: Callable[[str], str] = ptb_tokenize) -> dict[str, float]:
    """Corpus BLEU-4 and CIDEr-D, both x100 as papers report them ("CIDEr 112.2"), on the
    texts as `tokenize` gives them (space-separated tokens; PTB-style by default).

    CIDEr weighs n-grams by an IDF computed over the whole reference set, so call this
    once on a full split: scores of batches are not comparable and cannot be averaged.
    """
    _check_lengths(predictions=predictions, references=references)
    if not predictions:
        raise ValueError("caption_scores needs at least one example")
    if any(len(refs) == 0 for refs in references):
        raise ValueError("every prediction needs at least one reference caption")
    res = {i: [tokenize(p)] for i, p in enumerate(predictions)}
    gts = {i: [tokenize(r) for r in refs] for i, refs in enumerate(references)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {"bleu4": 100.0 * float(bleu[3]), "cider": 100.0 * float(cider)}
