"""What the scale rehearsal runs on, made here without any download: a VQAv2-format data set and
a COCO Karpathy caption set drawn from the built-in shapes corpus (COCO folder and file names,
images rendered at the encoder's size), and a T5 plus a timm encoder with random weights at the
shapes of `configs/vqav2_t5base_vit.yaml` (t5-base, ViT-B/16), saved as local files.

Layout under `root`:

    vqav2/v2_OpenEnded_mscoco_{train,val}2014_questions.json
    vqav2/v2_mscoco_{train,val}2014_annotations.json
    coco/{train,val}2014/COCO_{train,val}2014_<image_id:012d>.jpg
    coco/dataset_coco.json                      (Karpathy: train / restval / val / test)
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import save_file
from transformers import T5Config, T5ForConditionalGeneration

from benchmarks.common import T5_SHAPES
from dept_vl.data.formats import load_records
from dept_vl.data.shapes import caption, generate_scene, questions, render
from dept_vl.files import atomic_write_json
from dept_vl.tasks import corpus_texts
from dept_vl.tokenization import build_word_tokenizer

SUBTYPES = ("train2014", "val2014")
ANSWERS_PER_QUESTION = 10  # VQAv2: ten annotators per question
CAPTIONS_PER_IMAGE = 5  # COCO: five captions per image
# VQAv2's three answer types, from the corpus's question types
ANSWER_TYPES = {"exists": "yes/no", "count": "number"}


def vqav2_files(root: Path, subtype: str) -> dict[str, str]:
    """The paths a `format: vqav2` data file entry names, for one split."""
    return {"path": str(root / "vqav2" / f"v2_OpenEnded_mscoco_{subtype}_questions.json"),
            "format": "vqav2",
            "annotations": str(root / "vqav2" / f"v2_mscoco_{subtype}_annotations.json"),
            "image_dir": str(root / "coco" / subtype)}


def _ten_answers(answer: str, pool: list[str], rng: random.Random) -> list[dict[str, Any]]:
    """Mostly the corpus's answer, sometimes another one, as disagreeing annotators give."""
    answers = [answer if rng.random() < 0.8 else rng.choice(pool) for _ in range(10)]
    return [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
            for k, a in enumerate(answers)]


def _image_rows(subtype: str, image_id: int, scene: Any, rng: random.Random, pool: list[str],
                next_qid: int) -> tuple[list[dict], list[dict]]:
    """One image's VQAv2 question and annotation entries."""
    qs, anns = [], []
    for k, (question, answer, qtype) in enumerate(questions(scene, rng)):
        qid = next_qid + k
        qs.append({"image_id": image_id, "question": question, "question_id": qid})
        anns.append({"question_id": qid, "image_id": image_id, "question_type": qtype,
                     "answer_type": ANSWER_TYPES.get(qtype, "other"),
                     "multiple_choice_answer": answer,
                     "answers": _ten_answers(answer, pool, rng)})
    return qs, anns


def _karpathy_entry(subtype: str, image_id: int, text: str, split: str) -> dict[str, Any]:
    sentences = [{"raw": text, "tokens": text.split(), "imgid": image_id,
                  "sentid": image_id * CAPTIONS_PER_IMAGE + k} for k in range(CAPTIONS_PER_IMAGE)]
    return {"filepath": subtype, "filename": f"COCO_{subtype}_{image_id:012d}.jpg",
            "imgid": image_id, "cocoid": image_id, "split": split, "sentences": sentences,
            "sentids": [s["sentid"] for s in sentences]}


def _karpathy_split(subtype: str, index: int) -> str:
    """Karpathy's split of COCO: val2014 images become val and test, train2014 train and
    (every tenth) restval."""
    if subtype == "val2014":
        return "val" if index % 2 == 0 else "test"
    return "restval" if index % 10 == 9 else "train"


def _write_subtype(root: Path, subtype: str, ids: range, image_size: int, rng: random.Random,
                   karpathy: list[dict]) -> int:
    """Images, questions and annotations of one COCO split; returns its question count."""
    folder = root / "coco" / subtype
    folder.mkdir(parents=True, exist_ok=True)
    pool = ["yes", "no", "one", "two", "three", "red", "blue", "circle", "square"]
    all_q, all_a = [], []
    for index, image_id in enumerate(ids):
        scene = generate_scene(rng, image_size)
        render(scene, image_size).save(folder / f"COCO_{subtype}_{image_id:012d}.jpg", quality=95)
        qs, anns = _image_rows(subtype, image_id, scene, rng, pool, image_id * 10)
        all_q += qs
        all_a += anns
        karpathy.append(_karpathy_entry(subtype, image_id, caption(scene),
                                        _karpathy_split(subtype, index)))
    common = {"info": {"description": "dept_vl scale rehearsal (shapes corpus)"},
              "license": {"name": "CC0"}, "data_type": "mscoco", "data_subtype": subtype}
    files = vqav2_files(root, subtype)
    Path(files["path"]).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(files["path"], {**common, "task_type": "Open-Ended", "questions": all_q})
    atomic_write_json(files["annotations"], {**common, "annotations": all_a})
    return len(all_q)


def write_dataset(root: Path, images: int, image_size: int, seed: int = 0) -> dict[str, Any]:
    """VQAv2 + Karpathy files for `images` images (an eighth of them val2014); loaded back with
    the toolkit's own loaders, so a format slip fails here rather than in the CLI."""
    rng = random.Random(seed)
    val = max(2, images // 8)
    karpathy: list[dict] = []
    counts = {"train2014": _write_subtype(root, "train2014", range(1, images - val + 1),
                                          image_size, rng, karpathy),
              "val2014": _write_subtype(root, "val2014", range(images - val + 1, images + 1),
                                        image_size, rng, karpathy)}
    atomic_write_json(root / "coco" / "dataset_coco.json", {"images": karpathy, "dataset": "coco"})
    loaded = {sub: load_records(**{**vqav2_files(root, sub), "task": "vqa"}) for sub in SUBTYPES}
    captions = {split: load_records(root / "coco" / "dataset_coco.json", "caption", "karpathy",
                                    image_dir=str(root / "coco"), split=split)
                for split in ("train", "val", "test")}
    if any(len(loaded[s]) != counts[s] for s in SUBTYPES) or \
            sum(map(len, captions.values())) != images:
        raise RuntimeError(f"{root}: the loaders read back other counts than were written")
    return {"images": images, "train_images": images - val, "val_images": val,
            "questions": counts, "karpathy": {k: len(v) for k, v in captions.items()},
            "records": loaded}


def write_t5(folder: Path, shape: str, records: list[Any]) -> int:
    """A T5 of `shape` (T5 v1.0: relu, tied embeddings) with random weights and a word-level
    tokenizer learnt from the records, saved as a local model directory; returns its size."""
    tokenizer = build_word_tokenizer(corpus_texts(records))
    config = T5Config(vocab_size=len(tokenizer), num_decoder_layers=T5_SHAPES[shape]["num_layers"],
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, **T5_SHAPES[shape])
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return sum(f.stat().st_size for f in folder.iterdir())


def write_encoder(file: Path, model_name: str) -> int:
    """A timm encoder's random weights (without its classifier, as dept_vl builds it) as the
    safetensors `weights_file` the config points to; returns its size."""
    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, file)
    return file.stat().st_size
