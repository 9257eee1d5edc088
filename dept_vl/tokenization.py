"""A word-level tokenizer learnt from a corpus, for backbones built here without any download.

Saved with `save_pretrained`, it loads back through `AutoTokenizer.from_pretrained` like any
checkpoint's own tokenizer. Ids follow T5's convention: pad 0 (also decoder start), eos 1, unk 2.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")


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
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        model_max_length=512,
    )
