"""The feature cache: equal to the encoder (pooled, at the stored dtype's precision), never stale
(changed image, other encoder or settings), written in bounded shards, resumable after a kill,
built by several processes into one index; training with it follows the same loss curve."""

import csv
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import split, write_config
from PIL import Image
from safetensors import safe_open

from dept_vl.errors import run_cli
from dept_vl.cli.features import main as features_main
from dept_vl.cli.train import main
from dept_vl.vision import ImageEncoder, VisionConfig, VisualProjection
from dept_vl.feature_cache import FeatureCache

ROW_BYTES_F16 = 4 * 64 * 2  # test_vit at 64 px pooled to 4 tokens: 4 x 64 features, fp16


class Killed(Exception):
    pass


def make_images(folder, n=5):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i}.png"
        Image.new("RGB", (32, 32), (40 * i, 200 - 30 * i, 90)).save(path)
        paths.append(str(path))
    return paths


def encoder(seed=0, image_size=64):
    torch.manual_seed(seed)
    return ImageEncoder(VisionConfig(model_name="test_vit", image_size=image_size)).eval()


def direct(vision, paths, pool_tokens=None):
    """What the model computes without a cache: the encoder, then the projection's pooling."""
    with torch.no_grad():
        grid = vision(vision.preprocess([Image.open(p) for p in paths]))
    return VisualProjection(vision.feature_dim, 8, pool_tokens).pool(grid)


def shard_files(cache):
    return sorted(cache.dir.glob("features-*.safetensors"))


@pytest.mark.parametrize("pool_tokens", [None, 4])
def test_float32_cache_is_exactly_the_encoder(tmp_path, pool_tokens):
    vision, paths = encoder(), make_images(tmp_path / "img")
    cache = FeatureCache(tmp_path / "cache", vision, pool_tokens=pool_tokens, dtype="float32")
    assert cache.build(paths, batch_size=5) == 5
    assert cache.build(paths) == 0  # nothing to do the second time
    expected = direct(vision, paths, pool_tokens)
    assert expected.shape[1] == (pool_tokens or 16)
    assert cache.features(paths).dtype == torch.float32
    assert torch.equal(cache.features(paths), expected)
    # a new process (new object) reads the same index back
    again = FeatureCache(tmp_path / "cache", vision, pool_tokens=pool_tokens, dtype="float32")
    assert torch.equal(again.features(paths[::-1]), expected.flip(0))


def test_float16_cache_is_the_pooled_encoder_within_half_precision(tmp_path):
    vision, paths = encoder(), make_images(tmp_path / "img")
    cache = FeatureCache(tmp_path / "cache", vision, pool_tokens=4)  # float16 by default
    cache.build(paths, batch_size=2)
    with safe_open(shard_files(cache)[0], "pt") as shard:
        assert shard.get_slice("features").get_dtype() == "F16"
    cached, expected = cache.features(paths), direct(vision, paths, 4)
    assert cached.dtype == torch.float32 and cached.shape == expected.shape == (5, 4, 64)
    torch.testing.assert_close(cached, expected.half().float(), rtol=0, atol=0)
    torch.testing.assert_close(cached, expected, rtol=1e-3, atol=1e-3)
    # the model's projection passes an already pooled grid through unchanged
    assert torch.equal(VisualProjection(64, 8, 4).pool(cached), cached)


def test_shards_roll_over_at_shard_mb(tmp_path):
    vision, paths = encoder(), make_images(tmp_path / "img", 7)
    cache = FeatureCache(tmp_path / "cache", vision, pool_tokens=4,
                         shard_mb=2 * ROW_BYTES_F16 / 2**20)  # two images a shard
    cache.build(paths, batch_size=3)  # batches straddle shards
    files = shard_files(cache)
    rows = []
    for file in files:
        with safe_open(file, "pt") as shard:
            rows.append(shard.get_slice("features").get_shape()[0])
        assert file.stat().st_size <= 2 * ROW_BYTES_F16 + 256  # rows + header
    assert sorted(rows) == [1, 2, 2, 2]
    assert {e["shard"] for e in cache.index.values()} == {f.name for f in files}
    assert not list(cache.dir.glob(".*.tmp")) and not list(cache.dir.glob(cache.PARTS))
    torch.testing.assert_close(cache.features(paths), direct(vision, paths, 4),
                               rtol=1e-3, atol=1e-3)


def test_a_killed_build_keeps_its_shards_and_the_next_encodes_the_rest(tmp_path, monkeypatch):
    vision, paths = encoder(), make_images(tmp_path / "img", 6)
    settings = {"pool_tokens": 4, "dtype": "float32", "shard_mb": 2 * 2 * ROW_BYTES_F16 / 2**20}
    cache = FeatureCache(tmp_path / "cache", vision, **settings)
    forward, calls, killed = vision.forward, [], []

    def killed_after_first_shard(pixels):
        calls.append(len(pixels))
        if len(calls) == 2 and not killed:
            killed.append(True)
            raise Killed  # the build dies while filling its second shard
        return forward(pixels)

    monkeypatch.setattr(vision, "forward", killed_after_first_shard)
    with pytest.raises(Killed):
        cache.build(paths, batch_size=2)
    assert len(shard_files(cache)) == 1 and not list(cache.dir.glob(".*.tmp"))
    # a new build (new process) sees the finished shard and encodes only the other 4 images
    calls.clear()
    resumed = FeatureCache(tmp_path / "cache", vision, **settings)
    assert [resumed.is_fresh(p) for p in paths] == [True, True] + [False] * 4
    assert resumed.build(paths, batch_size=2) == 4 and sum(calls) == 4
    assert len(shard_files(resumed)) == 3 and not list(resumed.dir.glob(resumed.PARTS))
    monkeypatch.undo()
    assert torch.equal(resumed.features(paths), direct(vision, paths, 4))


def test_changed_image_is_never_served_stale(tmp_path):
    vision, paths = encoder(), make_images(tmp_path / "img")
    cache = FeatureCache(tmp_path / "cache", vision, dtype="float32")
    cache.build(paths)
    old = cache.features(paths[:1])
    Image.new("RGB", (32, 32), (255, 255, 255)).save(paths[0])  # new content
    with pytest.raises(KeyError, match="no fresh cached features"):
        cache.features(paths[:1])
    assert cache.build(paths) == 1  # only the changed image is encoded again
    new = cache.features(paths[:1])
    assert not torch.allclose(new, old)
    torch.testing.assert_close(new, direct(vision, paths[:1]), atol=1e-5, rtol=1e-5)
    # same bytes, new mtime (a copy over itself): still fresh, nothing re-encoded
    shutil.copyfile(paths[1], tmp_path / "copy.png")
    shutil.copyfile(tmp_path / "copy.png", paths[1])
    assert cache.is_fresh(paths[1]) and cache.build(paths) == 0


def test_another_encoder_or_setting_gets_another_cache(tmp_path):
    paths = make_images(tmp_path / "img", 2)
    first = FeatureCache(tmp_path / "cache", encoder(seed=0))
    first.build(paths)
    others = [FeatureCache(tmp_path / "cache", encoder(seed=1)),
              FeatureCache(tmp_path / "cache", encoder(seed=0), pool_tokens=4),
              FeatureCache(tmp_path / "cache", encoder(seed=0), dtype="float32")]
    assert len({first.dir, *(other.dir for other in others)}) == 4
    assert FeatureCache(tmp_path / "cache", encoder(seed=0)).fingerprint == first.fingerprint
    for other in others:
        with pytest.raises(KeyError):
            other.features(paths)
    with pytest.raises(ValueError, match="dtype"):
        FeatureCache(tmp_path / "cache", encoder(), dtype="bfloat8")


def test_training_with_cached_features_follows_the_same_loss_curve(tmp_path, corpus_dir,
                                                                   backbone):
    losses = {}
    for cached in (False, True):
        out = tmp_path / f"cached-{cached}"
        config = write_config(
            tmp_path / f"c{cached}.yaml", method={"name": "dept", "prompt_length": 4, "rank": 2},
            backbone=backbone, output_dir=str(out),
            train_file=split(corpus_dir, "train", "vqa"), test_file=split(corpus_dir, "test", "vqa"),
            max_length=24, max_steps=6, batch_size=8, logging_steps=1,
            warmup_steps=1, save_steps=100, seed=3, cache_features=cached,
            feature_cache_dir=str(tmp_path / "cache"), feature_cache_dtype="float32")
        main(["--config", config])
        with open(out / "logs" / "metrics.csv") as f:
            losses[cached] = [float(r["value"]) for r in csv.DictReader(f)
                              if r["name"] == "train/loss"]
    assert len(list((tmp_path / "cache").glob("*/features-*.safetensors"))) == 1  # it was used
    assert len(losses[True]) == 6
    assert losses[True] == pytest.approx(losses[False], rel=1e-4, abs=1e-5)


def test_features_cli_fills_the_cache(tmp_path, corpus_dir, backbone, capsys):
    code = features_main(["--backbone", backbone, "--data", f"{corpus_dir}/val_vqa.jsonl",
                          "--cache-dir", str(tmp_path / "cache"), "--dtype", "float32",
                          "--shard-mb", "0.001"])
    out = capsys.readouterr().out
    assert code == 0 and "images encoded" in out and "images/s" in out
    assert len(list((tmp_path / "cache").glob("*/features-*.safetensors"))) > 1
    assert run_cli(features_main, ["--backbone", backbone, "--data",
                                   str(tmp_path / "none.jsonl")]) == 2


def cached_by_image(cache_dir, backbone):
    """{image: features} of the one cache folder under `cache_dir`, read back through the API."""
    from dept_vl.model import VLT5

    model = VLT5.from_pretrained(backbone)
    cache = FeatureCache(cache_dir, model.vision, pool_tokens=model.projection.num_tokens,
                         dtype="float32")
    assert [p.parent for p in cache_dir.glob("*/index.json")] == [cache.dir]
    return {image: cache.features([image]) for image in sorted(cache.index)}, cache


def test_two_processes_build_one_index_equal_to_one_process(tmp_path, corpus_dir, backbone):
    args = ["-m", "dept_vl.cli.features", "--backbone", backbone, "--data",
            f"{corpus_dir}/val_vqa.jsonl", "--dtype", "float32", "--batch-size", "2",
            "--shard-mb", "0.001"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", *args, "--cache-dir", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=300, check=False)
    assert two.returncode == 0, two.stderr[-3000:]
    assert features_main([*args[2:], "--cache-dir", str(tmp_path / "one")]) == 0
    one_features, _ = cached_by_image(tmp_path / "one", backbone)
    two_features, two_cache = cached_by_image(tmp_path / "two", backbone)
    assert list(two_features) == list(one_features) and len(one_features) > 2
    for image, value in one_features.items():
        torch.testing.assert_close(two_features[image], value, rtol=1e-5, atol=1e-6)
    shards = {entry["shard"] for entry in two_cache.index.values()}
    assert {name.split("-")[1] for name in shards} == {"r0", "r1"}  # each rank its share
    assert not list(two_cache.dir.glob(two_cache.PARTS))  # merged into index.json
