"""The synthetic shapes corpus: determinism, splits, formats, and answers true to the image."""

import json
import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from dept_vl.data import shapes
from dept_vl.data.shapes import Scene, SceneObject, Style

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("train", "val", "test", "heldout_train", "heldout_test")


def _scenes(n: int, seed: int = 0, image_size: int = 64) -> list[Scene]:
    rng = random.Random(seed)
    return [shapes.generate_scene(rng, image_size) for _ in range(n)]


FLAT = Style("dark", ((0, 0, 0),), resolution=48)  # filled, aliased, PNG: exact pixels


def _obj(shape: str, color: str, size: str, x: float, y: float, extent: float | None = None,
         angle: float = 0.0) -> SceneObject:
    extent = extent or sum(shapes.EXTENTS[size]) / 2
    return SceneObject(shape, color, size, x, y, extent, angle)


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
    assert any(name.endswith(".jpg") for name in files_a)
    assert files_a["train_vqa.jsonl"] != files_c["train_vqa.jsonl"]
    common_pngs = [n for n in files_a if n.endswith((".png", ".jpg")) and n in files_c]
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
    assert len(seen) == 72
    assert [manifest["splits"][s]["images"] for s in SPLITS] == [48, 6, 6, 6, 6]


def test_tiny_corpus_has_every_split(tmp_path):
    manifest = shapes.write_corpus(tmp_path, 3, seed=0)
    assert [manifest["splits"][s]["images"] for s in SPLITS] == [1, 1, 1, 1, 1]


def test_rows_have_the_design_formats_and_images_exist(corpus):
    for split in SPLITS:
        for row in _rows(corpus / f"{split}_vqa.jsonl"):
            assert list(row) == ["id", "image", "question", "answers", "question_type"]
            assert isinstance(row["answers"], list) and len(row["answers"]) == 1
            assert 1 <= len(row["answers"][0].split()) <= 2
            assert row["question_type"] in shapes.QUESTION_TYPES
            assert row["question"].endswith(" ?") and row["question"] == row["question"].lower()
            assert (corpus / row["image"]).is_file()
        for row in _rows(corpus / f"{split}_caption.jsonl"):
            assert list(row) == ["id", "image", "captions"]
            assert len(row["captions"]) == 3 and all(isinstance(c, str) for c in row["captions"])
            with Image.open(corpus / row["image"]) as image:
                assert image.size[0] == image.size[1] and image.mode == "RGB"
                assert image.size[0] in {round(64 * f) for f in shapes.RESOLUTION_SCALES}


def test_every_question_type_is_present(corpus):
    manifest = json.loads((corpus / "manifest.json").read_text())
    assert manifest["question_types"] == list(shapes.TYPE_SETS["default"])
    types = {row["question_type"] for row in _rows(corpus / "train_vqa.jsonl")}
    assert types == set(shapes.PRETRAIN_TYPES + shapes.RESERVED_TYPES)
    assert not types & set(shapes.EXTRA_TYPES)  # behind types="all"


def _reach(obj: SceneObject) -> float:
    return (0.5 if obj.shape == "circle" else 0.71) * obj.extent


def test_scenes_have_unique_pairs_apart_inside_and_off_the_third_lines():
    counts = set()
    for scene in _scenes(600):
        counts.add(len(scene.objects))
        pairs = [(o.color, o.shape) for o in scene.objects]
        assert len(set(pairs)) == len(pairs)
        for i, obj in enumerate(scene.objects):
            assert _reach(obj) <= obj.x <= 1 - _reach(obj) and _reach(obj) <= obj.y <= 1 - _reach(obj)
            for v in (obj.x * 3, obj.y * 3):  # a position name that is never a coin flip
                assert min(abs(v - 1), abs(v - 2)) >= shapes.THIRD_MARGIN
            for other in scene.objects[i + 1:]:
                assert math.dist((obj.x, obj.y), (other.x, other.y)) > _reach(obj) + _reach(other)
            low, high = shapes.EXTENTS[obj.size]
            if len(scene.objects) == 1 and obj.size == "large":
                low, high = shapes.LONE_LARGE
            assert low <= obj.extent <= high
            assert all(abs(c - n) <= shapes.COLOR_JITTER
                       for c, n in zip(obj.rgb, shapes.CSS_COLORS[obj.color]))
    assert counts == {1, 2, 3, 4, 5}


def test_styles_vary_and_the_held_out_style_is_never_drawn_in_the_ordinary_ones():
    rng = random.Random(3)
    ordinary = [shapes.draw_style(rng, 64) for _ in range(2000)]
    assert {s.background for s in ordinary} == set(shapes.BACKGROUND_KINDS)
    assert {s.outline for s in ordinary} == {True, False}
    assert {s.antialias for s in ordinary} == {True, False}
    assert {s.resolution for s in ordinary} == {round(64 * f) for f in shapes.RESOLUTION_SCALES}
    assert len({s.jpeg_quality for s in ordinary}) >= 3
    assert not any(s.heldout for s in ordinary)
    assert {s.background for s in ordinary if s.outline} == set(shapes.BACKGROUND_KINDS) - {"gradient"}
    held = [shapes.draw_style(rng, 64, heldout=True) for _ in range(200)]
    assert all(s.heldout and s.outline and s.background == "gradient" for s in held)
    assert {s.antialias for s in held} == {True, False}


def test_render_colours_object_centres_and_leaves_background():
    scene = Scene((_obj("circle", "red", "large", 0.15 + 0.02, 0.17),
                   _obj("square", "blue", "small", 0.83, 0.5, angle=30),
                   _obj("triangle", "yellow", "large", 0.5, 0.8)), FLAT)
    image = shapes.render(scene)
    assert image.size == (48, 48)
    for obj in scene.objects:
        centre = (int(obj.x * 48), int(obj.y * 48))
        assert image.getpixel(centre) == shapes.CSS_COLORS[obj.color], obj
    assert image.getpixel((2, 46)) == (0, 0, 0)  # bottom left corner: empty
    outlined = shapes.render(Scene(scene.objects, Style("dark", ((0, 0, 0),), outline=True,
                                                        resolution=48)))
    assert outlined.getpixel((int(0.17 * 48), int(0.17 * 48))) == (0, 0, 0)  # hollow


def test_every_background_and_resolution_renders_deterministically():
    rng = random.Random(5)
    for kind in shapes.BACKGROUND_KINDS:
        while (style := shapes.draw_style(rng, 64)).background != kind:
            pass
        scene = Scene((_obj("circle", shapes.visible_colors(style)[0], "large", 0.5, 0.5),), style)
        first = shapes.render(scene, rng=random.Random(1))
        assert first.size == (style.resolution, style.resolution)
        assert first.tobytes() == shapes.render(scene, rng=random.Random(1)).tobytes()
        assert shapes.render(scene, 40).size == (40, 40)
        assert len(first.getcolors(1 << 16)) >= 2


def test_every_shape_draws_a_different_bitmap():
    def mask(shape: str) -> frozenset:
        image = shapes.render(Scene((_obj(shape, "red", "large", 0.5, 0.5),), FLAT))
        return frozenset(xy for xy in ((x, y) for x in range(48) for y in range(48))
                         if image.getpixel(xy) == shapes.CSS_COLORS["red"])

    masks = {shape: mask(shape) for shape in shapes.SHAPES}
    assert len(set(masks.values())) == len(shapes.SHAPES)
    assert (24, 24) not in masks["ring"] and (24, 24) in masks["circle"]


def test_palettes_are_css_named_distinct_and_visible():
    css = shapes.palette("css")
    assert len(css) >= 30 and len(shapes.SHAPES) >= 8
    assert set(shapes.palette("basic")) == set(shapes.BASIC_COLORS) < set(css)
    for name, rgb in css.items():
        assert shapes.CSS_COLORS[name] == rgb
    names = list(css)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            assert math.dist(css[first], css[second]) >= 70, (first, second)
    rng = random.Random(0)
    for name in shapes.PALETTES:
        for scene in (shapes.generate_scene(rng, 64, name) for _ in range(200)):
            assert all(o.color in shapes.visible_colors(scene.style, name)
                       for o in scene.objects)
    with pytest.raises(ValueError, match="palette"):
        shapes.palette("html")


def test_css_corpus_uses_its_palette_and_is_its_own_corpus(tmp_path):
    shapes.write_corpus(tmp_path, 40, seed=1, palette="css", shapes="all")
    assert shapes.corpus_matches(tmp_path, 40, 1, palette="css", shapes="all")
    assert not shapes.corpus_matches(tmp_path, 40, 1, palette="css")
    assert not shapes.corpus_matches(tmp_path, 40, 1)
    colors = {row["answers"][0] for row in _rows(tmp_path / "train_vqa.jsonl")
              if row["question_type"] == "color"}
    assert colors - set(shapes.BASIC_COLORS)


def test_large_objects_cover_more_pixels_than_small():
    def covered(size: str) -> int:
        image = shapes.render(Scene((_obj("square", "green", size, 0.5, 0.5),), FLAT))
        return sum(n for n, colour in image.getcolors() if colour != (0, 0, 0))

    assert covered("large") > 2 * covered("small")


def test_captions_of_known_scene():
    scene = Scene((_obj("square", "blue", "small", 0.85, 0.15),
                   _obj("circle", "red", "large", 0.2, 0.2),
                   _obj("triangle", "orange", "large", 0.2, 0.8)), FLAT)
    assert shapes.captions(scene) == [
        ("three objects : large red circle top left , small blue square top right , "
         "large orange triangle bottom left"),
        "a large red circle at the top left and two more objects",
        ("a picture of a large red circle , a small blue square and a large orange "
         "triangle")]
    assert shapes.caption(scene) == shapes.captions(scene)[0]


def test_captions_name_every_object_and_position_but_no_relation_or_style():
    words_seen: set[str] = set()
    for scene in _scenes(300):
        listing, sentence, inventory = shapes.captions(scene)
        words_seen.update(f"{listing} {sentence} {inventory}".split())
        assert listing.split()[0] == shapes.NUMBER_WORDS[len(scene.objects)]
        assert shapes.object_count(listing) == len(scene.objects)
        for obj in scene.objects:
            assert f"{obj.size} {obj.color} {obj.shape} {obj.position}" in listing
            assert f"{obj.size} {obj.color} {obj.shape}" in inventory
    # relations and counts of a kind are question types; how a picture is drawn is never named
    assert not {"above", "below", "outlined", "gradient", "background"} & words_seen
    assert {"top", "bottom", "left", "right", "center", "middle"} <= words_seen


def test_object_count_refuses_a_caption_that_is_not_a_listing():
    with pytest.raises(ValueError, match="not a listing caption"):
        shapes.object_count("a large red circle at the top left on a black background")


def _find(scene: Scene, color: str | None = None, shape: str | None = None,
          size: str | None = None) -> list[SceneObject]:
    return [o for o in scene.objects if (color is None or o.color == color)
            and (shape is None or o.shape == shape) and (size is None or o.size == size)]


def _one(scene: Scene, name: str) -> SceneObject:
    """The object a 'colour shape' name refers to (exactly one)."""
    color, shape = name.split()
    (obj,) = _find(scene, color, shape)
    return obj


def _cell(obj: SceneObject) -> tuple[int, int]:
    """(row, col): the third of the picture the centre lies in."""
    return min(2, int(obj.y * 3)), min(2, int(obj.x * 3))


def _yes(holds: bool) -> str:
    return "yes" if holds else "no"


def _plural_to_shape(word: str) -> str:
    return word[:-2] if word.endswith("sses") else word[:-1]


def _answer_attribute(scene: Scene, question: str, qtype: str) -> str:
    if qtype == "color":
        ref = re.fullmatch(r"(?:what color is|what is the color of|which color does) the "
                           r"(.+?)(?: have)? \?", question).group(1).split()
        (obj,) = _find(scene, shape=ref[-1], size=ref[0] if len(ref) == 2 else None)
        return obj.color
    if qtype == "shape":
        color = re.fullmatch(r"(?:what shape is the|what is the|which shape is) (\w+)"
                             r"(?: object| shape)? \?", question).group(1)
        (obj,) = _find(scene, color=color)
        return obj.shape
    name = re.fullmatch(r"(?:what size is|how big is|is|where is|in which part of the image "
                        r"is|what is the position of) the (\w+ \w+)(?: small or large)? \?",
                        question).group(1)
    obj = _one(scene, name)
    if qtype == "size":
        return obj.size
    row, col = _cell(obj)
    return [["top left", "top middle", "top right"], ["middle left", "center", "middle right"],
            ["bottom left", "bottom middle", "bottom right"]][row][col]


def _answer_count(scene: Scene, question: str) -> str:
    what = re.fullmatch(r"(?:how many|what is the number of) (.+?)(?: are there| can you see)? \?",
                        question).group(1).split()
    if what == ["objects"]:
        return shapes.NUMBER_WORDS[len(scene.objects)]
    if len(what) == 1:
        return shapes.NUMBER_WORDS[len(_find(scene, shape=_plural_to_shape(what[0])))]
    word = what[0]
    found = _find(scene, size=word) if word in ("small", "large") else _find(scene, color=word)
    return shapes.NUMBER_WORDS[len(found)]


def _answer_exists(scene: Scene, question: str) -> str:
    """Also checks the English: "is there no red circle", "does the image not contain an
    orange square" (the article agrees with the colour, and "no" takes none)."""
    match = re.fullmatch(
        r"(?:is there|does the image|can you see|is it true that there is)"
        r"(?P<no> no| not contain| contain)?(?: (?P<article>an?))? (\w+) (\w+) \?", question)
    no, article, color, shape = match.groups()
    assert (article is None) == (no == " no"), question
    assert article is None or article == ("an" if color[0] in "aeiou" else "a"), question
    return _yes(bool(_find(scene, color, shape)) != (no in (" no", " not contain")))


def _answer_relation(scene: Scene, question: str) -> str:
    a, negated, rel, b = re.fullmatch(
        r"is the (\w+ \w+) (not )?(?:to the )?(left of|right of|above|below) the (\w+ \w+) \?",
        question).groups()
    (a_row, a_col), (b_row, b_col) = _cell(_one(scene, a)), _cell(_one(scene, b))
    holds = {"left of": a_col < b_col, "right of": a_col > b_col,
             "above": a_row < b_row, "below": a_row > b_row}[rel]
    axis_differs = a_col != b_col if rel in ("left of", "right of") else a_row != b_row
    assert axis_differs, f"ill-defined relation question {question!r}"
    return _yes(holds != bool(negated))


def _answer_compare(scene: Scene, question: str) -> str:
    more = re.fullmatch(r"are there (more|fewer) (\w+) than (\w+) \?", question)
    if more:
        word, first, second = more.groups()
        n, m = (len(_find(scene, shape=_plural_to_shape(w))) for w in (first, second))
        return _yes(n > m if word == "more" else n < m)
    same = re.fullmatch(r"are the (\w+ \w+) and the (\w+ \w+) the same size \?", question)
    if same:
        a, b = (_one(scene, name) for name in same.groups())
        return _yes(a.size == b.size)
    a, word, b = re.fullmatch(r"is the (\w+ \w+) (larger|smaller) than the (\w+ \w+) \?",
                              question).groups()
    a, b = _one(scene, a), _one(scene, b)
    bigger = (a.size, b.size) == ("large", "small")
    smaller = (a.size, b.size) == ("small", "large")
    return _yes(bigger if word == "larger" else smaller)


def _true_answer(scene: Scene, question: str, qtype: str) -> str:
    """Answer ``question`` from the scene independently of the generator's code."""
    if qtype in ("color", "shape", "size", "spatial"):
        return _answer_attribute(scene, question, qtype)
    return {"count": _answer_count, "exists": _answer_exists, "negation": _answer_exists,
            "relation": _answer_relation, "compare": _answer_compare}[qtype](scene, question)


@pytest.mark.parametrize("palette,shape_set", [("basic", "basic"), ("css", "all")])
def test_answers_are_true_for_the_scene_and_yes_no_balanced(palette, shape_set):
    rng, scene_rng = random.Random(11), random.Random(7)
    answers: dict[str, list[str]] = {t: [] for t in shapes.QUESTION_TYPES}
    for scene in (shapes.generate_scene(scene_rng, 64, palette, shape_set) for _ in range(1500)):
        rows = shapes.questions(scene, rng, shapes.TYPE_SETS["all"])
        assert len({qtype for _, _, qtype in rows}) == len(rows)
        for question, answer, qtype in rows:
            assert answer == _true_answer(scene, question, qtype), (scene, question)
            answers[qtype].append(answer)
            if qtype == "exists":  # pretrained in the positive form only
                answers.setdefault("exists_questions", []).append(question)
        cells = {_cell(o) for o in scene.objects}
        assert ("relation" in {qtype for _, _, qtype in rows}) == (len(cells) >= 2)
    for qtype in ("exists", "negation", "relation", "compare"):
        assert 0.42 < answers[qtype].count("yes") / len(answers[qtype]) < 0.58, qtype
    # zero is never asked: only present groups are counted
    assert set(answers["count"]) == set(shapes.NUMBER_WORDS[1:shapes.MAX_OBJECTS + 1])
    assert set(answers["color"]) == set(shapes.palette(palette))
    assert all(" no " not in q and " not " not in q for q in answers["exists_questions"])
    assert set(answers["shape"]) == set(shapes.SHAPE_SETS[shape_set])
    assert len(set(answers["spatial"])) == 9
    assert 0.4 < answers["size"].count("small") / len(answers["size"]) < 0.6


def test_questions_come_in_several_phrasings_including_negations():
    rng = random.Random(5)
    rows = [row for scene in _scenes(400, seed=2)
            for row in shapes.questions(scene, rng, shapes.TYPE_SETS["all"])]
    content = set(shapes.CSS_COLORS) | set(shapes.SHAPES) | set(shapes.SIZES)
    content |= {_plural for s in shapes.SHAPES for _plural in (s + "s", s + "es")}
    for qtype in shapes.QUESTION_TYPES:
        forms = {" ".join(w for w in q.split() if w not in content) for q, _, t in rows if t == qtype}
        assert len(forms) >= 3, (qtype, forms)
    negated = [q for q, _, t in rows if t in ("negation", "relation") and " not " in f" {q} "
               or q.startswith("is there no")]
    assert len(negated) > 50


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
    assert len(list((out / "images" / "train").glob("*.*"))) == 16

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
    with pytest.raises(ValueError, match="types"):
        shapes.write_corpus(tmp_path, 10, seed=0, types="some")
