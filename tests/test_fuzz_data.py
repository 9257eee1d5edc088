"""Fuzz suite, data part: bad rows and bad images under both bad-data policies.

Every case is deterministic (fixed tables, or drawn from a seeded RNG) and asserts the exact
outcome twice:
- policy "error" (`skipped=None`): one DataError, one line, starting with the bad row's
  file:line (or file:key[index]), naming the image where there is one, with its `reason`;
- policy "skip" (`skipped=[]`): the same message listed once per bad row with that source and
  reason, and every good row kept, in order.
"""

from __future__ import annotations

import io
import json
import random
import struct
import zlib
from pathlib import Path
from typing import Any, Callable

import pytest
from PIL import Image

from dept_vl.data.formats import load_jsonl, load_karpathy, load_records, load_vqav2
from dept_vl.data.image_files import load_image, validate_images
from dept_vl.data.records import CaptionRecord
from dept_vl.data.bad_data import DataError

GOOD_FIRST = {"id": "g1", "image": "img/a.png", "question": "What color?", "answers": ["red"]}
GOOD_LAST = {"id": "g4", "image": "img/b.png", "question": "Which shape?", "answers": ["square"]}
GOOD_IDS = ["g1", "g4"]


def write_image(path: Path, image: Image.Image | None = None, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (image or Image.new("RGB", (8, 8), "red")).save(path, fmt)
    return path


def data_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    write_image(data / "img" / "a.png")
    write_image(data / "img" / "b.png", Image.new("RGB", (8, 8), "blue"))
    return data


def write_rows(path: Path, bad: bytes) -> Path:
    """Line 1 good, line 2 blank, line 3 the bad row (raw bytes), line 4 good."""
    lines = [json.dumps(GOOD_FIRST).encode(), b"", bad, json.dumps(GOOD_LAST).encode()]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def both_policies(
    load: Callable[[list | None], list], bad: list[tuple[str, str]], good_ids: list[str],
    *fragments: str,
) -> DataError:
    """Assert the exact outcome under "error" and "skip"; `bad` is [(source, reason)] in the
    order the skip lists them (the first is the one "error" raises)."""
    with pytest.raises(DataError) as info:
        load(None)
    error = info.value
    message = str(error)
    first_source, first_reason = bad[0]
    assert "\n" not in message and message.startswith(f"{first_source}: "), message
    assert error.reason == first_reason, (error.reason, message)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    skipped: list[dict[str, str]] = []
    kept = load(skipped)
    assert [r.id for r in kept] == good_ids
    assert [(s["source"], s["reason"]) for s in skipped] == bad
    assert skipped[0]["error"] == message  # the skip lists what the error policy would raise
    return error


# ------------------------------------------------------------------ JSONL rows (a table)

LONE_SURROGATE = b'{"id": "x", "image": "img/a.png", "question": "wh\\ud800at?", "answers": ["red"]}'
ROW_CASES: list[tuple[str, bytes, str, str]] = [
    # (id, the bad line, reason, message fragment)
    ("cut-object", b'{"image": "img/a.png", "question": "q?"', "invalid_json",
     "invalid JSON (Expecting ',' delimiter"),
    ("not-utf8", b'{"image": "img/a.png", "question": "caf\xe9?", "answers": ["x"]}',
     "invalid_json", "not UTF-8 text (invalid continuation byte at byte 39)"),
    ("huge-int", b'{"id": ' + b"9" * 5000 + b', "image": "img/a.png"}', "invalid_json",
     "invalid JSON (ValueError: Exceeds the limit (4300 digits)"),
    ("deep-nesting", b"[" * 100_000 + b"]" * 100_000, "invalid_json",
     "invalid JSON (RecursionError: maximum recursion depth exceeded"),
    ("trailing-garbage", json.dumps(GOOD_FIRST).encode() + b" x", "invalid_json",
     "invalid JSON (Extra data at column"),
    ("list-row", b'["img/a.png", "q?", ["red"]]', "not_an_object",
     "expected a JSON object, got list"),
    ("null-row", b"null", "not_an_object", "expected a JSON object, got NoneType"),
    ("number-row", b"42", "not_an_object", "expected a JSON object, got int"),
    ("string-row", b'"img/a.png"', "not_an_object", "expected a JSON object, got str"),
    ("no-question", b'{"image": "img/a.png", "answers": ["red"]}', "missing_field",
     "missing field 'question'"),
    ("null-answers", b'{"image": "img/a.png", "question": "q?", "answers": null}',
     "missing_field", "missing field 'answers' (or 'answer')"),
    ("no-image", b'{"question": "q?", "answers": ["red"]}', "missing_field",
     "missing field 'image'"),
    ("nested-answers", b'{"image": "img/a.png", "question": "q?", "answers": [["red"]]}',
     "bad_field", "field 'answers' must be a non-empty list of strings, got [['red']]"),
    ("nan-answer", b'{"image": "img/a.png", "question": "q?", "answers": [NaN]}', "bad_field",
     "field 'answers' must be a non-empty list of strings, got [nan]"),
    ("unicode-space-question",
     '{"image": "img/a.png", "question": "\u3000\u2003", "answers": ["red"]}'.encode(),
     "bad_field", "empty question"),
    ("lone-surrogate", LONE_SURROGATE, "bad_field",
     "question is not valid Unicode text (surrogates not allowed at position 2)"),
    ("float-id", b'{"id": 1e400, "image": "img/a.png", "question": "q?", "answers": ["a"]}',
     "bad_field", "field 'id' must be a non-empty string or an integer, got inf"),
    ("bool-id", b'{"id": true, "image": "img/a.png", "question": "q?", "answers": ["a"]}',
     "bad_field", "field 'id' must be a non-empty string or an integer, got True"),
    ("dict-image", b'{"image": {"path": "a.png"}, "question": "q?", "answers": ["a"]}',
     "bad_field", "field 'image' must be a non-empty string (a file path), got {'path': 'a.png'}"),
    ("list-question-type",
     b'{"image": "img/a.png", "question": "q?", "answers": ["a"], "question_type": ["c"]}',
     "bad_field", "field 'question_type' must be a string, got list"),
    ("image-not-found", b'{"image": "img/nope.png", "question": "q?", "answers": ["a"]}',
     "image_not_found", "image file not found: "),
    ("image-with-nul", b'{"image": "img/a\\u0000.png", "question": "q?", "answers": ["a"]}',
     "image_not_found", "image file not found: "),
    ("image-is-a-directory", b'{"image": "img", "question": "q?", "answers": ["a"]}',
     "image_not_found", "image path is a directory, not a file: "),
    ("duplicate-id", json.dumps({**GOOD_LAST, "id": "g1"}).encode(), "duplicate_id",
     "duplicate id 'g1' (first used at "),
]


@pytest.mark.parametrize(("line", "reason", "fragment"), [c[1:] for c in ROW_CASES],
                         ids=[c[0] for c in ROW_CASES])
def test_bad_jsonl_row(tmp_path: Path, line: bytes, reason: str, fragment: str) -> None:
    path = write_rows(data_dir(tmp_path) / "train.jsonl", line)
    both_policies(lambda skipped: load_records(path, "vqa", skipped=skipped),
                  [(f"{path}:3", reason)], GOOD_IDS, fragment)


# ------------------------------------------------------------------ JSONL rows (generated)

# For each field: values that are wrong for it and the message they must give.
WRONG = {
    "question": [(None, "missing_field", "missing field 'question'"),
                 (7, "bad_field", "field 'question' must be a string, got int"),
                 ([], "bad_field", "field 'question' must be a string, got list"),
                 ("   ", "bad_field", "empty question")],
    "answers": [(None, "missing_field", "missing field 'answers' (or 'answer')"),
                ("red", "bad_field", "field 'answers' must be a non-empty list of strings"),
                ([], "bad_field", "field 'answers' must be a non-empty list of strings"),
                (["a", 3], "bad_field", "field 'answers' must be a non-empty list of strings"),
                (["a", " "], "bad_field", "field 'answers' item 1 is empty")],
    "image": [(None, "missing_field", "missing field 'image'"),
              (3.5, "bad_field", "field 'image' must be a non-empty string (a file path)"),
              ("", "bad_field", "field 'image' must be a non-empty string (a file path)")],
    "id": [(2.5, "bad_field", "field 'id' must be a non-empty string or an integer"),
           (False, "bad_field", "field 'id' must be a non-empty string or an integer"),
           ({"n": 1}, "bad_field", "field 'id' must be a non-empty string or an integer"),
           ("", "bad_field", "field 'id' must be a non-empty string or an integer")],
}


MUTATIONS = [(field, *wrong) for field in sorted(WRONG) for wrong in WRONG[field]]


def mutated_row(seed: int) -> tuple[bytes, str, str]:
    """A good row with mutation `seed` applied; the rest of the row (odd but valid unicode in
    the question, null or absent, escaped or raw UTF-8) is drawn from an RNG seeded by it."""
    field, value, reason, fragment = MUTATIONS[seed]
    rng = random.Random(seed)
    question = "".join(rng.choice("aé中🙂\u200f\u0301 ") for _ in range(8)) + "?"
    row: dict[str, Any] = {"id": f"m{seed}", "image": "img/a.png", "question": question,
                           "answers": ["x"]}
    row[field] = value
    if value is None and rng.random() < 0.5:
        del row[field]  # absent and null are the same "missing" to the loaders
    return json.dumps(row, ensure_ascii=rng.random() < 0.5).encode(), reason, fragment


@pytest.mark.parametrize("seed", range(len(MUTATIONS)),
                         ids=[f"{m[0]}={m[1]!r}" for m in MUTATIONS])
def test_generated_bad_row(tmp_path: Path, seed: int) -> None:
    line, reason, fragment = mutated_row(seed)
    path = write_rows(data_dir(tmp_path) / "train.jsonl", line)
    both_policies(lambda skipped: load_jsonl(path, "vqa", skipped=skipped),
                  [(f"{path}:3", reason)], GOOD_IDS, fragment)


def test_odd_but_valid_unicode_rows_are_kept(tmp_path: Path) -> None:
    data = data_dir(tmp_path)
    odd = {"id": "🙂", "image": "img/a.png", "question": "مرحبا \u200f e\u0301 中文?",
           "answers": ["ß", "\U0001F600"]}
    path = data / "train.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(odd).encode() + b"\n")  # with a BOM
    for skipped in (None, []):
        records = load_jsonl(path, "vqa", skipped=skipped)
        assert [(r.id, r.answers) for r in records] == [("🙂", ("ß", "\U0001F600"))]
        assert skipped in (None, [])


def test_caption_rows(tmp_path: Path) -> None:
    data = data_dir(tmp_path)
    path = data / "caps.jsonl"
    path.write_text('{"id": "c1", "image": "img/a.png", "caption": "a red square"}\n'
                    '{"id": "c2", "image": "img/a.png", "captions": ["ok", 5]}\n'
                    '{"id": "c3", "image": "img/b.png", "captions": ["blue"]}\n')
    both_policies(lambda skipped: load_records(path, "caption", skipped=skipped),
                  [(f"{path}:2", "bad_field")], ["c1", "c3"],
                  "field 'captions' must be a non-empty list of strings")


# ------------------------------------------------------------------ file-level problems


def test_file_level_problems_raise_under_skip(tmp_path: Path) -> None:
    data = data_dir(tmp_path)
    for path, fragment, reason in [
        (data / "nothere.jsonl", "nothere.jsonl: file not found", "bad_file"),
        (data / "img", "cannot read file", "bad_file"),  # a folder given as a JSONL file
    ]:
        with pytest.raises(DataError, match=fragment) as info:
            load_jsonl(path, "vqa", skipped=[])
        assert info.value.reason == reason
    every_row_bad = data / "bad.jsonl"
    every_row_bad.write_text('{"image": "img/a.png"}\n[1]\n')
    skipped: list = []
    with pytest.raises(DataError) as info:
        load_jsonl(every_row_bad, "vqa", skipped=skipped)
    assert str(info.value) == f"{every_row_bad}: no records (2 bad rows skipped)"
    assert info.value.reason == "no_records" and len(skipped) == 2


# ------------------------------------------------------------------ bad images


def noise(seed: int, size: tuple[int, int] = (64, 48), mode: str = "RGB") -> Image.Image:
    rng = random.Random(seed)
    return Image.frombytes(mode, size, rng.randbytes(size[0] * size[1] * len(mode)))


def encoded(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_header() -> bytes:
    """A 40-byte PNG that claims 20000x20000 pixels: PIL refuses it before decoding."""
    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b""))


def flip_byte(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1:]


JPEG = encoded(noise(1), "JPEG", quality=90)
PROGRESSIVE = encoded(noise(2), "JPEG", quality=90, progressive=True)
PNG = encoded(noise(3), "PNG")
BAD_IMAGES: list[tuple[str, str, Callable[[Path], None], str, str]] = [
    # (id, file name, write the bad file there, reason, message fragment)
    ("truncated-jpeg", "bad.jpg", lambda p: p.write_bytes(JPEG[: len(JPEG) // 2]),
     "image_unreadable", "image file is truncated"),
    ("jpeg-without-end-marker", "bad.jpg", lambda p: p.write_bytes(JPEG[:-2]),
     "image_unreadable", "image file is truncated"),
    ("truncated-progressive-jpeg", "bad.jpg", lambda p: p.write_bytes(PROGRESSIVE[:-100]),
     "image_unreadable", "image file is truncated"),
    ("truncated-png", "bad.png", lambda p: p.write_bytes(PNG[: len(PNG) // 2]),
     "image_unreadable", "Truncated File Read"),
    # the pixels of these two decode: verify() finds the damage
    ("png-without-iend", "bad.png", lambda p: p.write_bytes(PNG[:-12]), "image_unreadable",
     "truncated PNG file"),
    ("png-bad-crc", "bad.png", lambda p: p.write_bytes(flip_byte(PNG, len(PNG) // 2)),
     "image_unreadable", "broken PNG file (bad header checksum in b'IDAT')"),
    ("empty-file", "bad.png", lambda p: p.write_bytes(b""), "image_unreadable",
     "not an image format PIL can identify (or an empty file)"),
    ("text-named-png", "bad.png", lambda p: p.write_text("not an image\n"), "image_unreadable",
     "not an image format PIL can identify (or an empty file)"),
    ("jpeg-magic-then-garbage", "bad.jpg",
     lambda p: p.write_bytes(b"\xff\xd8\xff" + random.Random(4).randbytes(300)),
     "image_unreadable", "Truncated File Read"),
    ("directory-named-jpg", "bad.jpg", lambda p: p.mkdir(), "image_unreadable", "Is a directory"),
    ("decompression-bomb-header", "bad.png", lambda p: p.write_bytes(bomb_header()),
     "image_unreadable", "could be decompression bomb"),
]


@pytest.mark.parametrize(("name", "write", "reason", "fragment"), [c[1:] for c in BAD_IMAGES],
                         ids=[c[0] for c in BAD_IMAGES])
def test_bad_image(tmp_path: Path, name: str, write: Callable[[Path], None], reason: str,
                   fragment: str) -> None:
    """Rows 3 and 5 share the bad image: "error" names row 3, "skip" drops both."""
    data = data_dir(tmp_path)
    bad = data / "img" / name
    write(bad)
    path = data / "train.jsonl"
    rows = [GOOD_FIRST, None, {**GOOD_FIRST, "id": "x3", "image": f"img/{name}"}, GOOD_LAST,
            {**GOOD_LAST, "id": "x5", "image": f"img/{name}"}]
    path.write_text("".join((json.dumps(r) if r else "") + "\n" for r in rows))

    def load(skipped):
        return validate_images(load_jsonl(path, "vqa", check_images=False), skipped)

    both_policies(load, [(f"{path}:3", reason), (f"{path}:5", reason)], GOOD_IDS,
                  f"cannot read image {bad}: ", fragment)


def test_image_deleted_after_loading_is_not_found(tmp_path: Path) -> None:
    data = data_dir(tmp_path)
    write_image(data / "img" / "gone.png")
    path = write_rows(data / "train.jsonl", json.dumps({**GOOD_FIRST, "id": "x",
                                                        "image": "img/gone.png"}).encode())
    records = load_jsonl(path, "vqa")
    (data / "img" / "gone.png").unlink()
    both_policies(lambda skipped: validate_images(records, skipped),
                  [(f"{path}:3", "image_not_found")], GOOD_IDS, "No such file or directory")


def test_truncated_in_memory_image(tmp_path: Path) -> None:
    """HF rows hold images opened lazily from bytes: those are decoded too."""
    good = CaptionRecord("g", Image.open(io.BytesIO(PNG)), ("ok",), source="hf:x[train]#0")
    cut = CaptionRecord("c", Image.open(io.BytesIO(PNG[:300])), ("cut",), source="hf:x[train]#1")
    both_policies(lambda skipped: validate_images([good, cut], skipped),
                  [("hf:x[train]#1", "image_unreadable")], ["g"],
                  "cannot read image <in-memory image>: Truncated File Read")


def sixteen_bit() -> Image.Image:
    return Image.frombytes("I;16", (4, 4), struct.pack("<16H", *([32768] * 16)))


def with_transparency(image: Image.Image) -> Image.Image:
    image.info["transparency"] = 0
    return image


ODD_GOOD_IMAGES: list[tuple[str, Callable[[], Image.Image], str, tuple[int, int, int]]] = [
    # (id, image, file suffix, the pixel (0, 0) training sees)
    ("1x1", lambda: Image.new("RGB", (1, 1), (9, 8, 7)), ".png", (9, 8, 7)),
    ("16-bit-png", sixteen_bit, ".png", (128, 128, 128)),
    ("rgba-png", lambda: Image.new("RGBA", (4, 4), (0, 0, 255, 0)), ".png", (255, 255, 255)),
    ("cmyk-jpeg", lambda: Image.new("CMYK", (8, 8), (0, 0, 0, 255)), ".jpg", (0, 0, 0)),
    ("p-with-transparency", lambda: with_transparency(Image.new("P", (4, 4), 0)), ".png",
     (255, 255, 255)),
    ("1-bit-png", lambda: Image.new("1", (4, 4), 1), ".png", (255, 255, 255)),
    ("la-png", lambda: Image.new("LA", (4, 4), (0, 255)), ".png", (0, 0, 0)),
]


@pytest.mark.parametrize(("build", "suffix", "pixel"), [c[1:] for c in ODD_GOOD_IMAGES],
                         ids=[c[0] for c in ODD_GOOD_IMAGES])
def test_odd_good_image_is_kept(tmp_path: Path, build, suffix: str, pixel: tuple) -> None:
    data = data_dir(tmp_path)
    write_image(data / "img" / f"odd{suffix}", build())
    path = write_rows(data / "train.jsonl", json.dumps(
        {**GOOD_FIRST, "id": "odd", "image": f"img/odd{suffix}"}).encode())
    for skipped in (None, []):
        records = validate_images(load_jsonl(path, "vqa"), skipped)
        assert [r.id for r in records] == ["g1", "odd", "g4"] and not skipped
    got = load_image(records[1]).getpixel((0, 0))
    assert max(abs(a - b) for a, b in zip(got, pixel)) <= 2, got  # JPEG within a margin


# ------------------------------------------------------------------ VQAv2 and Karpathy


def vqav2_files(tmp_path: Path, question: dict | Any, annotation: dict | Any | None
                ) -> tuple[Path, Path, Path]:
    """Questions 0 and 2 are good; question 1 / annotation 1 are the case's."""
    images = tmp_path / "coco"
    for image_id in (1, 2, 3):
        write_image(images / f"COCO_val2014_{image_id:012d}.jpg")
    answers = [{"answer": "yes"}] * 3
    questions = [{"question_id": 10, "image_id": 1, "question": "Is it red?"}, question,
                 {"question_id": 30, "image_id": 3, "question": "Is it red?"}]
    annotations = [{"question_id": 10, "image_id": 1, "answers": answers}]
    if annotation is not None:
        annotations.append(annotation)
    annotations.append({"question_id": 30, "image_id": 3, "answers": answers})
    qfile = tmp_path / "questions.json"
    qfile.write_text(json.dumps({"data_subtype": "val2014", "questions": questions}))
    afile = tmp_path / "annotations.json"
    afile.write_text(json.dumps({"annotations": annotations}))
    return qfile, afile, images


Q = {"question_id": 20, "image_id": 2, "question": "Is it red?"}
A = {"question_id": 20, "image_id": 2, "answers": [{"answer": "no"}]}
VQAV2_CASES = [
    # (id, question 1, annotation 1, bad source key, reason, fragment)
    ("id-mismatch", Q, {**A, "image_id": 3}, "questions[1]", "id_mismatch",
     "question_id 20 is about image_id 2, but its annotation ({afile}:annotations[1]) has "
     "image_id 3"),
    ("id-mismatch-string", Q, {**A, "image_id": "2"}, "questions[1]", "id_mismatch",
     "has image_id '2'"),
    ("missing-annotation", Q, None, "questions[1]", "missing_annotation",
     "question_id 20 has no annotation in {afile} (questions: {qfile})"),
    ("question-not-object", [20, 2], A, "questions[1]", "not_an_object",
     "expected a JSON object, got list"),
    ("list-question-id", {**Q, "question_id": [20]}, A, "questions[1]", "bad_field",
     "field 'question_id' must be an integer or a string, got [20]"),
    ("string-image-id", {**Q, "image_id": "2"}, A, "questions[1]", "bad_field",
     "field 'image_id' must be an integer, got '2'"),
    ("answers-not-objects", Q, {**A, "answers": ["no"]}, "questions[1]", "bad_field",
     "the annotation of question_id 20 ({afile}:annotations[1]): field 'answers' must be"),
]


@pytest.mark.parametrize(("question", "annotation", "key", "reason", "fragment"),
                         [c[1:] for c in VQAV2_CASES], ids=[c[0] for c in VQAV2_CASES])
def test_bad_vqav2_question(tmp_path: Path, question, annotation, key: str, reason: str,
                            fragment: str) -> None:
    qfile, afile, images = vqav2_files(tmp_path, question, annotation)
    both_policies(lambda skipped: load_vqav2(qfile, afile, images, skipped=skipped),
                  [(f"{qfile}:{key}", reason)], ["10", "30"],
                  fragment.format(qfile=qfile, afile=afile))


def test_bad_vqav2_annotation_entries(tmp_path: Path) -> None:
    """A bad or duplicate annotation is a row of the annotation file; the question it would
    have answered then has no annotation."""
    qfile, afile, images = vqav2_files(tmp_path, Q, {"image_id": 2, "answers": []})
    both_policies(lambda skipped: load_vqav2(qfile, afile, images, skipped=skipped),
                  [(f"{afile}:annotations[1]", "missing_field"),
                   (f"{qfile}:questions[1]", "missing_annotation")],
                  ["10", "30"], "missing field 'question_id'")
    qfile, afile, images = vqav2_files(tmp_path, Q, {**A, "question_id": 10})
    both_policies(lambda skipped: load_vqav2(qfile, afile, images, skipped=skipped),
                  [(f"{afile}:annotations[1]", "duplicate_id"),
                   (f"{qfile}:questions[1]", "missing_annotation")],
                  ["10", "30"], f"second annotation for question_id 10 (first at {afile}")


KARPATHY_CASES = [
    ("entry-not-object", "just a string", "not_an_object", "expected a JSON object, got str"),
    ("no-split", {"filename": "b.png", "sentences": [{"raw": "x"}]}, "missing_field",
     "missing field 'split'"),
    ("filepath-not-string", {"filename": "b.png", "split": "train", "filepath": 5,
                             "sentences": [{"raw": "x"}]}, "bad_field",
     "field 'filepath' must be a string, got int"),
    ("sentences-not-objects", {"filename": "b.png", "split": "train", "sentences": ["x"]},
     "bad_field", "field 'sentences' must be a list of {'raw': ...} objects"),
]


@pytest.mark.parametrize(("entry", "reason", "fragment"), [c[1:] for c in KARPATHY_CASES],
                         ids=[c[0] for c in KARPATHY_CASES])
def test_bad_karpathy_entry(tmp_path: Path, entry, reason: str, fragment: str) -> None:
    write_image(tmp_path / "img" / "a.png")
    good = [{"filename": "a.png", "split": "train", "cocoid": n, "sentences": [{"raw": "red"}]}
            for n in (1, 3)]
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": [good[0], entry, good[1]]}))
    both_policies(lambda skipped: load_karpathy(path, tmp_path / "img", "train",
                                                skipped=skipped),
                  [(f"{path}:images[1]", reason)], ["1", "3"], fragment)
