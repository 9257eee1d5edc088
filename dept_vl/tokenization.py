"""Tokenizers learnt from a corpus, for backbones built here without any download: word-level
(a closed vocabulary: an unseen word is `<unk>`), or byte-level BPE (open: an unseen word falls
back to smaller pieces, down to its UTF-8 bytes, so no text has an unknown token).

A byte-level BPE built for a backbone also learns from `english_words()`, a list of common
English words shipped with the package (dept_vl/data/english_words.txt), so words its corpus
never used still come out in a few pieces rather than spelt byte by byte.

Saved with `save_pretrained`, it loads back through `AutoTokenizer.from_pretrained` like any
checkpoint's own tokenizer. Ids follow T5's convention: pad 0 (also decoder start), eos 1, unk 2.
"""

from __future__ import annotations

from collections import Counter
from functools import cache
from importlib import resources
from typing import Iterable

from tokenizers import (
    Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers,
)
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")
# in the dept_vl.data package (pyproject.toml's package-data ships it in the wheel)
WORD_LIST = "english_words.txt"


@cache
def english_words() -> tuple[str, ...]:
    """About 2,800 common English words, lower case: everyday nouns, verbs and adjectives,
    colours, shapes, numbers, spatial, negation and question words."""
    text = resources.files("dept_vl.data").joinpath(WORD_LIST).read_text(encoding="utf-8")
    return tuple(text.split())


def build_word_tokenizer(texts: Iterable[str], min_count: int = 1) -> PreTrainedTokenizerFast:
    """Every word seen at least `min_count` times gets an id (most frequent first)."""
    normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Strip()])
    pre_tokenizer = pre_tokenizers.Whitespace()
    counts: Counter[str] = Counter()
    for text in texts:
        words = pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
        counts.update(word for word, _ in words)
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        if count >= min_count and word not in vocab:
            vocab[word] = len(vocab)
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return _t5_style(tokenizer)


def build_byte_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 1000
                             ) -> PreTrainedTokenizerFast:
    """Byte-level BPE learnt from `texts` (at most `vocab_size` entries, the 256 byte symbols
    and the special tokens included): frequent words are one token, any other UTF-8 text is
    spelt from merges and bytes. Lower-cased like the word-level tokenizer."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Strip()])
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return _t5_style(tokenizer)


def _t5_style(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    """T5's conventions: pad 0 (also the decoder start), eos 1 after every text, unk 2."""
    for token_id, token in enumerate(SPECIAL_TOKENS):  # both builders put them first
        if tokenizer.token_to_id(token) != token_id:
            raise ValueError(f"tokenizer: {token} has id {tokenizer.token_to_id(token)}, "
                             f"T5's convention is {token_id}")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        model_max_length=512,
    )
