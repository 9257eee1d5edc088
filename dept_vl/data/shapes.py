"""Built-in synthetic vision-language corpus: coloured shapes, drawn many ways.

A small world a tiny VL-T5 can learn from scratch, drawn in varied styles so that what its
image encoder learns carries over to shapes drawn by other programs: backgrounds (dark, light,
coloured, gradient, noise, stripes), filled or outlined shapes, sizes from small to most of the
picture, positions anywhere (each object's position is named by the third of the picture its
centre lies in), rotation, anti-aliased or aliased edges, saved resolutions above and below
the model's input size, PNG or JPEG at several qualities, and colours that vary around their
name. Question and caption truths stay exact: they are computed from the scene, not the pixels.

**The held-out style.** One combination of drawing choices never appears in the ordinary
splits: *outlined shapes on a gradient background*. Every other choice varies as usual. It
gets splits of its own (``heldout_train``, ``heldout_test``), so a backbone pretrained on the
ordinary splits can be tested on a way of drawing it never saw.

Question types, one per scene and type:

- pretrained (what a pretrained model of this world knows): colour, shape, size, spatial
  (absolute position), exists ("is there a red circle ?") and negation ("is there no red
  circle ?");
- reserved (need the frozen model to compute something new): count;
- extra, written only with ``types="all"``: relation (pairwise left/right/above/below) and
  compare (more/fewer, larger/smaller, same size). No method learnt them from the default
  backbone's features, so the default world leaves them out.

Everything is drawn from one ``random.Random(seed)`` and written in a fixed order, so the same
arguments give byte-identical files. Only stdlib and PIL: ``data/`` knows no models.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

GENERATOR = "dept_vl.shapes"
VERSION = 6
SPLITS = ("train", "val", "test")
HELDOUT_SPLITS = ("heldout_train", "heldout_test")
PRETRAIN_TYPES: tuple[str, ...] = ("color", "shape", "size", "spatial", "exists", "negation")
RESERVED_TYPES: tuple[str, ...] = ("count",)
EXTRA_TYPES: tuple[str, ...] = ("relation", "compare")
QUESTION_TYPES: tuple[str, ...] = PRETRAIN_TYPES + RESERVED_TYPES + EXTRA_TYPES
# `types` of write_corpus: the question types each writes
TYPE_SETS: dict[str, tuple[str, ...]] = {"default": PRETRAIN_TYPES + RESERVED_TYPES,
                                         "all": QUESTION_TYPES}

# CSS colour names with their CSS RGB values. The css palette keeps, in this order, each name at
# least MIN_COLOR_DISTANCE (Euclidean RGB) from every name kept before it, so no two colours in
# the corpus are near-twins (orange / darkorange, coral / tomato) that a question could confuse.
CSS_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0), "lime": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
    "cyan": (0, 255, 255), "magenta": (255, 0, 255), "white": (255, 255, 255),
    "black": (0, 0, 0), "gray": (128, 128, 128), "maroon": (128, 0, 0),
    "green": (0, 128, 0), "navy": (0, 0, 128), "olive": (128, 128, 0),
    "purple": (128, 0, 128), "teal": (0, 128, 128), "orange": (255, 165, 0),
    "pink": (255, 192, 203), "brown": (165, 42, 42), "gold": (255, 215, 0),
    "silver": (192, 192, 192), "violet": (238, 130, 238), "indigo": (75, 0, 130),
    "salmon": (250, 128, 114), "turquoise": (64, 224, 208), "chocolate": (210, 105, 30),
    "skyblue": (135, 206, 235), "khaki": (240, 230, 140), "crimson": (220, 20, 60),
    "coral": (255, 127, 80), "orchid": (218, 112, 214), "tan": (210, 180, 140),
    "plum": (221, 160, 221), "darkgreen": (0, 100, 0), "hotpink": (255, 105, 180),
    "royalblue": (65, 105, 225), "seagreen": (46, 139, 87), "lavender": (230, 230, 250),
    "slateblue": (106, 90, 205), "yellowgreen": (154, 205, 50), "steelblue": (70, 130, 180),
    "tomato": (255, 99, 71), "peru": (205, 133, 63), "springgreen": (0, 255, 127),
    "deeppink": (255, 20, 147), "darkorange": (255, 140, 0), "chartreuse": (127, 255, 0),
    "dodgerblue": (30, 144, 255), "sienna": (160, 82, 45), "beige": (245, 245, 220),
    "lightgreen": (144, 238, 144), "aquamarine": (127, 255, 212),
    "mediumpurple": (147, 112, 219), "darkslategray": (47, 79, 79),
    "midnightblue": (25, 25, 112),
}
MIN_COLOR_DISTANCE = 70.0
# an object is drawn only where its colour is at least this far from every background colour
MIN_BACKGROUND_DISTANCE = 120.0
# each object's colour is its name's RGB moved by up to this much per channel: other programs'
# "green" is not always (0, 128, 0)
COLOR_JITTER = 20
BASIC_COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange", "white",
                                 "black")
PALETTES: tuple[str, ...] = ("basic", "css")


def palette(name: str = "basic") -> dict[str, tuple[int, int, int]]:
    """``basic``: BASIC_COLORS; ``css``: the CSS names kept in table order, each at least
    MIN_COLOR_DISTANCE from every name kept before it (no near-twins like orange / darkorange)."""
    if name not in PALETTES:
        raise ValueError(f"palette must be one of {PALETTES}, got {name!r}")
    if name == "basic":
        return {c: CSS_COLORS[c] for c in BASIC_COLORS}
    kept: dict[str, tuple[int, int, int]] = {}
    for color, rgb in CSS_COLORS.items():
        if all(math.dist(rgb, other) >= MIN_COLOR_DISTANCE for other in kept.values()):
            kept[color] = rgb
    return kept


SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "star", "ring",
                           "hexagon")
PLURALS = {"cross": "crosses"}
SHAPE_SETS: dict[str, tuple[str, ...]] = {"basic": SHAPES[:3], "all": SHAPES}
SIZES: tuple[str, ...] = ("small", "large")
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven",
                                 "eight", "nine")  # zero is never an answer
GRID = 3  # positions are named by thirds of the picture
MIN_IMAGE_SIZE = 16  # the smallest input side whose shapes still draw apart
MAX_OBJECTS = 5
OBJECT_COUNT_WEIGHTS = (0.3, 0.25, 0.2, 0.15, 0.1)
POSITIONS: tuple[tuple[str, ...], ...] = (
    ("top left", "top middle", "top right"),
    ("middle left", "center", "middle right"),
    ("bottom left", "bottom middle", "bottom right"),
)
# An object's side as a fraction of the picture; the gap between the two ranges keeps "small or
# large" a question with one answer. A lone large object may fill most of the picture.
EXTENTS = {"small": (0.14, 0.2), "large": (0.27, 0.35)}
LONE_LARGE = (0.28, 0.64)
# a centre stays this far (in thirds) from the lines between thirds, so every position has one name
THIRD_MARGIN = 0.12
# the radius, as a fraction of the side, of a circle holding the shape at any rotation
REACH = {"circle": 0.5}
OTHER_REACH = 0.71

# ---------------------------------------------------------------------------------- styles
BACKGROUND_KINDS: tuple[str, ...] = ("dark", "light", "color", "gradient", "noise", "stripes")
# plain backgrounds twice as often as textured ones: a backbone learnt from scratch needs clear
# views of each shape to learn it (measured: with all six equally likely and pictures saved down
# to half the input size, shape questions stayed near chance after 4,000 steps)
BACKGROUND_WEIGHTS = (2, 2, 2, 1, 1, 1)
HELDOUT_STYLE = "outlined shapes on a gradient background"
RESOLUTION_SCALES = (0.75, 1.0, 1.5, 2.0)  # saved size, times the corpus' image_size
JPEG_QUALITIES = (0, 0, 50, 70, 90)  # 0: PNG
SUPERSAMPLE = 4  # anti-aliased styles draw at 4x and shrink


@dataclass(frozen=True)
class Style:
    """How one scene is drawn: nothing here changes a question's or caption's truth."""

    background: str = "dark"  # one of BACKGROUND_KINDS
    colors: tuple[tuple[int, int, int], ...] = ((0, 0, 0),)  # one, or two for two-tone kinds
    detail: tuple[float, ...] = ()  # gradient angle / noise amplitude / stripe period, angle
    outline: bool = False
    antialias: bool = False
    resolution: int = 64
    jpeg_quality: int = 0  # 0: PNG

    @property
    def heldout(self) -> bool:
        return self.outline and self.background == "gradient"


@dataclass(frozen=True)
class SceneObject:
    """One shape: centre (x, y) and side ``extent`` as fractions of the picture, ``angle`` in
    degrees, ``rgb`` its drawn colour (near its name's)."""

    shape: str
    color: str
    size: str
    x: float
    y: float
    extent: float
    angle: float = 0.0
    rgb: tuple[int, int, int] | None = None

    @property
    def name(self) -> str:
        """'red circle': unique within a scene, so it always names one object."""
        return f"{self.color} {self.shape}"

    @property
    def row(self) -> int:
        return min(GRID - 1, int(self.y * GRID))

    @property
    def col(self) -> int:
        return min(GRID - 1, int(self.x * GRID))

    @property
    def position(self) -> str:
        return POSITIONS[self.row][self.col]


@dataclass(frozen=True)
class Scene:
    """Immutable, so a scene can be rendered, captioned and questioned independently."""

    objects: tuple[SceneObject, ...]
    style: Style = Style()
    palette: str = "basic"
    shape_set: str = "basic"

    @property
    def shapes(self) -> tuple[str, ...]:
        """The shapes this scene's world draws from (questions name only these)."""
        return SHAPE_SETS[self.shape_set]

    @property
    def background(self) -> str:
        return self.style.background


# ------------------------------------------------------------------------------ drawing a scene
def _rgb(rng: random.Random, low: int = 0, high: int = 255) -> tuple[int, int, int]:
    return (rng.randint(low, high), rng.randint(low, high), rng.randint(low, high))


def _near(rng: random.Random, rgb: tuple[int, int, int], spread: int) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-spread, spread))) for c in rgb)


def _two_tone(rng: random.Random, low: float, high: float) -> tuple[tuple[int, int, int], ...]:
    """A colour and a second one between ``low`` and ``high`` away from it."""
    first = _rgb(rng)
    while True:
        second = _near(rng, first, 160)
        if low <= math.dist(first, second) <= high:
            return first, second


def draw_style(rng: random.Random, image_size: int, heldout: bool = False) -> Style:
    """A drawing style; the ordinary ones never outline shapes on a gradient (the held-out
    style), which ``heldout=True`` always does."""
    kind = "gradient" if heldout else rng.choices(BACKGROUND_KINDS, BACKGROUND_WEIGHTS)[0]
    outline = heldout or (kind != "gradient" and rng.random() < 0.3)
    if kind == "dark":
        colors, detail = (_rgb(rng, 0, 70),), ()
    elif kind == "light":
        colors, detail = (_rgb(rng, 185, 255),), ()
    elif kind == "color":
        colors, detail = (_rgb(rng),), ()
    elif kind == "gradient":
        colors, detail = _two_tone(rng, 60, 150), (rng.uniform(0, 360),)
    elif kind == "noise":
        colors, detail = (_rgb(rng),), (rng.uniform(15, 45),)
    else:  # stripes: period as a fraction of the picture, and an angle
        colors = _two_tone(rng, 30, 70)
        detail = (rng.uniform(0.05, 0.15), rng.choice((0, 45, 90, 135)))
    return Style(kind, colors, detail, outline, antialias=rng.random() < 0.5,
                 resolution=round(image_size * rng.choice(RESOLUTION_SCALES)),
                 jpeg_quality=rng.choice(JPEG_QUALITIES))


def _background_tones(style: Style) -> list[tuple[float, ...]]:
    """Colours the background shows: both ends and the middle of a two-tone one."""
    if len(style.colors) == 1:
        return [style.colors[0]]
    a, b = style.colors
    return [tuple(p + (q - p) * t for p, q in zip(a, b)) for t in (0, 0.25, 0.5, 0.75, 1)]


def visible_colors(style: Style, palette_name: str = "basic") -> list[str]:
    """The palette's colours that stand out from every tone of the style's background (noise
    moves a tone by at most half its amplitude, which the margin covers)."""
    tones = _background_tones(style)
    return [c for c, rgb in palette(palette_name).items()
            if all(math.dist(rgb, tone) >= MIN_BACKGROUND_DISTANCE for tone in tones)]


def _third_ok(v: float) -> bool:
    """A centre coordinate at least THIRD_MARGIN (in thirds) from the lines between thirds."""
    t = v * GRID
    return all(abs(t - line) >= THIRD_MARGIN for line in range(1, GRID))


def _place(rng: random.Random, reach: float, placed: list[tuple[float, float, float]]
           ) -> tuple[float, float] | None:
    """A centre inside the picture, off the lines between thirds, apart from ``placed``
    (centre, reach) circles; None when 200 tries find no room."""
    if reach >= 0.5:
        return None
    for _ in range(200):
        x, y = rng.uniform(reach, 1 - reach), rng.uniform(reach, 1 - reach)
        if _third_ok(x) and _third_ok(y) and all(
                math.dist((x, y), (px, py)) >= reach + other + 0.02 for px, py, other in placed):
            return x, y
    return None


def generate_scene(rng: random.Random, image_size: int = 64, palette_name: str = "basic",
                   shape_set: str = "basic", heldout: bool = False) -> Scene:
    """1-5 objects with distinct (colour, shape) pairs, drawn in one style. An object that
    does not fit among those placed before it is left out, so a few scenes hold fewer than the
    number drawn."""
    style = draw_style(rng, image_size, heldout)
    n = rng.choices(range(1, MAX_OBJECTS + 1), weights=OBJECT_COUNT_WEIGHTS)[0]
    pairs = [(c, s) for c in visible_colors(style, palette_name) for s in SHAPE_SETS[shape_set]]
    kinds = rng.sample(pairs, min(n, len(pairs)))
    objects, placed = [], []
    for color, shape in kinds:
        size = rng.choice(SIZES)
        extent = rng.uniform(*(LONE_LARGE if n == 1 and size == "large" else EXTENTS[size]))
        reach = REACH.get(shape, OTHER_REACH) * extent
        centre = _place(rng, reach, placed)
        angle = 0.0 if shape == "circle" else rng.uniform(0, 360)
        rgb = _near(rng, CSS_COLORS[color], COLOR_JITTER)
        if centre is None:
            continue
        placed.append((*centre, reach))
        objects.append(SceneObject(shape, color, size, *centre, extent, angle, rgb))
    return Scene(tuple(objects), style, palette_name, shape_set)


def _gradient(size: int, style: Style) -> Image.Image:
    """A linear blend of the style's two colours from one side of the picture to the other,
    along the style's angle."""
    turn = math.radians(style.detail[0])
    along = (math.cos(turn), math.sin(turn))
    reach = (abs(along[0]) + abs(along[1])) / 2  # how far a corner lies along that direction
    step = 1 / max(1, size - 1)
    ramp = Image.new("L", (size, size))
    ramp.putdata([round(255 * ((x * step - 0.5) * along[0] + (y * step - 0.5) * along[1] + reach)
                        / (2 * reach)) for y in range(size) for x in range(size)])
    first, second = (Image.new("RGB", (size, size), c) for c in style.colors)
    return Image.composite(second, first, ramp)


def _noise(size: int, style: Style, rng: random.Random) -> Image.Image:
    """The style's colour, each pixel moved by seeded noise of its amplitude."""
    field = Image.frombytes("L", (size, size), rng.randbytes(size * size))
    amplitude = style.detail[0]
    bands = [field.point(lambda v, c=c: max(0, min(255, round(c + (v - 128) * amplitude / 255))))
             for c in style.colors[0]]
    return Image.merge("RGB", bands)


def _stripes(size: int, style: Style) -> Image.Image:
    image = Image.new("RGB", (size, size), style.colors[0])
    draw = ImageDraw.Draw(image)
    period, angle = max(2.0, style.detail[0] * size), math.radians(style.detail[1])
    dx, dy = math.cos(angle), math.sin(angle)  # along a stripe
    width = max(1, round(period / 2))
    for k in range(-2 * size, 2 * size, max(1, round(period))):
        cx, cy = size / 2 - dy * k, size / 2 + dx * k  # step across the stripes
        draw.line((cx - dx * 2 * size, cy - dy * 2 * size, cx + dx * 2 * size, cy + dy * 2 * size),
                  fill=style.colors[1], width=width)
    return image


def _background(size: int, style: Style, rng: random.Random) -> Image.Image:
    if style.background == "gradient":
        return _gradient(size, style)
    if style.background == "noise":
        return _noise(size, style, rng)
    if style.background == "stripes":
        return _stripes(size, style)
    return Image.new("RGB", (size, size), style.colors[0])


def _outline(shape: str, obj: SceneObject, size: int) -> list[tuple[float, float]]:
    """Polygon vertices of a square or triangle, turned by the object's angle."""
    half = obj.extent * size / 2
    if shape == "square":
        corners = [(-half, -half), (half, -half), (half, half), (-half, half)]
    else:  # triangle: apex up, base at the bottom of its box
        corners = [(0.0, -half), (half, half), (-half, half)]
    turn = math.radians(obj.angle)
    cx, cy = obj.x * size, obj.y * size
    return [(cx + px * math.cos(turn) - py * math.sin(turn),
             cy + px * math.sin(turn) + py * math.cos(turn)) for px, py in corners]


def _draw(draw: ImageDraw.ImageDraw, obj: SceneObject, size: int, outline: bool) -> None:
    """One object at canvas ``size``; the broad world's other shapes are drawn unturned."""
    fill = obj.rgb or CSS_COLORS[obj.color]
    half = obj.extent * size / 2
    box = (obj.x * size - half, obj.y * size - half, obj.x * size + half, obj.y * size + half)
    width = max(1, round(obj.extent * size * 0.12))
    paint = {"outline": fill, "width": width} if outline else {"fill": fill}
    if obj.shape == "circle":
        draw.ellipse(box, **paint)
    elif obj.shape in ("square", "triangle"):
        draw.polygon(_outline(obj.shape, obj, size), **paint)
    else:
        _draw_other(draw, obj.shape, box, fill)


def _polygon(box: tuple[float, ...], radii: tuple[float, ...], turn: float
             ) -> list[tuple[float, float]]:
    """Vertices at equal angles around the box centre, radius cycling through ``radii``
    (fractions of the half extent), starting at ``turn`` degrees from straight up."""
    left, top, right, bottom = box
    cx, cy, half = (left + right) / 2, (top + bottom) / 2, (right - left) / 2
    n = len(radii) * (6 if len(radii) == 1 else 5)
    return [(cx + half * radii[k % len(radii)] * math.sin(math.radians(turn + 360 * k / n)),
             cy - half * radii[k % len(radii)] * math.cos(math.radians(turn + 360 * k / n)))
            for k in range(n)]


def _draw_other(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, ...], fill) -> None:
    left, top, right, bottom = box
    cx, cy, arm = (left + right) / 2, (top + bottom) / 2, max(1, (right - left) / 6)
    if shape == "diamond":
        draw.polygon([(cx, top), (right, cy), (cx, bottom), (left, cy)], fill=fill)
    elif shape == "cross":
        draw.rectangle((cx - arm, top, cx + arm, bottom), fill=fill)
        draw.rectangle((left, cy - arm, right, cy + arm), fill=fill)
    elif shape == "star":
        draw.polygon(_polygon(box, (1.0, 0.45), 0.0), fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(1, round((right - left) / 5)))
    else:  # hexagon
        draw.polygon(_polygon(box, (1.0,), 0.0), fill=fill)


def render(scene: Scene, resolution: int | None = None, rng: random.Random | None = None
           ) -> Image.Image:
    """The scene at its style's resolution (or ``resolution``). A noise background draws from
    ``rng`` (a fixed one when None, so a scene renders the same each time it is drawn)."""
    style = scene.style
    size = resolution or style.resolution
    scale = SUPERSAMPLE if style.antialias else 1
    rng = rng or random.Random(0)
    image = _background(size, style, rng)
    if scale > 1:
        image = image.resize((size * scale, size * scale), Image.NEAREST)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw(draw, obj, size * scale, style.outline)
    if scale > 1:
        image = image.resize((size, size), Image.LANCZOS)
    return image


# ------------------------------------------------------------------------------- captions
def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _reading_order(scene: Scene) -> list[SceneObject]:
    return sorted(scene.objects, key=lambda o: (o.row, o.col, o.y, o.x))


def _objects_word(n: int) -> str:
    return f"{NUMBER_WORDS[n]} {'object' if n == 1 else 'objects'}"


def object_count(listing: str) -> int:
    """The number of objects a listing caption (``captions(scene)[0]``) names: its first word."""
    word = listing.split(" ", 1)[0]
    if word not in NUMBER_WORDS[1:]:
        raise ValueError(f"not a listing caption of the shapes corpus: {listing[:60]!r}")
    return NUMBER_WORDS.index(word)


def _series(items: list[str]) -> str:
    """'a , b and c'."""
    return items[0] if len(items) == 1 else " , ".join(items[:-1]) + " and " + items[-1]


def captions(scene: Scene) -> list[str]:
    """Three reference captions in three styles: every object with its position in reading
    order; one sentence about the first object; every object with its article, no positions.
    They name each object's size, colour, shape and absolute position, never a relation
    between two objects, a count of a kind, or how the picture is drawn."""
    ordered = _reading_order(scene)
    listing = " , ".join(f"{o.size} {o.color} {o.shape} {o.position}" for o in ordered)
    first, rest = ordered[0], len(ordered) - 1
    others = f" and {NUMBER_WORDS[rest]} more {'object' if rest == 1 else 'objects'}"
    others = others if rest else ""
    sentence = (f"{_article(first.size)} {first.size} {first.color} {first.shape} at the "
                f"{first.position}{others}")
    inventory = "a picture of " + _series([f"{_article(o.size)} {o.size} {o.color} {o.shape}"
                                           for o in ordered])
    return [f"{_objects_word(len(ordered))} : {listing}", sentence, inventory]


def caption(scene: Scene) -> str:
    """The first (listing) style of ``captions``."""
    return captions(scene)[0]


# ------------------------------------------------------------------------------ questions
QA = tuple[str, str]


def _unique(values: list) -> set:
    return {v for v in values if values.count(v) == 1}


def _balanced(candidates: list[QA], rng: random.Random) -> QA | None:
    """A yes/no question with 'yes' and 'no' equally likely: draw the answer first, then a
    question with that answer (None when the scene has none)."""
    answer = rng.choice(("yes", "no"))
    matching = [qa for qa in candidates if qa[1] == answer]
    return rng.choice(matching) if matching else None


def _yes_no(holds: bool) -> str:
    return "yes" if holds else "no"


def _plural(shape: str) -> str:
    return PLURALS.get(shape, shape + "s")


def _color_question(scene: Scene, rng: random.Random) -> QA | None:
    """Ask by shape, or by size and shape, whichever names exactly one object."""
    shapes = _unique([o.shape for o in scene.objects])
    sized = _unique([(o.size, o.shape) for o in scene.objects])
    refs = [(o.shape if o.shape in shapes else f"{o.size} {o.shape}", o.color)
            for o in scene.objects if o.shape in shapes or (o.size, o.shape) in sized]
    if not refs:
        return None
    ref, color = rng.choice(refs)
    template = rng.choice(("what color is the {} ?", "what is the color of the {} ?",
                           "which color does the {} have ?"))
    return template.format(ref), color


def _shape_question(scene: Scene, rng: random.Random) -> QA | None:
    colors = _unique([o.color for o in scene.objects])
    options = [o for o in scene.objects if o.color in colors]
    if not options:
        return None
    obj = rng.choice(options)
    template = rng.choice(("what shape is the {} object ?", "what is the {} shape ?",
                           "which shape is {} ?"))
    return template.format(obj.color), obj.shape


def _absent_or_present(scene: Scene, rng: random.Random, present: bool) -> tuple[str, str]:
    """A (colour, shape) pair in the scene, or an absent one sharing a colour or shape with a
    present object, so answering needs colour-shape binding rather than spotting a colour."""
    pairs = {(o.color, o.shape) for o in scene.objects}
    absent = [(c, s) for c in visible_colors(scene.style, scene.palette) for s in scene.shapes
              if (c, s) not in pairs and any(c == pc or s == ps for pc, ps in pairs)]
    return rng.choice(sorted(pairs) if present or not absent else absent)


def _is_in(scene: Scene, pair: tuple[str, str]) -> bool:
    return any((o.color, o.shape) == pair for o in scene.objects)


def _a(pair: tuple[str, str]) -> str:
    """'a red circle' / 'an orange square'."""
    return f"{_article(pair[0])} {pair[0]} {pair[1]}"


def _exists_question(scene: Scene, rng: random.Random) -> QA:
    """Is there a ...: the positive form, half yes, half no."""
    pair = _absent_or_present(scene, rng, rng.choice(("yes", "no")) == "yes")
    template = rng.choice(("is there {} ?", "does the image contain {} ?", "can you see {} ?"))
    return template.format(_a(pair)), _yes_no(_is_in(scene, pair))


def _negation_question(scene: Scene, rng: random.Random) -> QA:
    """The existence question negated, half yes, half no."""
    pair = _absent_or_present(scene, rng, rng.choice(("yes", "no")) == "no")
    template = rng.choice(("is there no {bare} ?", "does the image not contain {a} ?",
                           "is it true that there is no {bare} ?"))
    text = template.format(a=_a(pair), bare=f"{pair[0]} {pair[1]}")
    return text, _yes_no(not _is_in(scene, pair))


def _count_question(scene: Scene, rng: random.Random) -> QA:
    """All objects, or those of one shape, colour or size that is present (so the answer is
    never zero)."""
    groups = [("objects", lambda o: True)]
    groups += [(_plural(s), lambda o, s=s: o.shape == s)
               for s in sorted({o.shape for o in scene.objects})]
    groups += [(f"{c} objects", lambda o, c=c: o.color == c)
               for c in sorted({o.color for o in scene.objects})]
    groups += [(f"{z} objects", lambda o, z=z: o.size == z)
               for z in sorted({o.size for o in scene.objects})]
    kind = rng.choice(("objects", "shape", "color", "size"))
    pool = {"objects": groups[:1], "shape": [g for g in groups[1:] if " " not in g[0]],
            "color": [g for g in groups if g[0].split()[0] in CSS_COLORS],
            "size": [g for g in groups if g[0].split()[0] in SIZES]}[kind]
    noun, keep = rng.choice(pool)
    template = rng.choice(("how many {} are there ?", "how many {} can you see ?",
                           "what is the number of {} ?"))
    return template.format(noun), NUMBER_WORDS[sum(map(keep, scene.objects))]


def _size_question(scene: Scene, rng: random.Random) -> QA:
    obj = rng.choice(scene.objects)
    template = rng.choice(("what size is the {} ?", "how big is the {} ?",
                           "is the {} small or large ?"))
    return template.format(obj.name), obj.size


def _spatial_question(scene: Scene, rng: random.Random) -> QA:
    """Where one object is: one of the nine position names the captions use."""
    obj = rng.choice(scene.objects)
    template = rng.choice(("where is the {} ?", "in which part of the image is the {} ?",
                           "what is the position of the {} ?"))
    return template.format(obj.name), obj.position


_RELATIONS = {  # phrasing -> (axis, sign): true when a's coordinate minus b's has this sign
    "left of": ("col", -1), "to the left of": ("col", -1),
    "right of": ("col", 1), "to the right of": ("col", 1),
    "above": ("row", -1), "below": ("row", 1),
}


def _relation_question(scene: Scene, rng: random.Random) -> QA | None:
    """Is a left of / right of / above / below b: asked only along an axis on which the two
    differ, so the answer is defined; a third negated ('is the a not above the b')."""
    pairs = [(a, b) for a in scene.objects for b in scene.objects
             if a is not b and (a.row, a.col) != (b.row, b.col)]
    if not pairs:  # one object, or all in one third of the picture
        return None
    a, b = rng.choice(pairs)
    words = [w for w, (axis, _) in _RELATIONS.items() if getattr(a, axis) != getattr(b, axis)]
    candidates = []
    for word in words:
        axis, sign = _RELATIONS[word]
        holds = (getattr(a, axis) - getattr(b, axis)) * sign > 0
        candidates += [(f"is the {a.name} {word} the {b.name} ?", _yes_no(holds))] * 2
        candidates.append((f"is the {a.name} not {word} the {b.name} ?", _yes_no(not holds)))
    return _balanced(candidates, rng)


def _compare_question(scene: Scene, rng: random.Random) -> QA | None:
    """More / fewer of one shape than another, larger / smaller, same size: yes/no."""
    counts = {s: sum(o.shape == s for o in scene.objects) for s in scene.shapes}
    candidates = []
    for s, t in ((s, t) for s in counts for t in counts if s != t and counts[s] + counts[t]):
        candidates.append((f"are there more {_plural(s)} than {_plural(t)} ?",
                           _yes_no(counts[s] > counts[t])))
        candidates.append((f"are there fewer {_plural(s)} than {_plural(t)} ?",
                           _yes_no(counts[s] < counts[t])))
    rank = {"small": 0, "large": 1}
    for a, b in ((a, b) for a in scene.objects for b in scene.objects if a is not b):
        diff = rank[a.size] - rank[b.size]
        candidates += [(f"is the {a.name} larger than the {b.name} ?", _yes_no(diff > 0)),
                       (f"is the {a.name} smaller than the {b.name} ?", _yes_no(diff < 0)),
                       (f"are the {a.name} and the {b.name} the same size ?",
                        _yes_no(diff == 0))]
    return _balanced(candidates, rng)


_ASKERS = {
    "color": _color_question,
    "shape": _shape_question,
    "exists": _exists_question,
    "count": _count_question,
    "size": _size_question,
    "spatial": _spatial_question,
    "relation": _relation_question,
    "compare": _compare_question,
    "negation": _negation_question,
}


def questions(scene: Scene, rng: random.Random, types: tuple[str, ...] = TYPE_SETS["default"]
              ) -> list[tuple[str, str, str]]:
    """At most one (question, answer, type) per type of ``types``, in ``QUESTION_TYPES``
    order."""
    out = []
    for qtype in (t for t in QUESTION_TYPES if t in types):
        qa = _ASKERS[qtype](scene, rng)
        if qa is not None:
            out.append((*qa, qtype))
    return out

def _split_sizes(n_images: int) -> dict[str, int]:
    """80/10/10, with at least one val and one test scene once there are three; each held-out
    style split the size of test."""
    held_out = max(1, n_images // 10) if n_images >= 3 else 0
    return {"train": n_images - 2 * held_out, "val": held_out, "test": held_out,
            "heldout_train": held_out, "heldout_test": held_out}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def _check_world(n_images: int, image_size: int, palette_name: str, shape_set: str,
                 types: str) -> None:
    if palette_name not in PALETTES or shape_set not in SHAPE_SETS or types not in TYPE_SETS:
        raise ValueError(f"palette must be one of {PALETTES}, shapes one of {tuple(SHAPE_SETS)} "
                         f"and types one of {tuple(TYPE_SETS)}, got {palette_name!r}, "
                         f"{shape_set!r} and {types!r}")
    if n_images < 1 or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"need n_images >= 1 and image_size >= {MIN_IMAGE_SIZE}, got "
                         f"{n_images} and {image_size}")


def write_corpus(out_dir: str | Path, n_images: int, seed: int, image_size: int = 64,
                 palette: str = "basic", shapes: str = "basic", types: str = "default") -> dict:
    """Write images, JSONL files and ``manifest.json``; return the manifest.

    ``n_images`` scenes in the ordinary styles (train / val / test), and two held-out-style
    splits the size of test. The manifest is removed first and written last, so a
    half-written corpus never looks complete to ``corpus_matches``.
    """
    _check_world(n_images, image_size, palette, shapes, types)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    rng = random.Random(seed)
    order = list(range(n_images))
    rng.shuffle(order)
    manifest = {"generator": GENERATOR, "version": VERSION, "seed": seed,
                "n_images": n_images, "image_size": image_size, "palette": palette,
                "shapes": shapes, "types": types, "heldout_style": HELDOUT_STYLE, "splits": {},
                "question_types": list(TYPE_SETS[types])}
    start, world = 0, (image_size, palette, shapes, TYPE_SETS[types])
    for split, size in _split_sizes(n_images).items():
        if split in HELDOUT_SPLITS:
            ids = list(range(start, start + size))
        else:
            ids = sorted(order[start:start + size])
        start += size
        n_questions = _write_split(out, split, ids, rng, world)
        manifest["splits"][split] = {"images": len(ids), "questions": n_questions}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def _save(image: Image.Image, style: Style, path: Path) -> str:
    """PNG, or JPEG at the style's quality; the file name it got."""
    if style.jpeg_quality:
        path = path.with_suffix(".jpg")
        image.save(path, quality=style.jpeg_quality)
    else:
        path = path.with_suffix(".png")
        image.save(path)
    return path.name


def _write_split(out: Path, split: str, ids: list[int], rng: random.Random,
                 world: tuple) -> int:
    """Write one split's images and JSONL files; return its number of questions."""
    image_size, palette_name, shape_set, types = world
    image_dir = out / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    vqa, caption_rows = [], []
    for index in ids:
        scene = generate_scene(rng, image_size, palette_name, shape_set,
                               heldout=split in HELDOUT_SPLITS)
        image_id = f"{index:06d}"
        name = _save(render(scene, rng=rng), scene.style, image_dir / image_id)
        rel = f"images/{split}/{name}"
        caption_rows.append({"id": image_id, "image": rel, "captions": captions(scene)})
        for k, (question, answer, qtype) in enumerate(questions(scene, rng, types)):
            vqa.append({"id": f"{image_id}_{k}", "image": rel, "question": question,
                        "answers": [answer], "question_type": qtype})
    _write_jsonl(out / f"{split}_vqa.jsonl", vqa)
    _write_jsonl(out / f"{split}_caption.jsonl", caption_rows)
    return len(vqa)


def corpus_matches(out_dir: str | Path, n_images: int, seed: int, image_size: int = 64,
                   palette: str = "basic", shapes: str = "basic", types: str = "default"
                   ) -> bool:
    """True if ``out_dir`` holds a complete corpus written with exactly these arguments."""
    out = Path(out_dir)
    try:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    wanted = {"generator": GENERATOR, "version": VERSION, "seed": seed,
              "n_images": n_images, "image_size": image_size, "palette": palette,
              "shapes": shapes, "types": types}
    if any(manifest.get(key) != value for key, value in wanted.items()):
        return False
    return all((out / f"{split}_{kind}.jsonl").is_file()
               for split in SPLITS + HELDOUT_SPLITS for kind in ("vqa", "caption"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the synthetic shapes VL corpus.")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--n-images", type=int, required=True,
                        help="scenes in the ordinary styles (train/val/test 80/10/10); the "
                        "held-out style adds two splits the size of test")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--image-size", type=int, default=64,
                        help="the model's input size; saved pictures range from half to twice it")
    parser.add_argument("--palette", choices=PALETTES, default="basic",
                        help="basic: 8 colours (the built-in backbone's); css: 33 CSS colours")
    parser.add_argument("--shapes", choices=tuple(SHAPE_SETS), default="basic",
                        help="basic: circle, square, triangle (the built-in backbone's); all: 8")
    parser.add_argument("--types", choices=tuple(TYPE_SETS), default="default",
                        help="default: the pretrained types and count; all: also relation and "
                        "compare")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    manifest = write_corpus(args.out, args.n_images, args.seed, args.image_size, args.palette,
                            args.shapes, args.types)
    splits = " / ".join(f"{name} {s['images']} images, {s['questions']} questions"
                        for name, s in manifest["splits"].items())
    print(f"wrote {args.out}: {splits} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
