"""What the backbone's tokenizer cannot represent in a run's data, found before training.

A word the tokenizer does not know becomes its unknown token: "does the picture not contain a
magenta hexagon?" read by a closed word-level vocabulary is `<unk> the <unk> <unk> ...`, and an
answer made of such words can never be generated. Real T5 SentencePiece vocabularies have holes
too (`{`, `}`, some Unicode). This measures, per split, the share of input texts and of target
texts with at least one unknown token, with examples, so that the tokenizer's ceiling is seen
before a run is spent on it (`on_unknown_tokens: warn | error`).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from dept_vl.errors import UserError
from dept_vl.tasks import spec_of

EXAMPLES = 5  # texts shown per split and side


class CoverageError(UserError, ValueError):
    """The data has words the backbone's tokenizer cannot represent (on_unknown_tokens: error)."""


def unknown_pieces(tokenizer: Any, text: str) -> list[str]:
    """The pieces of `text` that become the unknown token (["<unk>"] where a slow tokenizer
    gives no offsets to cut them out)."""
    unk = tokenizer.unk_token_id
    if unk is None:
        return []
    if not getattr(tokenizer, "is_fast", False):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return [tokenizer.unk_token] * ids.count(unk)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return [text[start:end] for token, (start, end)
            in zip(encoded["input_ids"], encoded["offset_mapping"]) if token == unk]


def text_coverage(tokenizer: Any, texts: Iterable[str]) -> dict[str, Any]:
    """{texts, with_unknown, share (%), examples: [{text, unknown}]} over distinct texts."""
    distinct = sorted(set(texts))
    unk = tokenizer.unk_token_id
    ids = tokenizer(distinct, add_special_tokens=False)["input_ids"] if distinct else []
    flagged = [text for text, row in zip(distinct, ids) if unk is not None and unk in row]
    return {"texts": len(distinct), "with_unknown": len(flagged),
            "share": round(100 * len(flagged) / max(len(distinct), 1), 2),
            "examples": [{"text": text, "unknown": unknown_pieces(tokenizer, text)}
                         for text in flagged[:EXAMPLES]]}


def split_coverage(tokenizer: Any, records: Sequence[Any]) -> dict[str, Any]:
    """Inputs (what the encoder reads) and targets (what the decoder must produce)."""
    inputs = (spec_of(r).input_text(r) for r in records)
    targets = (t for r in records for t in spec_of(r).targets(r))
    return {"inputs": text_coverage(tokenizer, inputs),
            "targets": text_coverage(tokenizer, targets)}


def coverage_report(tokenizer: Any, splits: dict[str, Sequence[Any]]) -> dict[str, Any]:
    """{split: {inputs, targets}} for the splits that have records."""
    return {name: split_coverage(tokenizer, records) for name, records in splits.items()
            if records}


def coverage_lines(report: dict[str, Any]) -> list[str]:
    """One line per split and side that has unknown tokens, with its first example."""
    lines = []
    for name, split in report.items():
        for side, found in split.items():
            if not found["with_unknown"]:
                continue
            example = found["examples"][0]
            lines.append(f"{name} {side}: {found['share']}% of {found['texts']} distinct texts "
                         f"have unknown tokens, e.g. {example['text']!r} "
                         f"(unknown: {', '.join(map(repr, example['unknown']))})")
    return lines
