"""2-D grid positions in the visual projection: the tokens stop being a set (permuting the
grid changes the output), the fixed table is what it says, and backbones with positions save,
load and keep them (older backbones load without)."""

import json

import pytest
import torch

from conftest import tiny_model
from dept_vl import VLT5
from dept_vl.errors import BackboneError
from dept_vl.vision import VisualProjection, grid_positions


def test_the_fixed_table_encodes_row_and_column():
    table = grid_positions(3, 8)  # 3x3 grid, 8 channels: 4 for the row, 4 for the column
    assert table.shape == (9, 8)
    assert torch.equal(table[0, :4], table[2, :4])  # same row (0), other columns
    assert torch.equal(table[0, 4:], table[6, 4:])  # same column (0), other rows
    assert not torch.equal(table[1], table[3])  # (0, 1) and (1, 0) differ
    assert len({tuple(row.tolist()) for row in table}) == 9


@pytest.mark.parametrize("positions", ["sincos", "learned"])
def test_positions_make_the_projection_see_where_a_token_is(positions):
    torch.manual_seed(0)
    features = torch.randn(1, 16, 12)
    swapped = features[:, [1, 0, *range(2, 16)]]  # two neighbouring tokens trade places
    plain = VisualProjection(12, 8, num_tokens=16)
    placed = VisualProjection(12, 8, num_tokens=16, positions=positions)
    placed.load_state_dict({**placed.state_dict(), **plain.state_dict()})
    # without positions, swapping two tokens only swaps their outputs
    assert torch.allclose(plain(swapped)[:, [1, 0, *range(2, 16)]], plain(features))
    assert not torch.allclose(placed(swapped)[:, [1, 0, *range(2, 16)]], placed(features))
    trainable = [n for n, p in placed.named_parameters()]
    assert ("position" in trainable) == (positions == "learned")


def test_positions_need_a_known_grid():
    with pytest.raises(ValueError, match="num_visual_tokens"):
        VisualProjection(12, 8, positions="sincos")


@pytest.mark.parametrize("positions", ["sincos", "learned"])
def test_a_backbone_with_positions_saves_and_loads_them(tmp_path, positions):
    model = tiny_model(num_visual_tokens=4, visual_positions=positions).eval()
    model.save_pretrained(tmp_path / "backbone")
    manifest = json.loads((tmp_path / "backbone" / "dept_vl_backbone.json").read_text())
    assert manifest["visual_positions"] == positions
    loaded = VLT5.from_pretrained(tmp_path / "backbone").eval()
    assert loaded.projection.positions == positions
    assert torch.equal(loaded.projection.position, model.projection.position)
    features = torch.randn(2, 16, model.vision.feature_dim)
    assert torch.equal(loaded.projection(features), model.projection(features))


def test_an_older_backbone_loads_without_positions_and_a_bad_value_is_refused(tmp_path):
    tiny_model().save_pretrained(tmp_path / "backbone")
    file = tmp_path / "backbone" / "dept_vl_backbone.json"
    manifest = json.loads(file.read_text())
    del manifest["visual_positions"]
    file.write_text(json.dumps(manifest))
    assert VLT5.from_pretrained(tmp_path / "backbone").projection.positions == "none"
    file.write_text(json.dumps({**manifest, "visual_positions": "polar"}))
    with pytest.raises(BackboneError, match="visual_positions"):
        VLT5.from_pretrained(tmp_path / "backbone")


def test_an_adapter_on_a_backbone_with_positions_round_trips(tmp_path):
    from PIL import Image

    from dept_vl import DePTConfig

    model = tiny_model(num_visual_tokens=4, visual_positions="learned").eval()
    model.add_adapter("vqa", DePTConfig(prompt_length=3, rank=2, max_length=24, task="vqa"))
    with torch.no_grad():
        model.adapters["vqa"].projection.position.add_(0.5)  # as if trained
    model.save_adapter("vqa", tmp_path / "adapter")
    other = tiny_model(num_visual_tokens=4, visual_positions="learned").eval()
    other.load_adapter(tmp_path / "adapter", name="vqa")
    assert torch.equal(other.adapters["vqa"].projection.position,
                       model.adapters["vqa"].projection.position)
    image = Image.new("RGB", (32, 32), "red")
    assert (other.generate(images=[image], texts=["what color?"], adapter="vqa")
            == model.generate(images=[image], texts=["what color?"], adapter="vqa"))


def test_a_manifest_with_positions_but_no_grid_is_refused_naming_it(tmp_path):
    tiny_model(num_visual_tokens=4, visual_positions="sincos").save_pretrained(tmp_path / "b")
    file = tmp_path / "b" / "dept_vl_backbone.json"
    file.write_text(json.dumps({**json.loads(file.read_text()), "num_visual_tokens": None}))
    with pytest.raises(BackboneError, match=f"{file}.*num_visual_tokens"):
        VLT5.from_pretrained(tmp_path / "b")
