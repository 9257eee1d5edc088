"""The feature cache: equal to the encoder, never stale (changed image, other encoder), and
training with it follows the same loss curve as training without."""

import csv
import shutil

import pytest

from dept_vl.errors import run_cli
import torch
from PIL import Image

from conftest import split, tiny_model, write_config
from dept_vl.features import main as features_main
from dept_vl.train import main
from dept_vl.vision import FeatureCache, encoder_fingerprint


def make_images(folder, n=5):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i}.png"
        Image.new("RGB", (32, 32), (40 * i, 200 - 30 * i, 90)).save(path)
        paths.append(str(path))
    return paths


def test_cached_features_equal_the_encoder(tmp_path):
    model = tiny_model("test_vit").eval()
    paths = make_images(tmp_path / "img")
    cache = FeatureCache(tmp_path / "cache", model.vision)
    assert cache.build(paths, batch_size=2) == 5
    assert cache.build(paths) == 0  # nothing to do the second time
    with torch.no_grad():
        direct = model.vision(model.vision.preprocess([Image.open(p) for p in paths]))
    torch.testing.assert_close(cache.features(paths), direct, atol=1e-5, rtol=1e-5)
    # a new process (new object) reads the same index back
    again = FeatureCache(tmp_path / "cache", model.vision)
    torch.testing.assert_close(again.features(paths[::-1]), direct.flip(0), atol=1e-5, rtol=1e-5)


def test_changed_image_is_never_served_stale(tmp_path):
    model = tiny_model("test_vit").eval()
    paths = make_images(tmp_path / "img")
    cache = FeatureCache(tmp_path / "cache", model.vision)
    cache.build(paths)
    old = cache.features(paths[:1])
    Image.new("RGB", (32, 32), (255, 255, 255)).save(paths[0])  # new content
    with pytest.raises(KeyError, match="no fresh cached features"):
        cache.features(paths[:1])
    assert cache.build(paths) == 1  # only the changed image is encoded again
    new = cache.features(paths[:1])
    assert not torch.allclose(new, old)
    with torch.no_grad():
        expected = model.vision(model.vision.preprocess([Image.open(paths[0])]))
    torch.testing.assert_close(new, expected, atol=1e-5, rtol=1e-5)
    # same bytes, new mtime (a copy over itself): still fresh, nothing re-encoded
    shutil.copyfile(paths[1], tmp_path / "copy.png")
    shutil.copyfile(tmp_path / "copy.png", paths[1])
    assert cache.is_fresh(paths[1]) and cache.build(paths) == 0


def test_another_encoder_gets_another_cache(tmp_path):
    paths = make_images(tmp_path / "img", 2)
    first = FeatureCache(tmp_path / "cache", tiny_model("test_vit", seed=0).vision)
    first.build(paths)
    other = FeatureCache(tmp_path / "cache", tiny_model("test_vit", seed=1).vision)
    assert other.dir != first.dir
    assert encoder_fingerprint(tiny_model("test_vit", seed=0).vision) == first.fingerprint
    with pytest.raises(KeyError):
        other.features(paths)


def test_training_with_cached_features_follows_the_same_loss_curve(tmp_path, corpus_dir,
                                                                   backbone):
    losses = {}
    for cached in (False, True):
        out = tmp_path / f"cached-{cached}"
        config = write_config(
            tmp_path / f"c{cached}.yaml", method="dept", backbone=backbone, output_dir=str(out),
            train_file=split(corpus_dir, "train", "vqa"), test_file=split(corpus_dir, "test", "vqa"),
            prompt_length=4, rank=2, max_length=24, max_steps=6, batch_size=8, logging_steps=1,
            warmup_steps=1, save_steps=100, seed=3, cache_features=cached,
            feature_cache_dir=str(tmp_path / "cache"))
        main(["--config", config])
        with open(out / "logs" / "metrics.csv") as f:
            losses[cached] = [float(r["value"]) for r in csv.DictReader(f)
                              if r["name"] == "train/loss"]
    assert len(list((tmp_path / "cache").glob("*/features-*.safetensors"))) == 1  # it was used
    assert len(losses[True]) == 6
    assert losses[True] == pytest.approx(losses[False], rel=1e-4, abs=1e-5)


def test_features_cli_fills_the_cache(tmp_path, corpus_dir, backbone, capsys):
    code = features_main(["--backbone", backbone, "--data", f"{corpus_dir}/val_vqa.jsonl",
                          "--cache-dir", str(tmp_path / "cache")])
    assert code == 0 and "images encoded" in capsys.readouterr().out
    assert run_cli(features_main, ["--backbone", backbone, "--data",
                                   str(tmp_path / "none.jsonl")]) == 2
