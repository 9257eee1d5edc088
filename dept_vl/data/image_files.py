"""Record images: read, decoded once before training (`validate_images`), keyed for caches
(`image_key`: a path, or "datasets:<fingerprint>/<column>#<row>")."""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageFile, UnidentifiedImageError

from dept_vl.data.table_images import LazyImage
from dept_vl.data.records import Record, encoded, image_key
from dept_vl.data.bad_data import DataError, Policy
from dept_vl.data.rows import ImageRef
from dept_vl.errors import one_line
from dept_vl.images import to_rgb


# What PIL raises for a damaged file depends on the plugin and on where the damage is.
_IMAGE_ERRORS = (
    OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error,
    Image.DecompressionBombError,
)


def _image_name(image: ImageRef) -> str:
    if isinstance(image, str):
        return image
    if isinstance(image, LazyImage):
        return image.name
    return getattr(image, "filename", "") or "<in-memory image>"


def _cause(error: BaseException) -> str:
    """PIL's text for an unknown format names the in-memory buffer we opened, not the file."""
    if isinstance(error, UnidentifiedImageError):
        return "not an image format PIL can identify (or an empty file)"
    return one_line(error)


def _image_error(record: Record, error: BaseException) -> DataError:
    where = record.source or f"record {record.id!r}"
    reason = "image_not_found" if isinstance(error, FileNotFoundError) else "image_unreadable"
    return DataError(f"{where}: cannot read image {_image_name(record.image)}: {_cause(error)}",
                     reason)


def _decoded(image: ImageRef, *, cheap: bool = False, data: bytes | None = None) -> Image.Image:
    """The image decoded from its own bytes, never in place: a record keeps its lazy image, so
    a pass over the data does not leave every decoded image alive in memory.

    `cheap` (validation): PIL's JPEG draft mode lets libjpeg scale by 1/8 while it still reads
    every byte, so a truncated JPEG fails exactly as it does at full size (tested). `data`:
    the image's bytes when the caller has read them already.
    """
    data = encoded(image) if data is None else data
    if data is None:
        return image  # type: ignore[return-value]
    opened = Image.open(io.BytesIO(data))
    if cheap:
        opened.draft(opened.mode, (1, 1))
    opened.load()
    return opened


def read_image(image: ImageRef) -> Image.Image:
    """A record's `image` (path, PIL image, `datasets` row) as RGB (`dept_vl.images.to_rgb`),
    decoded now from its own bytes; for a cache that holds images but not their records."""
    return to_rgb(_decoded(image))


def load_image(record: Record) -> Image.Image:
    """The record's image as RGB (`read_image`); any read failure names the image and the
    record's row."""
    try:
        return read_image(record.image)
    except _IMAGE_ERRORS as e:
        raise _image_error(record, e) from e


def _decode_problem(image: ImageRef) -> BaseException | None:
    """Why the image cannot be used for training, or None. Beyond decoding (which is what
    training does), PNG and other formats with checksums are verified: decoding ignores a
    damaged tail or a bad CRC that verify() reports."""
    try:
        data = encoded(image)
        if data is not None:
            with Image.open(io.BytesIO(data)) as opened:
                opened.verify()
        to_rgb(_decoded(image, cheap=True, data=data))
    except _IMAGE_ERRORS as e:
        return e
    return None


def _image_ok(record: Record, problem: BaseException | None) -> bool:
    if problem is not None:
        raise _image_error(record, problem)
    return True


def validate_images(
    records: Sequence[Record], skipped: list[dict[str, str]] | None = None
) -> list[Record]:
    """Decode every distinct image (file, `datasets` row or in-memory) once, before training
    starts; nothing decoded is kept (a `datasets` row is read again when a batch needs it).

    `skipped=None`: the first record whose image cannot be decoded raises DataError naming its
    file:line and the image. A list: every record of an undecodable image is dropped and listed
    (reason image_unreadable, or image_not_found for a missing file); the rest is returned in
    order.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise DataError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process (set by other code): "
            "truncated images would decode as grey fill and pass; leave it False", "bad_option")
    policy = Policy(skipped)
    problems: dict[Any, BaseException | None] = {}
    kept = []
    for record in records:
        key = image_key(record.image) or id(record.image)
        if key not in problems:
            problems[key] = _decode_problem(record.image)
        where = record.source or f"record {record.id!r}"
        if policy.row(where, _image_ok, record, problems[key]):
            kept.append(record)
    return kept
