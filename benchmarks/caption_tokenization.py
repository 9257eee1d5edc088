"""How much the caption tokenisation moves BLEU-4 and CIDEr-D: dept_vl's PTB-style one
(dept_vl/ptb.py), a simple lowercase / punctuation-to-spaces one, and the official Java
PTBTokenizer where `java` is installed.

    python -m benchmarks.caption_tokenization [--out FILE.json]

Two samples: the COCO-style captions of benchmarks/coco_style_captions.txt (five an image) and
the built-in world's captions (three an image, 200 test images of a corpus written with seed
0). Each caption of an image in turn is the prediction and the others its references (human
agreement, as COCO reports it); the scores are the mean over those rounds. Counting only, no
timing: the numbers are the same on every machine.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from dept_vl.metrics import caption_scores
from dept_vl.ptb import ptb_tokenize

SAMPLE = Path(__file__).with_name("coco_style_captions.txt")


def simple_tokenize(text: str) -> str:
    """Lowercase, apostrophes dropped, every other mark a space: a common stand-in for the
    PTB tokenizer in caption code that avoids Java."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower().replace("'", "")).split())


def coco_style_groups() -> list[list[str]]:
    """The sample's captions, one list an image (blank lines part images, # starts a note)."""
    groups: list[list[str]] = [[]]
    for line in SAMPLE.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            continue
        if line.strip():
            groups[-1].append(line)
        elif groups[-1]:
            groups.append([])
    return [group for group in groups if group]


def builtin_groups(images: int = 200) -> list[list[str]]:
    """The built-in world's test captions of `images` images."""
    from dept_vl.data import shapes

    folder = tempfile.mkdtemp()
    try:
        shapes.write_corpus(folder, n_images=images * 10, seed=0, image_size=32)
        rows = [json.loads(line) for line in
                (Path(folder) / "test_caption.jsonl").read_text().splitlines()]
    finally:
        shutil.rmtree(folder)
    return [row["captions"] for row in rows[:images]]


def java_tokenizer(texts: list[str]) -> Callable[[str], str] | None:
    """The official Java PTBTokenizer's output for `texts`, as a lookup; None without java."""
    if shutil.which("java") is None:
        return None
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    unique = sorted(set(texts))
    out = PTBTokenizer().tokenize({i: [{"caption": t}] for i, t in enumerate(unique)})
    tokens = {text: out[i][0] for i, text in enumerate(unique)}
    return tokens.__getitem__


def human_agreement(groups: list[list[str]], tokenize: Callable[[str], str]) -> dict[str, float]:
    """Mean BLEU-4 and CIDEr-D over rounds k: caption k of each image against its others."""
    rounds = min(len(group) for group in groups)
    scores = [caption_scores([g[k] for g in groups], [g[:k] + g[k + 1:] for g in groups],
                             tokenize) for k in range(rounds)]
    return {key: round(sum(s[key] for s in scores) / rounds, 2) for key in ("bleu4", "cider")}


def report(name: str, groups: list[list[str]]) -> dict:
    """Scores under each tokenisation, and how many captions each tokenises as the PTB does."""
    texts = [text for group in groups for text in group]
    tokenizers = {"ptb_style": ptb_tokenize, "simple": simple_tokenize}
    java = java_tokenizer(texts)
    if java is not None:
        tokenizers["java_ptb"] = java
    reference = java or ptb_tokenize
    result = {"sample": name, "images": len(groups), "captions": len(texts)}
    for label, tokenize in tokenizers.items():
        result[label] = {**human_agreement(groups, tokenize),
                         "same_tokens_as_ptb": sum(tokenize(t) == reference(t) for t in texts)}
    result["reference"] = "java_ptb" if java is not None else "ptb_style"
    return result


def markdown(results: list[dict]) -> str:
    lines = ["| sample | tokenisation | BLEU-4 | CIDEr-D | captions tokenised as the PTB |",
             "|---|---|---|---|---|"]
    for result in results:
        for label in ("java_ptb", "ptb_style", "simple"):
            if label in result:
                row = result[label]
                lines.append(f"| {result['sample']} ({result['images']} images) | {label} | "
                             f"{row['bleu4']:.2f} | {row['cider']:.2f} | "
                             f"{row['same_tokens_as_ptb']} / {result['captions']} |")
    reference = {r["reference"] for r in results}
    lines.append(f"\n(PTB: {', '.join(sorted(reference))})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    results = [report("COCO-style", coco_style_groups()), report("built-in", builtin_groups())]
    print(markdown(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
