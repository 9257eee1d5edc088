"""`datasets` rows stay in their memory-mapped arrow table (dept_vl/data/table_images.py): the
records hold no image bytes, pickle cheaply for DataLoader workers, decode exactly like the
eager path, and bad images are still found before training by validate_images."""

from __future__ import annotations

import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dept_vl.data.formats import hf as hf_format
from dept_vl.data.formats import load_records
from dept_vl.data.image_files import load_image, validate_images
from dept_vl.data.records import CaptionRecord
from dept_vl.data.bad_data import DataError, skip_summary
from dept_vl.data.table_images import EncodedImage, ImageColumn, TableImage

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
datasets = pytest.importorskip("datasets")


@pytest.fixture(autouse=True)
def hf_cache(tmp_path: Path, monkeypatch) -> None:
    """`datasets`' cache inside tmp_path, so tests leave nothing behind."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    datasets.disable_progress_bars()


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def noise(seed: int, size: tuple[int, int] = (96, 64), mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], len(mode)), np.uint8).squeeze(),
                           mode)


def varied_images() -> list[bytes]:
    """Modes with their own conversion rules (dept_vl/images.py), PNG and JPEG."""
    grey16 = Image.frombytes("I;16", (4, 4), struct.pack("<16H", *range(0, 65535, 4096)))
    keyed = Image.new("P", (5, 5), 1)
    keyed.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    return [
        encoded(noise(0), "PNG"),
        encoded(noise(1, mode="RGBA"), "PNG"),
        encoded(grey16, "PNG"),
        encoded(keyed, "PNG", transparency=1),
        encoded(noise(2, mode="L"), "JPEG", quality=90),
        encoded(noise(3), "JPEG", quality=75),
        encoded(noise(4, (300, 200)), "PNG"),
    ]


def write_parquet(path: Path, images: list[bytes], names: list[str | None] | None = None) -> Path:
    names = names or [None] * len(images)
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": n} for b, n in zip(images, names)],
         "caption": [f"caption {k}" for k in range(len(images))]},
        features=features,
    ).to_parquet(str(path))
    return path


def eager(data: bytes) -> Image.Image:
    """What a record of an image opened from its bytes decodes to (the pre-lazy path)."""
    return load_image(CaptionRecord("e", Image.open(io.BytesIO(data)), ("x",)))


def collate_pixels(batch: list[CaptionRecord]) -> dict:
    """Module level so spawned workers can unpickle it; hands the records back like VLCollator."""
    pixels = [torch.from_numpy(np.array(load_image(r).resize((8, 8)))) for r in batch]
    return {"pixels": torch.stack(pixels), "records": batch}


# ------------------------------------------------------------------ loading


def test_parquet_rows_load_as_table_images_without_bytes(tmp_path: Path, monkeypatch) -> None:
    images = varied_images()
    monkeypatch.setattr(hf_format, "_HF_BATCH", 3)  # rows cross arrow batch boundaries
    path = write_parquet(tmp_path / "caps.parquet", images)
    records = load_records(path, "caption")
    assert [r.captions for r in records] == [(f"caption {k}",) for k in range(len(images))]
    for row, (record, data) in enumerate(zip(records, images)):
        assert isinstance(record.image, TableImage) and record.image.row == row
        assert not any(isinstance(v, (bytes, bytearray, Image.Image)) for v in vars(record).values())
        assert record.image_bytes() == data  # the right row, read on demand
        assert record.image_key == f"{record.image.images.prefix}#{row}"
    assert len({r.image_key for r in records}) == len(images)
    again = load_records(path, "caption")
    assert [r.image_key for r in again] == [r.image_key for r in records]  # stable across loads


def test_table_images_decode_identically_to_the_eager_path(tmp_path: Path) -> None:
    images = varied_images()
    records = load_records(write_parquet(tmp_path / "caps.parquet", images), "caption")
    for record, data in zip(records, images):
        lazy, reference = load_image(record), eager(data)
        assert lazy.mode == "RGB" and lazy.size == reference.size
        assert lazy.tobytes() == reference.tobytes()


def test_pickled_records_name_the_arrow_file_not_the_images(tmp_path: Path) -> None:
    images = [encoded(noise(k, (224, 224)), "PNG") for k in range(20)]  # ~150 KB each
    records = load_records(write_parquet(tmp_path / "big.parquet", images), "caption")
    one = pickle.dumps(records[0])
    every = pickle.dumps(records)
    assert images[0] not in one and len(one) < 8_000
    assert len(every) < 20_000 < sum(map(len, images)) // 100  # the column is pickled once
    back = pickle.loads(every)
    assert back == records and back[0].image.images is records[0].image.images  # reused here
    assert [r.image_bytes() for r in back] == images


def test_in_memory_dataset_pickles_each_rows_bytes_not_the_table() -> None:
    images = [encoded(noise(k, (64, 64)), "PNG") for k in range(30)]
    table = datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in images]},
        features=datasets.Features({"image": datasets.Image()}))
    assert not table.cache_files  # held in memory: pickling it would copy every image
    column = ImageColumn(table, "image", table._fingerprint)
    image = TableImage(column, 7)
    pickled = pickle.dumps(image)
    assert len(pickled) < len(images[7]) + 1_000
    back = pickle.loads(pickled)
    assert isinstance(back, EncodedImage) and back == image and back.read_bytes() == images[7]


# ------------------------------------------------------------------ validation


def corrupt_rows(tmp_path: Path) -> Path:
    good = encoded(noise(5), "PNG")
    return write_parquet(tmp_path / "mixed.parquet", [good, good[:200], good, b"not an image"],
                         [None, "cut.png", None, None])


def test_validation_names_the_dataset_and_row_of_a_corrupt_image(tmp_path: Path) -> None:
    path = corrupt_rows(tmp_path)
    records = load_records(path, "caption")  # loading reads no image bytes
    with pytest.raises(DataError, match=rf"^hf:{path}\[train\]#1: cannot read image cut\.png") as e:
        validate_images(records)
    assert e.value.reason == "image_unreadable"


def test_validation_skips_and_counts_corrupt_rows_and_keeps_nothing_decoded(tmp_path: Path) -> None:
    path = corrupt_rows(tmp_path)
    skipped: list = []
    records = load_records(path, "caption", skipped=skipped)
    kept = validate_images(records, skipped=skipped)
    assert [r.image.row for r in kept] == [0, 2]
    assert [e["source"] for e in skipped] == [f"hf:{path}[train]#1", f"hf:{path}[train]#3"]
    assert "cannot read image <embedded bytes>" in skipped[1]["error"]
    assert skip_summary(skipped) == {"total": 2, "by_reason": {"image_unreadable": 2}}
    assert all(isinstance(r.image, TableImage) for r in kept)  # still references, not pixels


# ------------------------------------------------------------------ DataLoader workers


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_dataloader_workers_read_table_images(tmp_path: Path, start: str) -> None:
    images = varied_images()
    records = load_records(write_parquet(tmp_path / "caps.parquet", images), "caption")
    expected = collate_pixels(records)["pixels"]
    loader = DataLoader(records, batch_size=2, num_workers=2, collate_fn=collate_pixels,
                        multiprocessing_context=start)
    batches = list(loader)
    assert torch.equal(torch.cat([b["pixels"] for b in batches]), expected)
    returned = [r for b in batches for r in b["records"]]
    assert returned == records
    assert all(r.image.images is records[0].image.images for r in returned)  # not re-opened


def test_a_dataset_datasets_keeps_in_memory_loads_and_pickles_per_row(tmp_path: Path,
                                                                      monkeypatch) -> None:
    """`datasets` keeps datasets under IN_MEMORY_MAX_SIZE in memory (no arrow file to name)."""
    images = varied_images()
    path = write_parquet(tmp_path / "caps.parquet", images)
    monkeypatch.setattr(datasets.config, "IN_MEMORY_MAX_SIZE", 10**9)
    records = load_records(path, "caption")
    assert not records[0].image.images.memory_mapped
    back = pickle.loads(pickle.dumps(records))
    assert [type(r.image) for r in back] == [EncodedImage] * len(images)
    assert [load_image(r).tobytes() for r in back] == [eager(b).tobytes() for b in images]


def test_the_feature_cache_keys_and_encodes_dataset_rows(tmp_path: Path) -> None:
    from conftest import tiny_model
    from dept_vl.feature_cache import FeatureCache

    model = tiny_model().eval()
    images = varied_images()
    records = load_records(write_parquet(tmp_path / "caps.parquet", images), "caption")
    cache = FeatureCache(tmp_path / "cache", model.vision, dtype="float32")
    assert cache.build([r.image for r in records], batch_size=3) == len(images)
    assert cache.build([r.image for r in records], batch_size=3) == 0  # fresh by their keys
    with torch.no_grad():
        expected = model.vision(model.vision.preprocess([eager(d) for d in images]))
    # other batch shapes than the build's: equal to float rounding
    assert torch.allclose(cache.features([r.image for r in records]), expected, atol=1e-5)
