"""How fast the built-in backbone learns its world: pretrain it for a few hundred steps on a
variant of the shapes corpus and print its pretrained-type eval accuracy per type.

    python -m benchmarks.world_ablation base 400
    python -m benchmarks.world_ablation onebg+noneg 1200 --eval_steps 400
    python -m benchmarks.world_ablation base 400 --lr 1e-3 --seed 1

VARIANT is ``base`` or flags joined by ``+``, each a change to the generator made here, in this
process, before the corpus is written (so the eval set changes with it: with ``obj4`` it has
easier scenes, with ``noneg`` no negated questions):

- ``obj4``: 1-4 objects, uniform; ``onebg``: black background only; ``darkbg``: no white one;
- ``noneg``: existence questions in the positive form only (shapes v3, where a third were
  negated; v4 asks the negated form as its own reserved type);
- ``vqaonly``: no captions in pretraining; ``listing``: the listing caption style only.

The README's table "The built-in world" was measured on shapes v3 (commit d944bd7, where
``base`` had four backgrounds and negated existence questions); since v4 ``onebg`` and
``noneg`` are the default. Timing and accuracy: one idle 2-core CPU, 300 eval
questions (about ±3 points between seeds).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import yaml

from dept_vl.data import shapes

REPO = Path(__file__).resolve().parent.parent
N_IMAGES = 3000


def apply(flags: set[str]) -> None:
    """Change the generator in this process (see the module docstring)."""
    backgrounds = {"onebg": ("black",), "darkbg": ("black", "darkslategray", "midnightblue")}
    for flag, chosen in backgrounds.items():
        if flag in flags:
            shapes.BACKGROUNDS = chosen
            if hasattr(shapes, "PALETTE_BACKGROUNDS"):
                shapes.PALETTE_BACKGROUNDS = {"basic": chosen, "css": chosen}
    if "obj4" in flags:
        shapes.MAX_OBJECTS, shapes.OBJECT_COUNT_WEIGHTS = 4, (1, 1, 1, 1)
    if "noneg" in flags:
        # the generator's own positive asker (since v4 the default; on v3 a third were negated)
        shapes._ASKERS["exists"] = shapes._exists_question
    if "listing" in flags:
        every = shapes.captions
        shapes.captions = lambda scene: every(scene)[:1]


def config(variant: str, steps: int, corpus: Path, out: Path) -> dict:
    """configs/backbone_shapes.yaml on this corpus, evaluated once at the end."""
    cfg = yaml.safe_load((REPO / "configs" / "backbone_shapes.yaml").read_text())
    cfg["corpus"]["dir"] = str(corpus)
    cfg["train_file"] = [{"path": str(corpus / f"train_{task}.jsonl"), "task": task}
                         for task in ("caption", "vqa")]
    if "vqaonly" in variant.split("+"):
        cfg["train_file"] = cfg["train_file"][1:]
    cfg["eval_file"] = {"path": str(corpus / "val_vqa.jsonl"), "task": "vqa"}
    return {**cfg, "output_dir": str(out), "max_steps": steps, "eval_steps": steps,
            "logging_steps": 100}


def main(argv: list[str]) -> None:
    variant, steps, extra = argv[0], int(argv[1]), argv[2:]
    apply(set(variant.split("+")))
    root = Path("runs/world_ablation") / variant
    shapes.write_corpus(root / "corpus", N_IMAGES, 0, 48)
    out = root / f"backbone-{steps}-{'-'.join(a.lstrip('-') for a in extra) or 'default'}"
    (root / "config.yaml").write_text(yaml.safe_dump(config(variant, steps, root / "corpus", out)))
    from dept_vl.train import main as train

    start = time.perf_counter()
    train(["--config", str(root / "config.yaml"), "--output_dir", str(out), *extra])
    best = json.loads((out / "eval_results.json").read_text())["best_eval"]
    by_type = {t: round(a, 1) for t, a in best["vqa_accuracy_by_type"].items()}
    print(f"{variant} {steps} steps {' '.join(extra)}: {best['vqa_accuracy']:.1f} {by_type} "
          f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main(sys.argv[1:])
