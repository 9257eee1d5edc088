"""The synthetic shapes corpus: determinism, splits, formats, and answers true to the image."""

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from dept_vl.data import shapes
from dept_vl.data.shapes import Scene, SceneObject

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("train", "val", "test")


def _scenes(n: int, seed: int = 0, image_size: int = 64) -> list[Scene]:
    rng = random.Random(seed)
    return [shapes.generate_scene(rng, image_size) for _ in range(n)]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    shapes.write_corpus(out, n_images=60, seed=3)
    return out


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    shapes.write_corpus(a, 25, seed=1)
    shapes.write_corpus(b, 25, seed=1)
    shapes.write_corpus(c, 25, seed=2)
    files_a, files_c = _files(a), _files(c)
    assert files_a == _files(b)
    assert any(name.endswith(".png") for name in files_a)
    assert files_a["train_vqa.jsonl"] != files_c["train_vqa.jsonl"]
    common_pngs = [n for n in files_a if n.endswith(".png") and n in files_c]
    assert any(files_a[n] != files_c[n] for n in common_pngs)


def test_splits_are_disjoint_and_sized(corpus):
    manifest = json.loads((corpus / "manifest.json").read_text())
    seen: dict[str, str] = {}
    for split in SPLITS:
        ids = [row["id"] for row in _rows(corpus / f"{split}_caption.jsonl")]
        assert len(ids) == manifest["splits"][split]["images"]
        assert len(_rows(corpus / f"{split}_vqa.jsonl")) == manifest["splits"][split]["questions"]
        for image_id in ids:
            assert image_id not in seen, f"{image_id} in {seen.get(image_id)} and {split}"
            seen[image_id] = split
        vqa_images = {row["image"] for row in _rows(corpus / f"{split}_vqa.jsonl")}
        assert all(image.startswith(f"images/{split}/") for image in vqa_images)
    assert len(seen) == 60
    assert [manifest["splits"][s]["images"] for s in SPLITS] == [48, 6, 6]


def test_tiny_corpus_has_every_split(tmp_path):
    manifest = shapes.write_corpus(tmp_path, 3, seed=0)
    assert [manifest["splits"][s]["images"] for s in SPLITS] == [1, 1, 1]


def test_rows_have_the_design_formats_and_images_exist(corpus):
    for split in SPLITS:
        for row in _rows(corpus / f"{split}_vqa.jsonl"):
            assert list(row) == ["id", "image", "question", "answers", "question_type"]
            assert isinstance(row["answers"], list) and len(row["answers"]) == 1
            assert len(row["answers"][0].split()) == 1
            assert row["question_type"] in shapes.QUESTION_TYPES
            assert row["question"].endswith(" ?") and row["question"] == row["question"].lower()
            assert (corpus / row["image"]).is_file()
        for row in _rows(corpus / f"{split}_caption.jsonl"):
            assert list(row) == ["id", "image", "captions"]
            assert len(row["captions"]) == 1 and isinstance(row["captions"][0], str)
            with Image.open(corpus / row["image"]) as image:
                assert image.size == (64, 64) and image.mode == "RGB"


def test_every_question_type_is_present(corpus):
    manifest = json.loads((corpus / "manifest.json").read_text())
    assert manifest["question_types"] == list(shapes.QUESTION_TYPES)
    types = {row["question_type"] for row in _rows(corpus / "train_vqa.jsonl")}
    assert types == set(shapes.QUESTION_TYPES)


def test_scenes_have_unique_pairs_and_cells():
    for scene in _scenes(300):
        assert 1 <= len(scene.objects) <= 4
        pairs = [(o.color, o.shape) for o in scene.objects]
        cells = [(o.row, o.col) for o in scene.objects]
        assert len(set(pairs)) == len(pairs)
        assert len(set(cells)) == len(cells)


@pytest.mark.parametrize("image_size", [64, 96])
def test_objects_stay_inside_their_cells(image_size):
    for scene in _scenes(200, image_size=image_size):
        for obj in scene.objects:
            left, top, right, bottom = shapes.object_box(obj, image_size)
            cell = image_size / 3
            assert obj.col * cell <= left and right < (obj.col + 1) * cell
            assert obj.row * cell <= top and bottom < (obj.row + 1) * cell


def test_render_colours_object_centres_and_leaves_background():
    scene = Scene((SceneObject("circle", "red", "large", 0, 0),
                   SceneObject("triangle", "blue", "small", 1, 2, dx=2, dy=-2),
                   SceneObject("square", "yellow", "small", 2, 1)))
    image = shapes.render(scene, 64)
    for obj in scene.objects:
        left, top, right, bottom = shapes.object_box(obj, 64)
        centre = ((left + right) // 2, (top + bottom) // 2)
        assert image.getpixel(centre) == shapes.COLORS[obj.color], obj
    assert image.getpixel((53, 10)) == shapes.BACKGROUND  # empty cell (0, 2)
    assert image.getpixel((10, 53)) == shapes.BACKGROUND  # empty cell (2, 0)


def test_large_objects_cover_more_pixels_than_small():
    def covered(size: str) -> int:
        image = shapes.render(Scene((SceneObject("square", "green", size, 1, 1),)), 64)
        return sum(n for n, colour in image.getcolors() if colour != shapes.BACKGROUND)

    assert covered("large") > 2 * covered("small")


def test_caption_of_known_scene():
    scene = Scene((SceneObject("square", "blue", "small", 0, 2),
                   SceneObject("circle", "red", "large", 0, 0),
                   SceneObject("triangle", "green", "large", 2, 0)))
    assert shapes.caption(scene) == ("three objects : large red circle above large green "
                                     "triangle left of small blue square")


def test_captions_are_short_complete_and_use_every_relation():
    words_seen: set[str] = set()
    for scene in _scenes(300):
        text = shapes.caption(scene)
        words = text.split()
        words_seen.update(words)
        assert len(words) <= 24 and text == text.lower()
        assert words[0] == shapes.NUMBER_WORDS[len(scene.objects)]
        for obj in scene.objects:
            assert f"{obj.size} {obj.color} {obj.shape}" in text
    assert {"left", "right", "above", "below"} <= words_seen


def _find(scene: Scene, color: str | None = None, shape: str | None = None,
          size: str | None = None) -> list[SceneObject]:
    return [o for o in scene.objects if (color is None or o.color == color)
            and (shape is None or o.shape == shape) and (size is None or o.size == size)]


def _true_answer(scene: Scene, question: str, qtype: str) -> str:
    """Answer ``question`` from the scene independently of the generator's code."""
    if qtype == "color":
        *size, shape = re.fullmatch(r"what color is the (.+) \?", question).group(1).split()
        (obj,) = _find(scene, shape=shape, size=size[0] if size else None)
        return obj.color
    if qtype == "shape":
        color = re.fullmatch(r"what shape is the (\w+) object \?", question).group(1)
        (obj,) = _find(scene, color=color)
        return obj.shape
    if qtype == "exists":
        color, shape = re.fullmatch(r"is there a (\w+) (\w+) \?", question).groups()
        return "yes" if _find(scene, color, shape) else "no"
    if qtype == "count":
        what = re.fullmatch(r"how many (\w+) are there \?", question).group(1)
        shape = None if what == "objects" else what[:-1]
        return shapes.NUMBER_WORDS[len(_find(scene, shape=shape))]
    if qtype == "size":
        color, shape = re.fullmatch(r"what size is the (\w+) (\w+) \?", question).groups()
        (obj,) = _find(scene, color, shape)
        return obj.size
    c1, s1, rel, c2, s2 = re.fullmatch(
        r"is the (\w+) (\w+) (left of|right of|above|below) the (\w+) (\w+) \?", question).groups()
    (a,), (b,) = _find(scene, c1, s1), _find(scene, c2, s2)
    holds = {"left of": a.col < b.col, "right of": a.col > b.col,
             "above": a.row < b.row, "below": a.row > b.row}[rel]
    axis_differs = a.col != b.col if rel in ("left of", "right of") else a.row != b.row
    assert axis_differs, f"ill-defined spatial question {question!r}"
    return "yes" if holds else "no"


def test_answers_are_true_for_the_scene_and_yes_no_balanced():
    rng = random.Random(11)
    answers: dict[str, list[str]] = {t: [] for t in shapes.QUESTION_TYPES}
    for scene in _scenes(600, seed=7):
        rows = shapes.questions(scene, rng)
        assert len({qtype for _, _, qtype in rows}) == len(rows)
        for question, answer, qtype in rows:
            assert answer == _true_answer(scene, question, qtype), (scene, question)
            answers[qtype].append(answer)
        if len(scene.objects) >= 2:
            assert "spatial" in {qtype for _, _, qtype in rows}
        else:
            assert "spatial" not in {qtype for _, _, qtype in rows}
    for qtype in ("exists", "spatial"):
        assert 0.42 < answers[qtype].count("yes") / len(answers[qtype]) < 0.58
    # zero is never asked: only present shapes are counted, so every answer appears in captions
    assert set(answers["count"]) == set(shapes.NUMBER_WORDS) - {"zero"}
    assert set(answers["color"]) == set(shapes.COLORS)
    assert set(answers["shape"]) == set(shapes.SHAPES)
    assert 0.4 < answers["size"].count("small") / len(answers["size"]) < 0.6


def test_cli_writes_manifest_and_corpus_matches(tmp_path):
    """Run under another hash seed: output must not depend on set or dict order."""
    out = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, "-m", "dept_vl.data.shapes", "--out", str(out), "--n-images", "20",
         "--seed", "4", "--image-size", "48"],
        cwd=REPO, capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert len(result.stdout.strip().splitlines()) == 1 and "train 16 images" in result.stdout
    shapes.write_corpus(tmp_path / "in_process", 20, seed=4, image_size=48)
    assert _files(out) == _files(tmp_path / "in_process")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["generator"] == "dept_vl.shapes" and manifest["version"] == shapes.VERSION
    assert (manifest["seed"], manifest["n_images"], manifest["image_size"]) == (4, 20, 48)
    for split in SPLITS:
        assert (out / f"{split}_vqa.jsonl").is_file() and (out / f"{split}_caption.jsonl").is_file()
    assert len(list((out / "images" / "train").glob("*.png"))) == 16

    assert shapes.corpus_matches(out, 20, 4, 48)
    assert not shapes.corpus_matches(out, 20, 5, 48)
    assert not shapes.corpus_matches(out, 21, 4, 48)
    assert not shapes.corpus_matches(out, 20, 4, 64)
    assert not shapes.corpus_matches(tmp_path / "missing", 20, 4, 48)
    (out / "manifest.json").unlink()
    assert not shapes.corpus_matches(out, 20, 4, 48)


def test_write_corpus_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_images"):
        shapes.write_corpus(tmp_path, 0, seed=0)
