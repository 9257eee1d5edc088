"""dept_vl.images.to_rgb: every PIL mode, checked pixel by pixel against the documented rules."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Callable

import pytest
from PIL import Image

from dept_vl.data.image_files import load_image
from dept_vl.data.records import CaptionRecord
from dept_vl.images import BACKGROUND, to_rgb

WHITE, BLACK, RED = (255, 255, 255), (0, 0, 0), (255, 0, 0)


def grey(*values: int) -> list[tuple[int, int, int]]:
    return [(v, v, v) for v in values]


def row(mode: str, values: list, fmt: str) -> Image.Image:
    """A 1-row image of `mode` from raw values packed with struct format `fmt` (one char)."""
    raw = struct.pack(fmt[0] + fmt[1] * len(values), *values)
    return Image.frombytes(mode, (len(values), 1), raw)


def pixels(image: Image.Image) -> list:
    return [image.getpixel((x, y)) for y in range(image.height) for x in range(image.width)]


def with_info(image: Image.Image, **info) -> Image.Image:
    image.info.update(info)
    return image


def palette(indices: list[int], transparency=None, mode: str = "P") -> Image.Image:
    image = Image.new("P", (len(indices), 1))
    image.putpalette([255, 0, 0, 0, 0, 255, 0, 255, 0])  # 0 red, 1 blue, 2 green
    for x, index in enumerate(indices):
        image.putpixel((x, 0), index)
    if transparency is not None:
        image.info["transparency"] = transparency
    return image


def filled(mode: str, *values) -> Image.Image:
    image = Image.new(mode, (len(values), 1))
    for x, value in enumerate(values):
        image.putpixel((x, 0), value)
    return image


SIXTEEN = [0, 257, 32768, 65535]
# (id, image builder, expected RGB pixels): one line per mode and per rule of the docstring.
CASES: list[tuple[str, Callable[[], Image.Image], list]] = [
    # 16-bit: value / 257, so 32768 is mid grey (PIL's own convert gives 255: white)
    ("I;16", lambda: row("I;16", SIXTEEN, "<H"), grey(0, 1, 128, 255)),
    ("I;16L", lambda: row("I;16L", SIXTEEN, "<H"), grey(0, 1, 128, 255)),
    ("I;16B", lambda: row("I;16B", SIXTEEN, ">H"), grey(0, 1, 128, 255)),
    ("I;16N", lambda: row("I;16N", SIXTEEN, "=H"), grey(0, 1, 128, 255)),
    ("I;16-colour-key", lambda: with_info(row("I;16", [0, 1000, 32768], "<H"), transparency=1000),
     [BLACK, WHITE, (128, 128, 128)]),
    # 32-bit int: 16-bit data when it fits, else its own min..max
    ("I-16bit-range", lambda: row("I", [0, 32768, 65535], "<i"), grey(0, 128, 255)),
    ("I-stretched", lambda: row("I", [-100, 0, 100, 70000], "<i"), grey(0, 0, 1, 255)),
    ("I-constant-out-of-range", lambda: row("I", [-5, -5], "<i"), grey(0, 0)),
    ("I-colour-key", lambda: with_info(row("I", [0, 40000], "<i"), transparency=40000),
     [BLACK, WHITE]),
    # float: 0..1 times 255, else its own min..max
    ("F-unit-range", lambda: row("F", [0.0, 0.5, 1.0], "<f"), grey(0, 128, 255)),
    ("F-stretched", lambda: row("F", [-1.0, 0.0, 1.0], "<f"), grey(0, 128, 255)),
    ("F-large", lambda: row("F", [1000.0, 3000.0], "<f"), grey(0, 255)),
    # alpha over the white background: out = a * colour + (1 - a) * 255
    ("RGBA", lambda: filled("RGBA", (255, 0, 0, 0), (255, 0, 0, 255), (255, 0, 0, 128),
                            (0, 0, 0, 0)),
     [WHITE, RED, (255, 127, 127), WHITE]),
    ("LA", lambda: filled("LA", (0, 0), (0, 255), (0, 128)), grey(255, 0, 127)),
    ("La-premultiplied", lambda: filled("La", (64, 128), (0, 0)), grey(191, 255)),
    ("RGBa-premultiplied", lambda: filled("RGBa", (64, 0, 0, 128), (9, 9, 9, 0)),
     [(191, 127, 127), WHITE]),
    ("PA", lambda: Image.merge("PA", (palette([0, 1]), Image.new("L", (2, 1), 0))),
     [WHITE, WHITE]),
    ("P-transparency-bytes", lambda: palette([0, 1, 2], transparency=bytes([0, 255, 128])),
     [WHITE, (0, 0, 255), (127, 255, 127)]),
    ("P-transparency-index", lambda: palette([0, 1], transparency=1), [RED, WHITE]),
    ("P-opaque", lambda: palette([0, 1, 2]), [RED, (0, 0, 255), (0, 255, 0)]),
    ("L-colour-key", lambda: with_info(filled("L", 10, 20), transparency=20), [grey(10)[0], WHITE]),
    ("RGB-colour-key", lambda: with_info(filled("RGB", (1, 2, 3), (4, 5, 6)),
                                         transparency=(4, 5, 6)), [(1, 2, 3), WHITE]),
    # PIL's own conversions
    ("1", lambda: filled("1", 0, 1), grey(0, 255)),
    ("L", lambda: filled("L", 0, 77, 255), grey(0, 77, 255)),
    ("RGB", lambda: filled("RGB", (1, 2, 3)), [(1, 2, 3)]),
    ("RGBX", lambda: filled("RGBX", (1, 2, 3, 0)), [(1, 2, 3)]),
    ("CMYK", lambda: filled("CMYK", (0, 0, 0, 0), (255, 0, 0, 0), (0, 0, 0, 255)),
     [WHITE, (0, 255, 255), BLACK]),
    ("YCbCr", lambda: filled("YCbCr", (128, 128, 128), (255, 128, 128)), grey(128, 255)),
    ("LAB", lambda: filled("LAB", (0, 128, 128), (255, 128, 128)), [(1, 0, 1), (254, 255, 254)]),
    ("HSV", lambda: filled("HSV", (0, 255, 255), (0, 0, 128)), [RED, (128, 128, 128)]),
]


@pytest.mark.parametrize(("build", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_to_rgb_per_mode(build: Callable[[], Image.Image], expected: list) -> None:
    image = build()
    before = image.tobytes()
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == image.size
    assert pixels(out) == expected
    assert out is not image and image.tobytes() == before  # a new image; the input untouched


def test_every_pil_mode_is_covered() -> None:
    """A new PIL mode must get a rule (and a case above) before it silently converts."""
    covered = {case[0].split("-")[0] for case in CASES}
    assert set(Image.MODES) <= covered, sorted(set(Image.MODES) - covered)


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_float_image_with_non_finite_values_is_refused(value: float) -> None:
    image = row("F", [0.5, value, 0.25], "<f")  # not first: getextrema alone misses a NaN here
    with pytest.raises(ValueError, match="NaN or infinite"):
        to_rgb(image)


def test_background_is_white() -> None:
    assert BACKGROUND == WHITE


# Files on disk, read the way training reads them (load_image), give the same pixels.


def test_sixteen_bit_png_file_is_mid_grey_not_white(tmp_path: Path) -> None:
    path = tmp_path / "g16.png"
    row("I;16", [32768, 65535, 0], "<H").save(path)
    assert Image.open(path).mode in ("I;16", "I")  # what PIL gives differs between versions
    assert pixels(load_image(CaptionRecord("g", str(path), ("x",)))) == grey(128, 255, 0)


def test_rgba_and_palette_png_files_are_composited(tmp_path: Path) -> None:
    filled("RGBA", (0, 0, 0, 0), (0, 0, 255, 255)).save(tmp_path / "rgba.png")
    palette([0, 1], transparency=bytes([0, 255])).save(tmp_path / "p.png")
    for name, expected in [("rgba.png", [WHITE, (0, 0, 255)]), ("p.png", [WHITE, (0, 0, 255)])]:
        record = CaptionRecord(name, str(tmp_path / name), ("x",))
        assert pixels(load_image(record)) == expected, name


def test_cmyk_jpeg_file(tmp_path: Path) -> None:
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(tmp_path / "c.jpg", quality=100)
    r, g, b = load_image(CaptionRecord("c", str(tmp_path / "c.jpg"), ("x",))).getpixel((4, 4))
    assert min(r, g, b) >= 250  # no ink is white (JPEG: within a margin)


def test_encoder_preprocess_sees_the_pixels_training_sees(tmp_path: Path) -> None:
    """generate() on a PIL image goes through ImageEncoder.preprocess; training through
    load_image: a 16-bit or RGBA picture must give the same tensor either way."""
    torch = pytest.importorskip("torch")
    from dept_vl.vision import ImageEncoder, VisionConfig

    encoder = ImageEncoder(VisionConfig(model_name="test_resnet", image_size=16))
    path = tmp_path / "g16.png"
    Image.frombytes("I;16", (16, 16), struct.pack("<256H", *([32768] * 256))).save(path)
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    for image in (Image.open(path), rgba):
        trained = encoder.transform(load_image(CaptionRecord("x", image, ("x",))))
        served = encoder.preprocess([image])[0]
        assert torch.equal(trained, served)
    white = encoder.transform(Image.new("RGB", (16, 16), WHITE))
    assert not torch.equal(encoder.preprocess([Image.open(path)])[0], white)  # 16-bit is grey
    assert torch.equal(encoder.preprocess([rgba])[0], white)  # fully transparent is white
