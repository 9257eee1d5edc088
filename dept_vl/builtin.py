"""The backbone shipped inside the package, and the command that packs one into it.

`builtin` as a backbone (`VLT5.from_pretrained("builtin")`, `backbone: builtin` in a config,
`--backbone builtin`) names the folder `dept_vl/builtin/` (see `model_files.resolve_backbone`):
a packed backbone folder, i.e. the json and tokenizer files of any backbone folder but every
weight in one float16 safetensors file, plus its model card (README.md). That folder holds data
only, and this module sits beside it rather than in it, so that a pack can build the folder
anew and swap it in whole (atomically), as every backbone save does.

    python -m dept_vl.builtin runs/backbone-shapes/model --card card.md [--out DIR]
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dept_vl.data.formats import load_records
from dept_vl.evaluate import evaluate
from dept_vl.errors import UserError
from dept_vl.files import read_json_object
from dept_vl.model import VLT5
from dept_vl.tables import markdown_table


def pack_backbone(source: str | os.PathLike, target: str | os.PathLike,
                  card: str | None = None) -> Path:
    """Load the backbone folder `source` and write it packed to `target`: one float16 weights
    file (tied weights once), its fingerprint that of the float16 weights, built beside
    `target` and swapped in whole. Non-finite weights and weights beyond float16's range are
    refused (BackboneError, naming the tensor). `card`: the model card, written as README.md."""
    model = VLT5.from_pretrained(source)
    model.save_pretrained(target, packed=True, card=card)
    return Path(target)


def read_card(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as problem:
        raise UserError(f"{file}: the model card cannot be read ({problem})") from None


# the corpus splits a card reports, and what they are
CARD_SPLITS = {"test": "test (ordinary styles)",
               "heldout_test": "heldout_test (held-out style: outlined shapes on gradients)"}
REBUILD = ("accelerate launch dept_vl/train.py --config configs/backbone_shapes.yaml\n"
           "python -m dept_vl.builtin runs/backbone-shapes/model --corpus runs/shapes-pretrain")


def zero_shot(model: VLT5, corpus: Path, batch_size: int = 100) -> dict[str, dict[str, Any]]:
    """The frozen backbone with no adapter on the corpus' VQA test splits (CARD_SPLITS):
    {split: metrics}, accuracy per question type included."""
    results = {}
    for split in CARD_SPLITS:
        records = load_records(corpus / f"{split}_vqa.jsonl", "vqa")
        results[split] = evaluate(model, records, None, batch_size, model.max_text_length)[0]
    return results


def _zero_shot_table(results: dict[str, dict[str, Any]], pretrained: list[str]) -> str:
    types = sorted({t for m in results.values() for t in m["vqa_accuracy_by_type"]},
                   key=lambda t: (t not in pretrained, t))
    rows = [{"split": CARD_SPLITS[split], "all": m["vqa_accuracy"],
             **{t: m["vqa_accuracy_by_type"].get(t) for t in types}}
            for split, m in results.items()]
    columns = [("split", "split"), ("all", "all types"),
               *[(t, t if t in pretrained else f"{t} (reserved)") for t in types]]
    fmt = {key: (lambda v: "–" if v is None else f"{v:.1f}") for key, _ in columns[1:]}
    return markdown_table(rows, columns, fmt)


def card_text(model: VLT5, corpus: Path, results: dict[str, dict[str, Any]],
              run: dict[str, Any]) -> str:
    """The built-in backbone's model card: what it is, what it learnt from, how to rebuild it,
    and its zero-shot accuracy per question type."""
    manifest = read_json_object(corpus / "manifest.json", UserError)
    settings = run.get("settings", {})
    pretrained = model.metadata.get("pretrain_question_types", [])
    t5 = model.t5.config
    world = ", ".join(f"{k} {manifest.get(k)}" for k in
                      ("version", "n_images", "seed", "image_size", "palette", "shapes", "types"))
    total = sum(p.numel() for p in model.parameters())
    return f"""# dept_vl built-in backbone

A small VL-T5 pretrained from scratch on dept_vl's built-in world of coloured shapes
(docs/builtin_world.md), shipped so that adapters can be trained with no download. It stands in
for a pretrained vision-language model: it knows every object's colour, shape, size and
position, in pictures drawn many ways, and answers questions about them; it was never asked to
count.

- **Model**: T5 (d_model {t5.d_model}, {t5.num_layers}+{t5.num_decoder_layers} layers, \
vocabulary {t5.vocab_size}) + timm `{model.vision.config.model_name}` at \
{model.vision.config.image_size} px ({model.projection.num_tokens} visual tokens, \
{model.projection.positions} grid positions) + visual projection: {total:,} parameters, \
stored in float16 (`model.safetensors`).
- **World**: `dept_vl.shapes` {world}; trained on its `train` split, never on the held-out style.
- **Pretraining**: full training of every weight, {run.get("steps", "?")} steps, batch \
{settings.get("batch_size", "?")}, lr {settings.get("lr", "?")} (warmup \
{settings.get("warmup_steps", "?")}, linear decay), seed {settings.get("seed", "?")}, on the \
captions and the question types {", ".join(pretrained)}.
- **Fingerprint** (every weight, `VLT5.backbone_fingerprint()`): `{model.backbone_fingerprint()}`.
- **Rebuild** (from scratch, offline):

```bash
{REBUILD}
```

## Zero-shot accuracy (frozen, no adapter; VQA accuracy %)

{_zero_shot_table(results, pretrained)}

Measured by `python -m dept_vl.builtin` on the corpus above ({", ".join(
    f"{s} {manifest['splits'][s]['questions']:,} questions" for s in CARD_SPLITS)}).
"""


if __name__ == "__main__":  # `python -m dept_vl.builtin`: its command line is dept_vl/cli/builtin.py
    from dept_vl.cli.builtin import cli

    cli()
