"""Transfer from source adapters: exactly the chosen parts, refused mismatches, the s rule,
source selection by score, and the weighted average."""

import logging

import pytest
import torch

from conftest import tiny_model
from dept_vl import AdapterMismatchError, DePTConfig
from dept_vl.training.rules import ConfigError
from dept_vl.training.transfer import expand_sources, initialize, loss_weights

CFG = DePTConfig(prompt_length=3, rank=2, max_length=24, task_prefix="vqa:")


def saved_source(tmp_path, name, config=CFG, fill=None, model=None):
    """An adapter with recognisable random weights, saved to tmp_path/name."""
    model = model or tiny_model("test_vit")
    adapter = model.add_adapter(name, config)
    with torch.no_grad():
        for i, param in enumerate(adapter.parameters()):
            param.copy_(torch.full_like(param, fill) if fill is not None
                        else torch.randn_like(param) + i)
    model.save_adapter(name, tmp_path / name)
    return tmp_path / name, adapter.weights()


@pytest.mark.parametrize("parts", [["prompt"], ["lowrank"], ["projection"],
                                   ["prompt", "lowrank", "projection"]])
def test_transfer_copies_exactly_the_selected_parts(tmp_path, parts):
    path, source = saved_source(tmp_path, "src")
    model = tiny_model("test_vit")
    target = model.add_adapter("tgt", CFG, generator=torch.Generator().manual_seed(1))
    fresh = target.weights()
    report = initialize(model, "tgt", path, parts)
    assert report["selected"] == str(path)
    groups = {"prompt": ("prompt_embeddings",), "lowrank": ("lowrank_A", "lowrank_B")}
    after = target.weights()
    for key in after:
        part = next((p for p, keys in groups.items() if key in keys), "projection")
        expected = source[key] if part in parts else fresh[key]
        assert torch.equal(after[key], expected), (key, parts)


def test_mismatched_shapes_are_refused_with_the_mismatch_named(tmp_path):
    path, _ = saved_source(tmp_path, "src")
    model = tiny_model("test_vit")
    model.add_adapter("longer", DePTConfig(prompt_length=5, rank=2, max_length=24))
    with pytest.raises(AdapterMismatchError, match=r"tensor prompt_embeddings \(prompt\) has shape \(3, 32\) in the source, the "
                                                   r"target's is \(5, 32\)"):
        initialize(model, "longer", path, ["prompt"])
    initialize(model, "longer", path, ["lowrank"])  # m does not matter without the prompt
    model.add_adapter("wider", DePTConfig(prompt_length=3, rank=4, max_length=24))
    with pytest.raises(AdapterMismatchError, match=r"tensor lowrank_A \(lowrank\) has shape \(24, 2\) in the source, the "
                                                   r"target's is \(24, 4\)"):
        initialize(model, "wider", path, ["lowrank"])
    model.add_adapter("noproj", CFG, train_projection=False)
    with pytest.raises(AdapterMismatchError, match="no visual projection"):
        initialize(model, "noproj", path, ["projection"])
    other_width = tiny_model("test_vit", d_model=48)
    other_width.add_adapter("tgt", CFG)
    with pytest.raises(AdapterMismatchError, match="d_model=32.*d_model=48"):
        initialize(other_width, "tgt", path)
    other_backbone = tiny_model("test_vit", seed=5)
    other_backbone.add_adapter("tgt", CFG)
    with pytest.raises(AdapterMismatchError, match="fingerprint"):
        initialize(other_backbone, "tgt", path)
    with pytest.raises(ValueError, match="init_parts"):
        initialize(model, "longer", path, ["bias"])


@pytest.mark.parametrize("target_s", [16, 24, 30])
def test_other_max_length_truncates_or_zero_extends_a_with_a_warning(tmp_path, caplog, target_s):
    path, source = saved_source(tmp_path, "src")  # s = 24
    model = tiny_model("test_vit")
    target = model.add_adapter("tgt", DePTConfig(prompt_length=3, rank=2, max_length=target_s))
    with caplog.at_level(logging.WARNING, logger="dept_vl.training.transfer"):
        initialize(model, "tgt", path, ["lowrank"])
    a = target.tuner.lowrank_A.detach()
    rows = min(24, target_s)
    assert torch.equal(a[:rows], source["lowrank_A"][:rows])
    assert torch.count_nonzero(a[rows:]) == 0
    assert torch.equal(target.tuner.lowrank_B.detach(), source["lowrank_B"])
    warned = [r.getMessage() for r in caplog.records]
    if target_s == 24:
        assert not warned
    else:
        assert any(("truncated" if target_s < 24 else "zero-extended") in m for m in warned)


def test_several_sources_pick_the_lowest_score_and_log_every_score(tmp_path):
    model = tiny_model("test_vit")
    paths = {fill: saved_source(tmp_path, f"src{i}", fill=fill, model=model)[0]
             for i, fill in enumerate([0.5, 2.0, -1.0])}
    target = model.add_adapter("tgt", CFG)
    fresh = target.weights()

    def score():  # the source whose prompt is nearest 1.8 "fits the target" best
        return float((target.tuner.prompt_embeddings.detach() - 1.8).abs().mean())

    report = initialize(model, "tgt", list(paths.values()), select="best", score=score)
    assert report["selected"] == str(paths[2.0])
    assert set(report["scores"]) == {"scratch", *map(str, paths.values())}
    assert report["scores"]["scratch"] == pytest.approx(
        float((fresh["prompt_embeddings"] - 1.8).abs().mean()))
    assert torch.all(target.tuner.prompt_embeddings == 2.0)
    with pytest.raises(ValueError, match="need a score"):
        initialize(model, "tgt", list(paths.values()))


def test_average_weights_sources_by_softmax_of_negative_loss(tmp_path):
    model = tiny_model("test_vit")
    low, _ = saved_source(tmp_path, "low", fill=0.0, model=model)
    high, _ = saved_source(tmp_path, "high", fill=3.0, model=model)
    target = model.add_adapter("tgt", CFG)
    losses = iter([9.0, 1.0, 2.0])  # scratch, low, high
    report = initialize(model, "tgt", [low, high], select="average", score=lambda: next(losses))
    weights = loss_weights([1.0, 2.0], temperature=1.0)
    assert report["weights"] == {str(low): pytest.approx(weights[0]),
                                 str(high): pytest.approx(weights[1])}
    expected = weights[1] * 3.0
    assert torch.allclose(target.tuner.prompt_embeddings, torch.full((3, 32), expected))


def test_a_folder_of_adapters_expands_to_each_of_them(tmp_path):
    for name in ("b", "a"):
        saved_source(tmp_path / "sources", name)
    assert [p.name for p in expand_sources(tmp_path / "sources")] == ["a", "b"]
    with pytest.raises(ConfigError, match="holds none"):
        expand_sources(tmp_path / "nothing")
