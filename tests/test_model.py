"""VLT5: freezing, forward / generate, dynamic padding, adapters and backbone save / load."""

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from conftest import tiny_model
from dept_vl import AdapterMismatchError, DePTConfig, VLT5
from dept_vl.errors import BackboneError, UserError, one_line
from dept_vl.vision import ImageEncoder, VisionConfig

CFG = DePTConfig(prompt_length=3, rank=2, max_length=24, task_prefix="vqa:")


def images(n=3, size=32):
    colors = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
    return [Image.new("RGB", (size, size), colors[i % 4]) for i in range(n)]


def batch_for(model, texts, max_length=None, pad_to=None):
    enc = model.tokenizer(texts, padding="max_length" if pad_to else "longest",
                          max_length=pad_to, truncation=True, return_tensors="pt")
    pixels = model.vision.preprocess(images(len(texts)))
    return enc["input_ids"], enc["attention_mask"], pixels


@pytest.mark.parametrize("vision", ["test_vit", "test_resnet"])
def test_forward_loss_and_generate_strings(vision):
    model = tiny_model(vision)
    model.add_adapter("vqa", CFG)
    ids, mask, pixels = batch_for(model, ["vqa: what color is the circle ?", "vqa: how many ?"])
    labels = model.tokenizer(["red", "two"], return_tensors="pt", padding=True)["input_ids"]
    out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=labels)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    answers = model.generate(images(2), ["what color is it ?", "is there a circle ?"], adapter="vqa")
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    with pytest.raises(ValueError, match="empty"):
        model.generate(images(1), ["  "], adapter="vqa")


def test_only_adapter_parameters_change_and_backbone_is_bit_identical():
    model = tiny_model("test_resnet")  # BatchNorm: its running statistics must not drift
    adapter = model.add_adapter("vqa", CFG)
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("adapters.")}
    adapter_before = {k: v.clone() for k, v in adapter.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in adapter.parameters()}
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    model.train()
    assert not model.t5.training and not model.vision.training
    ids, mask, pixels = batch_for(model, ["vqa: what color is the circle ?", "vqa: is there a red"])
    labels = model.tokenizer(["red", "yes"], return_tensors="pt", padding=True)["input_ids"]
    for _ in range(3):
        loss = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=labels,
                     adapter="vqa").loss
        loss.backward()
        for name, param in adapter.named_parameters():
            if name != "tuner.lowrank_A" or _ > 0:  # A has no gradient while B is still 0
                assert param.grad is not None and param.grad.abs().sum() > 0, name
        optimizer.step()
        optimizer.zero_grad()
    after = {k: v for k, v in model.state_dict().items() if not k.startswith("adapters.")}
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), f"backbone tensor {key} changed"
    assert any(not torch.equal(adapter_before[k], v) for k, v in adapter.state_dict().items())


def test_dynamic_padding_equals_padding_to_max_length():
    model = tiny_model("test_vit").eval()
    adapter = model.add_adapter("vqa", CFG)
    torch.nn.init.normal_(adapter.tuner.lowrank_B)  # make A·B matter
    texts = ["vqa: what color is the small red circle ?", "vqa: how many ?"]
    labels = model.tokenizer(["red", "two"], return_tensors="pt", padding=True)["input_ids"]
    ids, mask, pixels = batch_for(model, texts)
    ids_s, mask_s, _ = batch_for(model, texts, pad_to=CFG.max_length)
    assert ids_s.shape[1] == 24 > ids.shape[1]
    with torch.no_grad():
        dyn = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=labels,
                    adapter="vqa")
        full = model(input_ids=ids_s, attention_mask=mask_s, pixel_values=pixels, labels=labels,
                     adapter="vqa")
        inputs_dyn, mask_dyn = model.build_inputs(ids, mask, pixels, adapter="vqa")
        inputs_full, mask_full = model.build_inputs(ids_s, mask_s, pixels, adapter="vqa")
    torch.testing.assert_close(dyn.logits, full.logits, atol=1e-5, rtol=1e-5)
    # encoder states agree on every real (unmasked) token
    n = int(mask_dyn.sum(1).max())
    real = mask_dyn[:, :n].bool()
    enc_dyn = dyn.encoder_last_hidden_state[:, :n][real]
    enc_full = full.encoder_last_hidden_state[:, :n][mask_full[:, :n].bool()]
    torch.testing.assert_close(enc_dyn, enc_full, atol=1e-5, rtol=1e-5)
    assert torch.equal(inputs_dyn[:, :n][real], inputs_full[:, :n][mask_full[:, :n].bool()])


def test_each_example_is_independent_of_its_batch():
    model = tiny_model("test_vit").eval()
    model.add_adapter("vqa", CFG)
    texts = ["vqa: what color is the small red circle ?", "vqa: how many ?"]
    together = model.generate(images(2), [t.removeprefix("vqa: ") for t in texts], adapter="vqa",
                              max_new_tokens=4)
    alone = model.generate(images(2)[1:], [texts[1].removeprefix("vqa: ")], adapter="vqa",
                           max_new_tokens=4)
    assert together[1] == alone[0]


def test_adapter_disabled_equals_base_model():
    model = tiny_model("test_vit").eval()
    ids, mask, pixels = batch_for(model, ["vqa: what color ?"])
    labels = model.tokenizer(["red"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        base = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=labels,
                     adapter=None).logits
        model.add_adapter("vqa", CFG)
        off = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=labels,
                    adapter=None).logits
        on = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=labels,
                   adapter="vqa").logits
    assert torch.equal(base, off)
    assert not torch.allclose(base, on)


def test_adapter_save_load_round_trip_gives_identical_generations(tmp_path):
    model = tiny_model("test_vit").eval()
    adapter = model.add_adapter("vqa", CFG)
    with torch.no_grad():
        torch.nn.init.normal_(adapter.tuner.lowrank_B)
        adapter.projection.linear.weight.mul_(1.5)
    questions = ["what color is the circle ?", "how many objects are there ?", "is there a red ?"]
    expected = model.generate(images(3), questions, adapter="vqa")
    model.save_adapter("vqa", tmp_path / "vqa", metrics={"vqa_accuracy": 1.0})
    meta = json.loads((tmp_path / "vqa" / "adapter_config.json").read_text())
    assert meta["method"] == "dept" and meta["prompt_length"] == 3 and meta["rank"] == 2
    assert meta["d_model"] == 32  # its own projection: the base one is not part of its fingerprint
    assert meta["backbone_fingerprint"] == model.backbone_fingerprint(projection=False)
    assert (tmp_path / "vqa" / "README.md").read_text().startswith("# dept_vl adapter")

    fresh = tiny_model("test_vit").eval()  # same seed: same backbone weights
    name = fresh.load_adapter(tmp_path / "vqa", name="vqa")
    assert name == "vqa"
    assert fresh.generate(images(3), questions, adapter="vqa") == expected
    for key, value in adapter.state_dict().items():
        assert torch.equal(value, fresh.adapters["vqa"].state_dict()[key])
    # a loaded adapter can be trained further
    assert all(p.requires_grad for p in fresh.adapters["vqa"].parameters())


def test_adapter_for_another_backbone_is_refused(tmp_path):
    model = tiny_model("test_vit")
    model.add_adapter("vqa", CFG)
    model.save_adapter("vqa", tmp_path / "vqa")
    other_weights = tiny_model("test_vit", seed=1)
    with pytest.raises(AdapterMismatchError, match="fingerprint"):
        other_weights.load_adapter(tmp_path / "vqa")
    assert other_weights.load_adapter(tmp_path / "vqa", strict=False) == "vqa"
    other_width = tiny_model("test_vit", d_model=48)
    with pytest.raises(AdapterMismatchError, match="d_model=32.*d_model=48"):
        other_width.load_adapter(tmp_path / "vqa")
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        model.load_adapter(tmp_path)


def test_named_adapters_switch_and_delete():
    model = tiny_model("test_vit")
    model.add_adapter("vqa", CFG)
    model.add_adapter("caption", DePTConfig(prompt_length=2, rank=1, max_length=24,
                                            task_prefix="caption:"))
    assert model.active_adapter == "vqa"
    model.set_adapter("caption")
    assert model.adapter_task("caption") == "caption"
    captions = model.generate(images(2), adapter="caption", num_beams=2, max_new_tokens=5)
    assert len(captions) == 2
    with pytest.raises(KeyError, match="no adapter named 'nope'"):
        model.set_adapter("nope")
    with pytest.raises(ValueError, match="already exists"):
        model.add_adapter("vqa", CFG)
    model.delete_adapter("caption")
    assert model.active_adapter == "vqa"


def test_backbone_save_and_from_pretrained_round_trip(tmp_path):
    model = tiny_model("test_resnet", num_visual_tokens=1).eval()
    model.metadata["pretrain_question_types"] = ["color"]
    model.save_pretrained(tmp_path / "bb")
    loaded = VLT5.from_pretrained(tmp_path / "bb").eval()
    assert loaded.backbone_fingerprint() == model.backbone_fingerprint()
    assert loaded.metadata == {"pretrain_question_types": ["color"]}
    assert loaded.projection.num_tokens == 1
    ids, mask, pixels = batch_for(model, ["vqa: what color ?"])
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=ids).logits
        b = loaded(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=ids).logits
    assert torch.equal(a, b)
    assert not any(p.requires_grad for p in loaded.parameters())
    with pytest.raises(BackboneError, match="not a dept_vl backbone"):
        VLT5.from_pretrained(tmp_path)


def test_components_from_local_t5_directory_and_timm_weights_file(tmp_path):
    """The path a user takes with real checkpoints: a T5 directory and local timm weights."""
    donor = tiny_model("test_vit")
    donor.t5.save_pretrained(tmp_path / "t5")
    donor.tokenizer.save_pretrained(tmp_path / "t5")
    save_file({k: v.contiguous() for k, v in donor.vision.model.state_dict().items()},
              tmp_path / "vit.safetensors")
    model = VLT5.from_components(
        str(tmp_path / "t5"), "test_vit", image_size=32,
        weights_file=str(tmp_path / "vit.safetensors"), num_visual_tokens=4,
    )
    assert model.base_model == str(tmp_path / "t5")
    for key, value in donor.vision.model.state_dict().items():
        assert torch.equal(model.vision.model.state_dict()[key], value)
    for key, value in donor.t5.state_dict().items():
        assert torch.equal(model.t5.state_dict()[key], value)
    features = model.encode_images(model.vision.preprocess(images(1)))
    assert model.projection(features).shape == (1, 4, 32)


def test_vision_encoder_drops_prefix_tokens_and_flattens_grids():
    vit = tiny_model("test_vit").vision
    resnet = tiny_model("test_resnet").vision
    pixels = vit.preprocess(images(2))
    assert vit(pixels).shape[1] == 4  # 32 px / patch 16 → 2x2, class token dropped
    assert resnet(resnet.preprocess(images(2))).dim() == 3
    assert VisionConfig("test_vit", image_size=32).to_dict()["image_size"] == 32


def test_adapter_file_with_a_wrong_tensor_shape_is_refused_and_not_left_loaded(tmp_path):
    from safetensors.torch import load_file

    model = tiny_model("test_vit")
    model.add_adapter("vqa", CFG)
    model.save_adapter("vqa", tmp_path / "vqa")
    tensors = load_file(tmp_path / "vqa" / "adapter_model.safetensors")
    tensors["lowrank_B"] = torch.zeros(2, 7)
    save_file(tensors, tmp_path / "vqa" / "adapter_model.safetensors")
    fresh = tiny_model("test_vit")
    with pytest.raises(AdapterMismatchError,
                       match=r"adapter_model.safetensors: tensor lowrank_B has shape \(2, 7\)"):
        fresh.load_adapter(tmp_path / "vqa", name="vqa")
    assert "vqa" not in fresh.adapters


# ---------------------------------------------------------------------------- damaged files
def saved_adapter(path):
    model = tiny_model("test_vit")
    model.add_adapter("vqa", CFG)
    model.save_adapter("vqa", path)
    return model


def edit_json(file, **changes):
    values = json.loads(file.read_text())
    values.update(changes)
    file.write_text(json.dumps(values))


def test_adapter_with_a_nan_weight_is_never_saved_and_the_old_one_stays(tmp_path):
    model = saved_adapter(tmp_path / "vqa")
    before = (tmp_path / "vqa" / "adapter_model.safetensors").read_bytes()
    with torch.no_grad():
        model.adapters["vqa"].tuner.lowrank_B[0, 0] = float("nan")
    with pytest.raises(UserError, match=r"adapter 'vqa': tensor lowrank_B holds NaN or inf"):
        model.save_adapter("vqa", tmp_path / "vqa")
    assert (tmp_path / "vqa" / "adapter_model.safetensors").read_bytes() == before
    with pytest.raises(UserError, match="lowrank_B"):
        model.save_adapter("vqa", tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()


def test_adapter_config_that_would_not_load_back_cannot_be_built():
    with pytest.raises(ValueError, match=r"DePTConfig: alpha: must be > 0"):
        DePTConfig(prompt_length=3, rank=2, max_length=24, alpha=0.0)


def test_adapter_file_with_non_finite_weights_is_refused_naming_file_and_tensor(tmp_path):
    from safetensors.torch import load_file

    model = saved_adapter(tmp_path / "vqa")
    file = tmp_path / "vqa" / "adapter_model.safetensors"
    tensors = load_file(file)
    tensors["prompt_embeddings"][1, 2] = float("inf")
    save_file(tensors, file)
    with pytest.raises(UserError, match=r"adapter_model.safetensors: tensor prompt_embeddings "
                                        r"holds NaN or inf"):
        model.load_adapter(tmp_path / "vqa", name="again")
    assert "again" not in model.adapters


@pytest.mark.parametrize("changes, complaint", [
    ({"alpha": "8"}, r"DePTConfig: alpha: expected float, got '8'"),
    ({"rank": -1}, r"DePTConfig: rank: must be >= 0, got -1"),
    ({"task": "ocr"}, r"DePTConfig: task: unknown task 'ocr'"),
], ids=["alpha-string", "negative-rank", "unknown-task"])
def test_hand_edited_adapter_config_is_refused_naming_file_and_key(tmp_path, changes, complaint):
    model = saved_adapter(tmp_path / "vqa")
    edit_json(tmp_path / "vqa" / "adapter_config.json", **changes)
    with pytest.raises(UserError, match=r"adapter_config.json: " + complaint):
        model.load_adapter(tmp_path / "vqa", name="again")


def test_adapter_config_without_a_key_names_the_key_not_a_bare_key_error(tmp_path):
    model = saved_adapter(tmp_path / "vqa")
    file = tmp_path / "vqa" / "adapter_config.json"
    values = json.loads(file.read_text())
    del values["max_length"]
    file.write_text(json.dumps(values))
    with pytest.raises(UserError, match=r"adapter_config.json: missing key 'max_length'"):
        model.load_adapter(tmp_path / "vqa")


def test_truncated_adapter_weights_are_refused_naming_the_file(tmp_path):
    model = saved_adapter(tmp_path / "vqa")
    file = tmp_path / "vqa" / "adapter_model.safetensors"
    file.write_bytes(file.read_bytes()[:-40])
    with pytest.raises(UserError) as error:
        model.load_adapter(tmp_path / "vqa")
    assert str(file) in one_line(error.value)
    assert isinstance(error.value, ValueError)  # callers' `except ValueError` still catches it


def test_adapter_of_another_method_than_its_weights_is_refused(tmp_path):
    model = saved_adapter(tmp_path / "vqa")
    edit_json(tmp_path / "vqa" / "adapter_config.json", method="lora", lora_rank=8,
              lora_alpha=16, lora_dropout=0.0, target_modules=["q", "v"])
    with pytest.raises(AdapterMismatchError, match=r"adapter_model.safetensors: missing tensors "
                                                   r"\['t5\.decoder.*unexpected \['lowrank_A'"):
        model.load_adapter(tmp_path / "vqa", name="again")
    assert "again" not in model.adapters
    assert model.backbone_fingerprint() == tiny_model("test_vit").backbone_fingerprint()


def test_save_never_replaces_a_folder_of_other_files(tmp_path):
    model = tiny_model("test_vit")
    model.add_adapter("vqa", CFG)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds other files"):
        model.save_adapter("vqa", tmp_path)
    with pytest.raises(UserError, match="holds other files"):
        model.save_pretrained(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_damaged_backbone_files_are_backbone_errors_naming_the_file(tmp_path):
    tiny_model("test_resnet").save_pretrained(tmp_path / "bb")
    projection = tmp_path / "bb" / "projection.safetensors"
    projection.write_bytes(projection.read_bytes()[:100])
    with pytest.raises(BackboneError, match="projection.safetensors: not a readable safetensors"):
        VLT5.from_pretrained(tmp_path / "bb")
    (tmp_path / "bb" / "vision" / "config.json").write_text("")
    with pytest.raises(BackboneError, match=r"vision/config.json: the file is empty"):
        VLT5.from_pretrained(tmp_path / "bb")


def test_backbone_whose_files_come_from_two_saves_is_refused(tmp_path):
    tiny_model("test_vit", seed=0).save_pretrained(tmp_path / "a")
    tiny_model("test_vit", seed=1).save_pretrained(tmp_path / "b")
    (tmp_path / "a" / "model.safetensors").write_bytes(
        (tmp_path / "b" / "model.safetensors").read_bytes())
    with pytest.raises(BackboneError, match="dept_vl_backbone.json: backbone_fingerprint"):
        VLT5.from_pretrained(tmp_path / "a")


def test_t5_neither_local_nor_reachable_is_one_backbone_error_line():
    # the suite runs without hub access (conftest sets HF_HUB_OFFLINE=1)
    with pytest.raises(BackboneError) as error:
        VLT5.from_components("t5-base", "test_vit")
    message = one_line(error.value)
    assert message.startswith("T5 't5-base' is neither a local directory nor reachable")
    assert "point `t5:`" in message and "save_pretrained" in message


@pytest.mark.parametrize("config, complaint", [
    (VisionConfig("vit_nope_patch16"), "unknown timm model 'vit_nope_patch16'"),
    (VisionConfig("test_vit", pretrained=True), "timm model 'test_vit' is not in the local cache"),
    (VisionConfig("test_vit", weights_file="/nonexistent/vit.safetensors"),
     "weights_file /nonexistent/vit.safetensors does not exist"),
], ids=["unknown-model", "hub-unreachable", "weights-file-missing"])
def test_timm_model_that_cannot_be_built_is_a_backbone_error(config, complaint):
    with pytest.raises(BackboneError, match=complaint) as error:
        ImageEncoder(config)
    assert "weights_file" in str(error.value) or "list_models" in str(error.value)


def test_timm_weights_file_of_another_model_is_refused_not_silently_random(tmp_path):
    resnet = tiny_model("test_resnet").vision.model
    save_file({k: v.contiguous() for k, v in resnet.state_dict().items()},
              tmp_path / "resnet.safetensors")
    with pytest.raises(BackboneError, match=r"resnet.safetensors lacks \d+ of the model's"):
        ImageEncoder(VisionConfig("test_vit", weights_file=str(tmp_path / "resnet.safetensors")))
