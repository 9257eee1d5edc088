"""Built-in synthetic vision-language corpus: coloured shapes on a 3x3 grid.

Small enough to pretrain a tiny VL-T5 on a laptop CPU in minutes, yet with question types
(count, size, spatial relations) that a backbone pretrained on captions and colour / shape /
existence questions has never been asked: the DePT adaptation and few-shot transfer targets.

Everything is drawn from one ``random.Random(seed)`` and written in a fixed order, so the
same arguments give byte-identical files. Only stdlib and PIL: ``data/`` knows no models.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

GENERATOR = "dept_vl.shapes"
VERSION = 2  # 2: size questions
SPLITS = ("train", "val", "test")
QUESTION_TYPES: tuple[str, ...] = ("color", "shape", "exists", "count", "spatial", "size")

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 190, 50),
    "blue": (40, 80, 235),
    "yellow": (245, 225, 30),
    "purple": (150, 50, 210),
    "orange": (250, 135, 10),
    "white": (245, 245, 245),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "large")
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four")  # zero is never an answer
BACKGROUND = (24, 24, 24)
GRID = 3
MAX_OBJECTS = 4
# Object extent as a fraction of a grid cell: large nearly fills it, small is about half.
EXTENT = {"small": 0.5, "large": 0.8}


@dataclass(frozen=True)
class SceneObject:
    """One shape in one grid cell; ``dx``/``dy`` is its pixel jitter inside the cell."""

    shape: str
    color: str
    size: str
    row: int
    col: int
    dx: int = 0
    dy: int = 0

    @property
    def name(self) -> str:
        """'red circle': unique within a scene, so it always names one object."""
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """Immutable, so a scene can be rendered, captioned and questioned independently."""

    objects: tuple[SceneObject, ...]


def _extent(size: str, image_size: int) -> int:
    return max(2, round(image_size / GRID * EXTENT[size]))


def _max_jitter(size: str, image_size: int) -> int:
    """Largest shift that keeps a 1 px margin to the cell border, so objects never touch."""
    return max(0, (image_size // GRID - _extent(size, image_size) - 2) // 2)


def object_box(obj: SceneObject, image_size: int) -> tuple[int, int, int, int]:
    """Inclusive pixel box (left, top, right, bottom) of ``obj`` on an ``image_size`` canvas.

    Jitter is clamped to what fits at this size, so a scene renders validly at any size.
    """
    extent = _extent(obj.size, image_size)
    limit = _max_jitter(obj.size, image_size)

    def start(cell: int, jitter: int) -> int:
        lo, hi = round(cell * image_size / GRID), round((cell + 1) * image_size / GRID)
        return lo + (hi - lo - extent) // 2 + max(-limit, min(limit, jitter))

    left, top = start(obj.col, obj.dx), start(obj.row, obj.dy)
    return left, top, left + extent - 1, top + extent - 1


def generate_scene(rng: random.Random, image_size: int = 64) -> Scene:
    """1-4 objects in distinct cells with distinct (colour, shape) pairs."""
    n = rng.randint(1, MAX_OBJECTS)
    kinds = rng.sample([(c, s) for c in COLORS for s in SHAPES], n)
    cells = rng.sample(range(GRID * GRID), n)
    objects = []
    for (color, shape), cell in zip(kinds, cells):
        size = rng.choice(SIZES)
        limit = _max_jitter(size, image_size)
        objects.append(SceneObject(shape, color, size, cell // GRID, cell % GRID,
                                   rng.randint(-limit, limit), rng.randint(-limit, limit)))
    return Scene(tuple(objects))


def render(scene: Scene, image_size: int = 64) -> Image.Image:
    """Flat colours without anti-aliasing, so every object pixel is exactly its colour."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        left, top, right, bottom = box = object_box(obj, image_size)
        fill = COLORS[obj.color]
        if obj.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif obj.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([((left + right) / 2, top), (left, bottom), (right, bottom)], fill=fill)
    return image


def _relation(a: SceneObject, b: SceneObject) -> str:
    """Where ``a`` is relative to ``b``, along the axis on which they are further apart."""
    if abs(a.col - b.col) >= abs(a.row - b.row):
        return "left of" if a.col < b.col else "right of"
    return "above" if a.row < b.row else "below"


def caption(scene: Scene) -> str:
    """'three objects : large red circle left of small blue square above ...'.

    Objects are listed in the fixed colour-then-shape order, not left to right: under any
    positional order one relation word (e.g. 'right of') could never occur between
    neighbours, and the captions are where the backbone learns the relation vocabulary.
    """
    ordered = sorted(scene.objects,
                     key=lambda o: (list(COLORS).index(o.color), SHAPES.index(o.shape)))
    n = len(ordered)
    words = [NUMBER_WORDS[n], "object" if n == 1 else "objects", ":"]
    for i, obj in enumerate(ordered):
        if i:
            words.append(_relation(ordered[i - 1], obj))
        words += [obj.size, obj.color, obj.shape]
    return " ".join(words)


def _unique(values: list) -> set:
    return {v for v in values if values.count(v) == 1}


def _color_question(scene: Scene, rng: random.Random) -> tuple[str, str] | None:
    """Ask by shape, or by size and shape, whichever names exactly one object."""
    shapes = _unique([o.shape for o in scene.objects])
    sized = _unique([(o.size, o.shape) for o in scene.objects])
    options = []
    for obj in scene.objects:
        if obj.shape in shapes:
            options.append((f"what color is the {obj.shape} ?", obj.color))
        elif (obj.size, obj.shape) in sized:
            options.append((f"what color is the {obj.size} {obj.shape} ?", obj.color))
    return rng.choice(options) if options else None


def _shape_question(scene: Scene, rng: random.Random) -> tuple[str, str] | None:
    colors = _unique([o.color for o in scene.objects])
    options = [o for o in scene.objects if o.color in colors]
    if not options:
        return None
    obj = rng.choice(options)
    return f"what shape is the {obj.color} object ?", obj.shape


def _exists_question(scene: Scene, rng: random.Random) -> tuple[str, str]:
    """Half yes, half no; absent pairs share a colour or shape with a present object,
    so answering needs colour-shape binding rather than spotting a colour."""
    present = {(o.color, o.shape) for o in scene.objects}
    if rng.random() < 0.5:
        obj = rng.choice(scene.objects)
        return f"is there a {obj.name} ?", "yes"
    near_misses = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present
                   and any(c == pc or s == ps for pc, ps in present)]
    color, shape = rng.choice(near_misses)
    return f"is there a {color} {shape} ?", "no"


def _count_question(scene: Scene, rng: random.Random) -> tuple[str, str]:
    """Only shapes that are present: every count answer is then a number word the captions use
    ("two objects : ..."), so a frozen decoder has seen each answer token."""
    if rng.random() < 0.5:
        return "how many objects are there ?", NUMBER_WORDS[len(scene.objects)]
    shape = rng.choice(sorted({o.shape for o in scene.objects}))
    count = sum(o.shape == shape for o in scene.objects)
    return f"how many {shape}s are there ?", NUMBER_WORDS[count]


_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def _spatial_question(scene: Scene, rng: random.Random) -> tuple[str, str] | None:
    """Only along an axis where the two objects differ, so the answer is well defined."""
    if len(scene.objects) < 2:
        return None
    a, b = rng.sample(scene.objects, 2)
    axes = [axis for axis, differs in (("h", a.col != b.col), ("v", a.row != b.row)) if differs]
    if rng.choice(axes) == "h":
        truth = "left of" if a.col < b.col else "right of"
    else:
        truth = "above" if a.row < b.row else "below"
    answer = rng.choice(("yes", "no"))
    relation = truth if answer == "yes" else _OPPOSITE[truth]
    return f"is the {a.name} {relation} the {b.name} ?", answer


def _size_question(scene: Scene, rng: random.Random) -> tuple[str, str]:
    """'small' or 'large': words the captions use, asked in a form no other type has."""
    obj = rng.choice(scene.objects)
    return f"what size is the {obj.name} ?", obj.size


_ASKERS = {
    "color": _color_question,
    "shape": _shape_question,
    "exists": _exists_question,
    "count": _count_question,
    "spatial": _spatial_question,
    "size": _size_question,
}


def questions(scene: Scene, rng: random.Random) -> list[tuple[str, str, str]]:
    """At most one (question, answer, type) per type, in ``QUESTION_TYPES`` order."""
    out = []
    for qtype in QUESTION_TYPES:
        qa = _ASKERS[qtype](scene, rng)
        if qa is not None:
            out.append((*qa, qtype))
    return out


def _split_sizes(n_images: int) -> dict[str, int]:
    """80/10/10, with at least one val and one test scene once there are three."""
    held_out = max(1, n_images // 10) if n_images >= 3 else 0
    return {"train": n_images - 2 * held_out, "val": held_out, "test": held_out}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def write_corpus(out_dir: str | Path, n_images: int, seed: int, image_size: int = 64) -> dict:
    """Write images, JSONL files and ``manifest.json``; return the manifest.

    The manifest is removed first and written last, so a half-written corpus never
    looks complete to ``corpus_matches``.
    """
    if n_images < 1 or image_size < 2 * GRID:
        raise ValueError(f"need n_images >= 1 and image_size >= {2 * GRID}, "
                         f"got {n_images} and {image_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    rng = random.Random(seed)
    order = list(range(n_images))
    rng.shuffle(order)
    manifest = {"generator": GENERATOR, "version": VERSION, "seed": seed,
                "n_images": n_images, "image_size": image_size, "splits": {},
                "question_types": list(QUESTION_TYPES)}
    start = 0
    for split, size in _split_sizes(n_images).items():
        ids = sorted(order[start:start + size])
        start += size
        n_questions = _write_split(out, split, ids, rng, image_size)
        manifest["splits"][split] = {"images": len(ids), "questions": n_questions}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def _write_split(out: Path, split: str, ids: list[int], rng: random.Random,
                 image_size: int) -> int:
    """Write one split's PNGs and JSONL files; return its number of questions."""
    image_dir = out / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    vqa, captions = [], []
    for index in ids:
        scene = generate_scene(rng, image_size)
        image_id = f"{index:06d}"
        rel = f"images/{split}/{image_id}.png"
        render(scene, image_size).save(out / rel)
        captions.append({"id": image_id, "image": rel, "captions": [caption(scene)]})
        for k, (question, answer, qtype) in enumerate(questions(scene, rng)):
            vqa.append({"id": f"{image_id}_{k}", "image": rel, "question": question,
                        "answers": [answer], "question_type": qtype})
    _write_jsonl(out / f"{split}_vqa.jsonl", vqa)
    _write_jsonl(out / f"{split}_caption.jsonl", captions)
    return len(vqa)


def corpus_matches(out_dir: str | Path, n_images: int, seed: int, image_size: int = 64) -> bool:
    """True if ``out_dir`` holds a complete corpus written with exactly these arguments."""
    out = Path(out_dir)
    try:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    wanted = {"generator": GENERATOR, "version": VERSION, "seed": seed,
              "n_images": n_images, "image_size": image_size}
    if any(manifest.get(key) != value for key, value in wanted.items()):
        return False
    return all((out / f"{split}_{kind}.jsonl").is_file()
               for split in SPLITS for kind in ("vqa", "caption"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the synthetic shapes VL corpus.")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--n-images", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    manifest = write_corpus(args.out, args.n_images, args.seed, args.image_size)
    splits = " / ".join(f"{name} {s['images']} images, {s['questions']} questions"
                        for name, s in manifest["splits"].items())
    print(f"wrote {args.out}: {splits} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
