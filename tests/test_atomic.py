"""Saves are atomic (issue 10, finding 4): a crash at any write of an adapter or backbone save
leaves the previous folder or the new one, byte for byte, never a mix, and no temporary folder
behind; `dept_vl.files` keeps the old version of a file or folder when its writer fails."""

import contextlib
import pathlib

import pytest
import torch
from transformers import T5ForConditionalGeneration

import dept_vl.files
import dept_vl.persistence
from conftest import tiny_model
from dept_vl import DePTConfig, VLT5
from dept_vl.files import atomic_dir, atomic_write_bytes, atomic_write_json, atomic_write_text


class Crash(Exception):
    """The simulated crash (a kill at that point of the save)."""


def snapshot(folder: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@contextlib.contextmanager
def crash_at_write(k: int, tokenizer_class: type):
    """Every function a save writes with counts as one write; the k-th raises Crash."""
    count = [0]

    def failing(original):
        def write(*args, **kwargs):
            count[0] += 1
            if count[0] == k:
                raise Crash(f"write {k}")
            return original(*args, **kwargs)
        return write

    targets = [(dept_vl.persistence, "save_file"), (pathlib.Path, "write_text"),
               (pathlib.Path, "write_bytes"), (T5ForConditionalGeneration, "save_pretrained"),
               (tokenizer_class, "save_pretrained"), (dept_vl.files, "replace_dir")]
    with pytest.MonkeyPatch.context() as patch:
        for owner, name in targets:
            patch.setattr(owner, name, failing(getattr(owner, name)))
        yield


def save_crashing_at_every_write(save, target: pathlib.Path, tokenizer_class: type,
                                 check) -> int:
    """Run `save` with a crash at write 1, 2, ... until it succeeds; after each crash `check`
    the target. Return how many crash points there were."""
    for k in range(1, 50):
        try:
            with crash_at_write(k, tokenizer_class):
                save()
        except Crash:
            check(k)
            assert sorted(p.name for p in target.parent.iterdir()) in ([], [target.name]), \
                f"crash at write {k} left {sorted(p.name for p in target.parent.iterdir())}"
            continue
        return k - 1
    raise AssertionError("the save never succeeded")


def adapter_model():
    """A model with adapter 'vqa' of non-trivial weights."""
    model = tiny_model("test_vit")
    model.base_model = "tiny"
    perturb(model.add_adapter("vqa", DePTConfig(prompt_length=3, rank=2, max_length=24,
                                                 alpha=8.0, task_prefix="vqa:")), seed=1)
    return model


def perturb(module: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=generator))


def replace_adapter(model: VLT5) -> None:
    """Same shapes (so a mix would load), other alpha and other weights."""
    model.delete_adapter("vqa")
    perturb(model.add_adapter("vqa", DePTConfig(prompt_length=3, rank=2, max_length=24,
                                                 alpha=4.0, task_prefix="vqa:")), seed=2)


@pytest.mark.parametrize("existing", [True, False], ids=["over-old-adapter", "new-folder"])
def test_adapter_save_crashing_at_each_write_leaves_old_or_new_adapter(tmp_path, existing):
    model = adapter_model()
    target = tmp_path / "runs" / "vqa"
    if existing:
        model.save_adapter("vqa", target)
    old = snapshot(target) if existing else None
    weights = {"old": model.adapters["vqa"].weights()}
    replace_adapter(model)
    weights["new"] = model.adapters["vqa"].weights()
    model.save_adapter("vqa", tmp_path / "reference")
    new = snapshot(tmp_path / "reference")
    loader = tiny_model("test_vit")

    def check(k):
        if not target.exists():
            assert not existing, f"crash at write {k} lost the old adapter"
            return
        files = snapshot(target)
        assert files in (old, new), f"crash at write {k} left a mixed adapter: {sorted(files)}"
        which = "new" if files == new else "old"
        meta, tensors = loader.read_adapter(target)
        assert meta["alpha"] == {"old": 8.0, "new": 4.0}[which]
        assert tensors.keys() == weights[which].keys()
        assert all(torch.equal(tensors[key], value) for key, value in weights[which].items())

    crashes = save_crashing_at_every_write(lambda: model.save_adapter("vqa", target), target,
                                           type(model.tokenizer), check)
    assert crashes >= 3  # config, weights, model card (and the swap)
    assert snapshot(target) == new
    assert loader.load_adapter(target, name="vqa") == "vqa"


def test_backbone_save_crashing_at_each_write_leaves_old_or_new_backbone(tmp_path):
    old_model = tiny_model("test_resnet", seed=0)
    new_model = tiny_model("test_resnet", seed=1)
    for model, tag in ((old_model, "old"), (new_model, "new")):
        model.base_model = "tiny"
        model.metadata = {"which": tag}
    target = tmp_path / "runs" / "backbone"
    old_model.save_pretrained(target)
    old = snapshot(target)
    new_model.save_pretrained(tmp_path / "reference")
    new = snapshot(tmp_path / "reference")
    fingerprints = {"old": old_model.backbone_fingerprint(),
                    "new": new_model.backbone_fingerprint()}
    assert fingerprints["old"] != fingerprints["new"]

    def check(k):
        files = snapshot(target)
        assert files in (old, new), f"crash at write {k} left a mixed backbone: {sorted(files)}"
        loaded = VLT5.from_pretrained(target)
        which = loaded.metadata["which"]
        assert loaded.backbone_fingerprint() == fingerprints[which]

    crashes = save_crashing_at_every_write(lambda: new_model.save_pretrained(target), target,
                                           type(new_model.tokenizer), check)
    assert crashes >= 6  # T5, tokenizer, vision config and weights, projection, manifest
    assert snapshot(target) == new
    assert VLT5.from_pretrained(target).metadata == {"which": "new"}


# ---------------------------------------------------------------------------- dept_vl.files
@pytest.mark.parametrize("write", [
    lambda path: atomic_write_bytes(path, b"new"),
    lambda path: atomic_write_text(path, "new"),
    lambda path: atomic_write_json(path, {"new": True}),
], ids=["bytes", "text", "json"])
def test_atomic_file_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch, write):
    target = tmp_path / "results.json"
    target.write_text("old")

    def crash(*_):
        raise Crash("disk full")

    monkeypatch.setattr(dept_vl.files.os, "fsync", crash)  # data written, not yet renamed
    with pytest.raises(Crash):
        write(target)
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary left
    write(target)
    assert target.read_text() != "old"


def test_atomic_dir_keeps_the_old_folder_when_the_block_or_the_swap_fails(tmp_path, monkeypatch):
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "a.txt").write_text("old")
    with pytest.raises(Crash):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("new")
            (tmp / "b.txt").write_text("new")
            raise Crash("killed halfway")
    assert snapshot(target) == {"a.txt": b"old"}

    def crash(*_):
        raise Crash("killed at the swap")

    monkeypatch.setattr(dept_vl.files, "replace_dir", crash)
    with pytest.raises(Crash):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("new")
    monkeypatch.undo()
    assert snapshot(target) == {"a.txt": b"old"}
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("new")
    assert snapshot(target) == {"b.txt": b"new"}  # the folder is replaced whole
