"""The built-in backbone: the packed format (every weight in one float16 safetensors file),
`pack_backbone` and its command, and the name `builtin` wherever a backbone is named.

No weights are shipped to these tests: `model_files.BUILTIN_DIR` is pointed at a tiny packed
backbone (or at an empty folder) in a temporary directory."""

import json
import tomllib
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import WORDS, tiny_model, tiny_t5_config
from test_model import batch_for, images
from dept_vl import VLT5, DePTConfig, model_files
from dept_vl.cli.builtin import main as pack_main
from dept_vl.builtin import pack_backbone
from dept_vl.training.config import TrainConfig
from dept_vl.demo import DemoService
from dept_vl.errors import BackboneError, one_line, run_cli
from dept_vl.cli.eval import main as evaluate_main
from dept_vl.model_files import BACKBONE_MANIFEST, PACKED_FP16, PACKED_WEIGHTS, resolve_backbone
from dept_vl.tokenization import build_word_tokenizer
from dept_vl.training.loop import backbone_missing
from dept_vl.vision import VisionConfig

REPO = Path(__file__).resolve().parent.parent
TIED = ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
        "lm_head.weight")
# float16 keeps 11 significant bits: each weight moves by at most 2**-11 of itself. Through the
# tiny model's dozen layers such errors add up to a few of those units in the logits (measured:
# about 1 unit, 0.002 on logits of size 5); 20 units still sits far below the distance to a
# model with other weights (logits differ by about 4).
TOLERANCE = 20 * 2.0 ** -11


def packed_pair(tmp_path: Path, vision: str = "test_vit", **kwargs) -> tuple[VLT5, Path]:
    """A tiny fp32 backbone (saved as usual) and the folder it packs into."""
    model = tiny_model(vision, num_visual_tokens=4, **kwargs).eval()
    model.metadata["pretrain_question_types"] = ["color"]
    model.save_pretrained(tmp_path / "source")
    return model, pack_backbone(tmp_path / "source", tmp_path / "packed")


def logits(model: VLT5, reference: VLT5) -> torch.Tensor:
    ids, mask, pixels = batch_for(reference, ["vqa: what color ?", "caption:"])
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=ids).logits


def file_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / PACKED_WEIGHTS)


@pytest.mark.parametrize("vision", ["test_vit", "test_resnet"])
def test_packed_backbone_is_one_float16_file_and_answers_as_the_original(tmp_path, vision):
    model, packed = packed_pair(tmp_path, vision)
    weights = sorted(p.relative_to(packed).as_posix() for p in packed.rglob("*.safetensors"))
    assert weights == [PACKED_WEIGHTS]
    assert not (packed / "projection.safetensors").exists()
    tensors = file_tensors(packed)
    assert {name.split(".")[0] for name in tensors} == {"t5", "vision", "projection"}
    assert {t.dtype for t in tensors.values() if t.is_floating_point()} == {torch.float16}
    manifest = json.loads((packed / BACKBONE_MANIFEST).read_text())
    assert manifest["weights"] == PACKED_FP16

    loaded = VLT5.from_pretrained(packed).eval()
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert loaded.metadata == {"pretrain_question_types": ["color"]}
    assert loaded.projection.num_tokens == 4
    original, rounded = logits(model, model), logits(loaded, model)
    assert not torch.equal(original, rounded)  # the weights really went through float16
    assert (original - rounded).abs().max() <= TOLERANCE * original.abs().max()
    other = logits(tiny_model(vision, num_visual_tokens=4, seed=1).eval(), model)
    assert (original - other).abs().max() > TOLERANCE * original.abs().max()
    questions = ["what color ?", "what shape is the object ?", "how many objects are there ?"]
    assert loaded.generate(images(3), questions) == model.generate(images(3), questions)


def test_manifest_fingerprint_is_the_loaded_models_and_adapters_trained_on_it_load(tmp_path):
    model, packed = packed_pair(tmp_path)
    manifest = json.loads((packed / BACKBONE_MANIFEST).read_text())
    loaded = VLT5.from_pretrained(packed)
    assert manifest["backbone_fingerprint"] == loaded.backbone_fingerprint()
    assert manifest["backbone_fingerprint"] != model.backbone_fingerprint()  # rounded weights
    loaded.add_adapter("vqa", DePTConfig(prompt_length=2, rank=2, max_length=24))
    loaded.save_adapter("vqa", tmp_path / "adapter")
    assert VLT5.from_pretrained(packed).load_adapter(tmp_path / "adapter", name="vqa") == "vqa"


def test_tied_t5_weights_are_stored_once_and_tied_again_on_load(tmp_path):
    model, packed = packed_pair(tmp_path)
    stored = [name for name in file_tensors(packed) if name.removeprefix("t5.") in TIED]
    assert stored == ["t5.shared.weight"]
    t5 = VLT5.from_pretrained(packed).t5
    shared = t5.shared.weight
    assert all(t5.get_parameter(name).data_ptr() == shared.data_ptr() for name in TIED)
    assert torch.equal(shared, model.t5.shared.weight.half().float())


def test_untied_t5_weights_are_each_stored_and_loaded_with_their_own_values(tmp_path):
    # with tie_word_embeddings false, transformers 5 unties lm_head and both embed_tokens
    tokenizer = build_word_tokenizer([WORDS])
    config = tiny_t5_config(tokenizer)
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    model = VLT5.from_components(config, VisionConfig("test_vit", image_size=32),
                                 tokenizer=tokenizer, max_text_length=24)
    with torch.no_grad():
        model.t5.lm_head.weight.mul_(-3.0)  # unlike the embedding in any case
    model.save_pretrained(tmp_path / "source")
    packed = pack_backbone(tmp_path / "source", tmp_path / "packed")
    state = model.t5.state_dict()
    expected = {n for n in TIED if all(state[n].data_ptr() != state[o].data_ptr()
                                       for o in TIED[:TIED.index(n)])}
    assert "lm_head.weight" in expected
    tensors = file_tensors(packed)
    assert {n.removeprefix("t5.") for n in tensors if n.removeprefix("t5.") in TIED} == expected
    loaded = VLT5.from_pretrained(packed).t5
    for name in TIED:
        assert torch.equal(loaded.get_parameter(name), state[name].half().float()), name


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[:200])


def _change(file: Path, edit) -> None:
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file)


def _scale_projection(tensors):
    name = next(n for n in sorted(tensors) if n.startswith("projection.") and "weight" in n)
    tensors[name] = tensors[name] * 2


@pytest.mark.parametrize("tamper, complaint", [
    (_truncate, r"model.safetensors: not a readable safetensors file"),
    (lambda f: _change(f, lambda t: t.pop("t5.shared.weight")),
     r"model.safetensors: missing tensors \[.*'t5.shared.weight'\]"),
    (lambda f: _change(f, lambda t: t.update(extra=torch.zeros(2, dtype=torch.float16))),
     r"model.safetensors: tensor extra is of no backbone part"),
    (lambda f: _change(f, lambda t: t["t5.shared.weight"].view(-1).__setitem__(0, float("nan"))),
     r"model.safetensors: tensor t5.shared.weight holds NaN"),
    (lambda f: _change(f, lambda t: t.update({"t5.shared.weight": t["t5.shared.weight"][:3]})),
     r"model.safetensors: tensor t5.shared.weight has shape \(3, 32\)"),
    (lambda f: _change(f, _scale_projection),
     r"backbone_fingerprint \w+ does not match the weights in \S+model.safetensors"),
], ids=["truncated", "missing", "extra", "nan", "shape", "values"])
def test_tampered_packed_weights_are_refused_naming_the_file(tmp_path, tamper, complaint):
    _, packed = packed_pair(tmp_path)
    tamper(packed / PACKED_WEIGHTS)
    with pytest.raises(BackboneError, match=complaint):
        VLT5.from_pretrained(packed)


def test_manifest_naming_another_weights_layout_is_refused_naming_file_and_key(tmp_path):
    _, packed = packed_pair(tmp_path)
    manifest = json.loads((packed / BACKBONE_MANIFEST).read_text())
    (packed / BACKBONE_MANIFEST).write_text(json.dumps({**manifest, "weights": "packed-bf16"}))
    with pytest.raises(BackboneError, match=r"dept_vl_backbone.json: weights: must be one of "
                                            r"\('packed-fp16',\), got 'packed-bf16'"):
        VLT5.from_pretrained(packed)


def test_weights_float16_cannot_hold_or_non_finite_are_never_packed(tmp_path):
    model = tiny_model("test_vit").eval()
    with torch.no_grad():
        model.projection.linear.weight[0, 0] = 1e5  # float16 tops out at 65504
    model.save_pretrained(tmp_path / "source")  # fine in float32
    with pytest.raises(BackboneError, match=r"projection.linear.weight reaches 100000, beyond "
                                            r"float16's range"):
        pack_backbone(tmp_path / "source", tmp_path / "packed")
    assert not (tmp_path / "packed").exists()
    with torch.no_grad():
        model.projection.linear.weight[0, 0] = float("inf")
    with pytest.raises(BackboneError, match="projection.linear.weight holds NaN or inf"):
        model.save_pretrained(tmp_path / "packed", packed=True)
    assert not (tmp_path / "packed").exists()


def _one_line_error(capsys, main, argv) -> str:
    assert run_cli(main, argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    return lines[0]


def test_builtin_without_weights_is_one_line_saying_how_to_build_it(tmp_path, monkeypatch,
                                                                    capsys):
    monkeypatch.setattr(model_files, "BUILTIN_DIR", tmp_path / "builtin")
    with pytest.raises(BackboneError) as error:
        VLT5.from_pretrained("builtin")
    message = one_line(error.value)
    assert message == str(error.value)
    assert message.startswith("the built-in backbone is not in this installation")
    assert "python -m dept_vl.builtin" in message
    for entry in (lambda: DemoService("builtin", {}),
                  lambda: backbone_missing(TrainConfig(backbone="builtin"))):
        with pytest.raises(BackboneError, match="not in this installation"):
            entry()
    line = _one_line_error(capsys, evaluate_main, ["--backbone", "builtin", "--data", "x.jsonl"])
    assert "built-in backbone is not in this installation" in line


def test_builtin_names_the_package_folder_and_loads_from_it(tmp_path, monkeypatch, capsys):
    assert model_files.BUILTIN_DIR == REPO / "dept_vl" / "builtin"
    model, packed = packed_pair(tmp_path)
    monkeypatch.setattr(model_files, "BUILTIN_DIR", packed)
    assert resolve_backbone("builtin") == packed
    assert resolve_backbone(Path("builtin")) == Path("builtin")  # a path is a path
    assert resolve_backbone("./builtin") == Path("builtin")
    loaded = VLT5.from_pretrained("builtin")
    assert loaded.base_model == "builtin"  # what adapters trained on it record
    assert loaded.backbone_fingerprint() == VLT5.from_pretrained(packed).backbone_fingerprint()
    assert not backbone_missing(TrainConfig(backbone="builtin"))
    data = tmp_path / "data.jsonl"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "red.png")
    data.write_text(json.dumps({"image": "red.png", "question": "what color ?",
                                "answer": "red"}) + "\n")
    evaluate_main(["--backbone", "builtin", "--data", str(data)])
    assert json.loads(capsys.readouterr().out)["num_questions"] == 1


def test_pack_command_writes_the_card_and_defaults_to_the_package_folder(tmp_path, monkeypatch,
                                                                        capsys):
    model = tiny_model("test_resnet").eval()
    model.save_pretrained(tmp_path / "source")
    (tmp_path / "card.md").write_text("# built-in backbone\n\nfingerprint: see the manifest\n")
    monkeypatch.setattr(model_files, "BUILTIN_DIR", tmp_path / "package" / "builtin")
    pack_main([str(tmp_path / "source"), "--card", str(tmp_path / "card.md")])
    out = tmp_path / "package" / "builtin"
    assert (out / "README.md").read_text() == (tmp_path / "card.md").read_text()
    assert f"packed {tmp_path / 'source'} into {out}" in capsys.readouterr().out
    assert VLT5.from_pretrained("builtin").vision.config.model_name == "test_resnet"
    pack_main([str(tmp_path / "source"), "--out", str(tmp_path / "elsewhere")])
    assert not (tmp_path / "elsewhere" / "README.md").exists()
    with safe_open(tmp_path / "elsewhere" / PACKED_WEIGHTS, "pt") as f:
        assert f.get_tensor("t5.shared.weight").dtype == torch.float16
    line = _one_line_error(capsys, pack_main, [str(tmp_path / "source"), "--out",
                                               str(tmp_path / "x"), "--card", "nope.md"])
    assert "nope.md: the model card cannot be read" in line
    with pytest.raises(SystemExit) as done:
        pack_main(["--help"])
    assert done.value.code == 0 and "--card" in capsys.readouterr().out


def test_pack_with_corpus_writes_a_card_with_zero_shot_accuracy_per_type(
        tmp_path, backbone, corpus_dir, capsys):
    pack_main([backbone, "--out", str(tmp_path / "b"), "--corpus", corpus_dir])
    card = (tmp_path / "b" / "README.md").read_text()
    packed = VLT5.from_pretrained(tmp_path / "b")
    assert f"`{packed.backbone_fingerprint()}`" in card
    assert "4 steps" in card and "color, shape, exists" in card  # from the run's eval_results
    assert "python -m dept_vl.builtin runs/backbone-shapes/model --corpus" in card
    from dept_vl.builtin import zero_shot
    measured = zero_shot(packed, Path(corpus_dir))
    for split, metrics in measured.items():
        row = next(line for line in card.splitlines() if line.startswith(f"| {split} "))
        assert f"| {metrics['vqa_accuracy']:.1f} |" in row
        assert f"| {metrics['vqa_accuracy_by_type']['count']:.1f} |" in row
    assert "count (reserved)" in card
    line = _one_line_error(capsys, pack_main, [backbone, "--out", str(tmp_path / "c"),
                                               "--corpus", str(tmp_path / "no-corpus")])
    assert "no-corpus" in line


def test_every_file_of_a_packed_backbone_is_package_data(tmp_path):
    # a regular (non-editable) install ships only what pyproject's package-data names
    _, packed = packed_pair(tmp_path)
    (packed / "README.md").write_text("card")
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text()
                             )["tool"]["setuptools"]["package-data"]["dept_vl"]
    shipped = {p for pattern in patterns for p in tmp_path.glob(pattern.replace("builtin",
                                                                                "packed", 1))}
    written = {p for p in packed.rglob("*") if p.is_file()}
    assert written and written <= shipped, sorted(str(p) for p in written - shipped)
