"""Any PIL image as the 8-bit RGB pixels the model sees.

One conversion, `to_rgb`, serves training and evaluation (`data.image_files.load_image`),
`ImageEncoder.preprocess` (so `generate()` on PIL images) and the demo, so every path sees the
same pixels. PIL's own `convert("RGB")` is right for most modes but silently wrong for two
families, which is why this module exists:

- high bit depth grey (I;16*, I, F): PIL clips to 0..255 instead of scaling, so a 16-bit PNG
  comes out white;
- alpha (RGBA, LA, PA, La, RGBa, palette or colour-key transparency): PIL drops the alpha, so a
  fully transparent pixel shows whatever colour it happens to store (often black).

The rules, one test per mode in tests/test_images.py:

- I;16, I;16L, I;16B, I;16N: scaled by the type's range, value / 257 rounded
  (0 -> 0, 32768 -> 128, 65535 -> 255).
- I (32-bit int): values all within 0..65535 are 16-bit data (Pillow opens signed 16-bit TIFFs,
  and 16-bit PNGs in some versions, as I) and are scaled like I;16, so one file gives the same
  pixels on any Pillow; an image with any value outside that range is stretched from its own
  min..max to 0..255.
- F (32-bit float): values all within 0..1 (the float-image convention) are multiplied by 255;
  otherwise the image's own min..max is stretched to 0..255. NaN or infinite values are refused
  (ValueError): there is no honest pixel for them.
- A constant image that has to be stretched (min == max) becomes black.
- Alpha is composited over `BACKGROUND` (white): out = a * colour + (1 - a) * white, rounded.
  Premultiplied La / RGBa are un-premultiplied first; palette transparency (P, PA) and colour
  keys (the `transparency` of 1, L, RGB, and of 16-bit grey, matched on the 16-bit value)
  become alpha first.
- 1, L, P, RGB, RGBX, CMYK, YCbCr, LAB, HSV: PIL's own conversion (LAB is CIE L*a*b* -> sRGB).
- Any other mode: ValueError naming it.

`to_rgb` always returns a new, loaded image; the input's pixels are left as they were. PIL only:
this module imports neither torch nor numpy.
"""

from __future__ import annotations

import math

from PIL import Image, ImageMath

__all__ = ["BACKGROUND", "to_rgb"]

# Transparent pixels become this colour. White, because transparent images (logos, line art,
# cut-out objects) are drawn on white pages, which is how people and captioners saw them.
BACKGROUND = (255, 255, 255)

# 16-bit grey modes -> PIL's raw unpacker that reads their bytes into a 32-bit "I" image
# exactly (PIL's convert("I") mishandles I;16N on some builds).
_SIXTEEN_BIT = {"I;16": "I;16", "I;16L": "I;16", "I;16B": "I;16B", "I;16N": "I;16N"}
_SIXTEEN_BIT_MAX = 65535
# Modes PIL converts to RGB correctly (no alpha, 8 bits or a colour space it knows).
_PIL_CONVERTS = frozenset({"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})
# Colour-key transparency PIL itself turns into alpha through convert("RGBA").
_PIL_KEYED = frozenset({"1", "L", "RGB"})


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` as a new 8-bit RGB image, by the rules in this module's docstring."""
    image = _with_straight_alpha(image)
    alpha = _alpha(image)
    colour = _colour(image)
    if alpha is None:
        return colour
    return Image.composite(colour, Image.new("RGB", image.size, BACKGROUND), alpha)


def _with_straight_alpha(image: Image.Image) -> Image.Image:
    """Palettes with transparency and premultiplied modes -> RGBA, the mode alpha is read from."""
    if image.mode == "PA" or (image.mode == "P" and "transparency" in image.info):
        return image.convert("RGBA")  # PIL maps each palette entry's alpha
    if image.mode == "RGBa":
        return image.convert("RGBA")  # PIL un-premultiplies
    if image.mode == "La":  # PIL has no La conversion: go through RGBa
        grey, alpha = image.split()
        return Image.merge("RGBa", (grey, grey, grey, alpha)).convert("RGBA")
    return image


def _alpha(image: Image.Image) -> Image.Image | None:
    """The image's alpha as an L image, or None when every pixel is opaque."""
    if image.mode in ("RGBA", "LA"):
        return image.getchannel("A")
    key = image.info.get("transparency")
    if key is None:
        return None
    if image.mode in _PIL_KEYED:
        return image.convert("RGBA").getchannel("A")
    if image.mode == "I" or image.mode in _SIXTEEN_BIT:
        # PIL would compare the key with clipped 8-bit values; compare on the real values.
        values = _as_int32(image)
        return ImageMath.lambda_eval(lambda a: (a["im"] != key) * 255, im=values).convert("L")
    return None  # no reader gives other modes a colour key


def _colour(image: Image.Image) -> Image.Image:
    """The colour channels as RGB, alpha ignored."""
    if image.mode in ("RGBA", "LA"):
        return image.convert("RGB")
    if image.mode == "I" or image.mode in _SIXTEEN_BIT:
        return _grey_from_int(_as_int32(image))
    if image.mode == "F":
        return _grey_from_float(image)
    if image.mode in _PIL_CONVERTS:
        return image.convert("RGB")
    raise ValueError(f"cannot convert an image of mode {image.mode!r} to RGB")


def _as_int32(image: Image.Image) -> Image.Image:
    if image.mode == "I":
        return image
    return Image.frombytes("I", image.size, image.tobytes(), "raw", _SIXTEEN_BIT[image.mode])


def _grey_from_int(image: Image.Image) -> Image.Image:
    low, high = image.getextrema()
    if 0 <= low and high <= _SIXTEEN_BIT_MAX:
        return _linear_to_rgb(image, 255 / _SIXTEEN_BIT_MAX, 0.0)
    return _stretched(image, low, high)


def _grey_from_float(image: Image.Image) -> Image.Image:
    # getextrema skips a NaN that is not the first pixel, so look for NaN (x != x) directly.
    has_nan = ImageMath.lambda_eval(lambda a: a["im"] != a["im"], im=image).getextrema()[1]
    low, high = image.getextrema()
    if has_nan or not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("float image has NaN or infinite pixel values")
    if 0 <= low and high <= 1:
        return _linear_to_rgb(image, 255.0, 0.0)
    return _stretched(image, low, high)


def _stretched(image: Image.Image, low: float, high: float) -> Image.Image:
    """The image's own min..max onto 0..255 (a constant image becomes black)."""
    if high == low:
        return _linear_to_rgb(image, 0.0, 0.0)
    scale = 255 / (high - low)
    return _linear_to_rgb(image, scale, -low * scale)


def _linear_to_rgb(image: Image.Image, scale: float, offset: float) -> Image.Image:
    """v * scale + offset, rounded (PIL truncates, hence + 0.5) and clipped to 0..255 by L."""
    grey = image.point(lambda v: v * scale + (offset + 0.5))
    return grey.convert("L").convert("RGB")
