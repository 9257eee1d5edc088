"""Gradient checkpointing (`gradient_checkpointing: true`, `VLT5.enable_gradient_checkpointing`):
T5 recomputes its blocks in backward, with the same loss and gradients for every method (the
prompt, DePT's A/B, ADePT's offset network, LoRA's weights, the visual projection, all weights
for `full`), also while a frozen T5 stays in eval mode (no dropout), and generation unchanged."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import WORDS, small_block, tiny_model, tiny_t5_config

from dept_vl.training.config import TrainConfig
from dept_vl.model import VLT5
from dept_vl.training.taskdata import TaskData
from dept_vl.tokenization import build_word_tokenizer
from dept_vl.training.setup import setup_method
from dept_vl.vision import VisionConfig

METHODS = ("dept", "pt", "adept", "lora", "full")
QUESTIONS = ["vqa: what color is the circle ?", "vqa: how many objects are there ?",
             "vqa: is there a red square ?"]
ANSWERS = ["red", "two", "yes"]
# Compared in float64: in float32 a recomputed backward that adds up the gradients of shared
# tensors (the tied embedding, the position bias every block reuses) in another order differs
# by rounding (up to 2e-6 for `full`); in float64 the two agree to 1e-14.
TIGHT = {"atol": 1e-10, "rtol": 1e-10}


def set_up(model: VLT5, method: str, checkpointing: bool = False, **keys) -> list:
    """The run's `setup_method` for `method` on `model`, in float64; every trainable weight
    moved off its initial value (zero-initialised halves, DePT's and LoRA's B, would hide
    their partners)."""
    cfg = TrainConfig(method=small_block(method), max_length=24,
                      gradient_checkpointing=checkpointing, **keys)
    task = TaskData(name="vqa", kind="vqa", adapter="vqa", spec={})
    groups = setup_method(model, cfg, [task])
    noise = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in (p for g in groups for p in g["params"]):
            param.add_(0.3 * torch.randn(param.shape, generator=noise, dtype=param.dtype))
    model.to(torch.float64)
    return groups


def batch(model: VLT5) -> dict[str, torch.Tensor]:
    encoded = model.tokenize(QUESTIONS)
    labels = model.tokenize(ANSWERS)["input_ids"]
    labels[labels == model.tokenizer.pad_token_id] = -100
    pixels = torch.rand(len(QUESTIONS), 3, 32, 32, generator=torch.Generator().manual_seed(2),
                        dtype=torch.float64)
    return {**encoded, "labels": labels, "pixel_values": pixels}


class BlockCalls:
    """Calls of every T5 block's first sub-layer: a checkpointed block runs it again in
    backward (forward hooks on the block itself would not see the recompute)."""

    def __init__(self, model: VLT5):
        self.count = 0
        self.handles = [block.layer[0].register_forward_hook(self.hook)
                        for stack in (model.t5.encoder, model.t5.decoder) for block in stack.block]

    def hook(self, *_) -> None:
        self.count += 1


def step(model: VLT5, data: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """One forward + backward in train mode: the loss, every trainable weight's gradient, and
    how many block sub-layers ran during backward (recomputed)."""
    model.train()
    model.zero_grad(set_to_none=True)
    calls = BlockCalls(model)
    loss = model(**data).loss
    before = calls.count
    loss.backward()
    for handle in calls.handles:
        handle.remove()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, calls.count - before


@pytest.mark.parametrize("method", METHODS)
def test_same_loss_and_gradients_with_recomputation(method):
    model = tiny_model("test_vit")
    set_up(model, method)
    data = batch(model)
    loss, grads, recomputed = step(model, data)
    assert recomputed == 0
    model.enable_gradient_checkpointing()
    loss_ckpt, grads_ckpt, recomputed = step(model, data)
    assert recomputed == 2 * 2  # every block of the 2-layer encoder and decoder, once more
    torch.testing.assert_close(loss_ckpt, loss, **TIGHT)
    assert grads_ckpt.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, **TIGHT, msg=name)
    # every trained part learns: the projection, and each method's own weights
    reached = {name for name, grad in grads_ckpt.items() if grad.abs().sum() > 0}
    assert reached == set(grads_ckpt)
    parts = {"dept": ("prompt_embeddings", "lowrank_A", "lowrank_B"),
             "pt": ("prompt_embeddings",),
             "adept": ("prompt_embeddings", "offset_in", "offset_out"),
             "lora": ("encoder.block.0.layer.0.SelfAttention.q.lora_A",
                      "decoder.block.1.layer.0.SelfAttention.v.lora_B"),
             "full": ("t5.encoder.block.0", "t5.decoder.block.1", "vision.")}[method]
    projection = "projection." if method == "full" else "adapters.vqa.projection."
    for part in (*parts, projection):
        assert any(part in name for name in reached), (part, sorted(reached))


def test_lora_without_trainable_inputs_still_learns():
    """The reentrant-checkpoint pitfall: with a frozen projection no block input needs a
    gradient, yet LoRA's weights inside the blocks must still get theirs."""
    model = tiny_model("test_vit")
    set_up(model, "lora", train_projection=False)
    data = batch(model)
    _, grads, _ = step(model, data)
    model.enable_gradient_checkpointing()
    _, grads_ckpt, recomputed = step(model, data)
    assert recomputed > 0 and grads and all("lora_" in name for name in grads)
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grads_ckpt[name], grad, **TIGHT, msg=name)


def dropout_model() -> VLT5:
    torch.manual_seed(0)
    tokenizer = build_word_tokenizer([WORDS])
    config = tiny_t5_config(tokenizer)
    config.dropout_rate = 0.3  # the tests' backbone has none
    return VLT5.from_components(config, VisionConfig(model_name="test_vit", image_size=32),
                                tokenizer=tokenizer, max_text_length=24)


def test_a_frozen_backbone_checkpoints_without_dropout():
    """A frozen T5 is kept in eval mode; checkpointing must still happen (transformers only
    checkpoints training modules) while every dropout stays off."""
    model = dropout_model()
    set_up(model, "dept", checkpointing=True)
    data = batch(model)
    model.eval()
    with torch.no_grad():
        reference = model(**data).loss
    loss, grads, recomputed = step(model, data)
    assert recomputed == 2 * 2
    assert not any(m.training for m in model.t5.modules() if isinstance(m, torch.nn.Dropout))
    torch.testing.assert_close(loss, reference, **TIGHT)
    model.enable_gradient_checkpointing(False)
    loss_plain, grads_plain, recomputed = step(model, data)
    assert recomputed == 0
    torch.testing.assert_close(loss_plain, loss, **TIGHT)
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads[name], grad, **TIGHT, msg=name)


def test_full_fine_tuning_keeps_its_dropout_and_checkpoints():
    """A trainable backbone trains with dropout; checkpointing replays the same masks."""
    model = dropout_model()
    set_up(model, "full")
    data = batch(model)
    torch.manual_seed(5)
    loss, grads, _ = step(model, data)
    model.enable_gradient_checkpointing()
    torch.manual_seed(5)
    loss_ckpt, grads_ckpt, recomputed = step(model, data)
    assert recomputed == 2 * 2
    assert all(m.training for m in model.t5.modules() if isinstance(m, torch.nn.Dropout))
    torch.testing.assert_close(loss_ckpt, loss, **TIGHT)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, **TIGHT, msg=name)


def generated(model: VLT5, data: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """T5's beam search on the batch: the tokens and every step's scores."""
    with torch.no_grad():
        model.engage("vqa")
        inputs, mask = model.build_inputs(data["input_ids"], data["attention_mask"],
                                          data["pixel_values"], adapter="vqa")
        out = model.t5.generate(inputs_embeds=inputs, attention_mask=mask, max_new_tokens=6,
                                do_sample=False, num_beams=2, output_scores=True,
                                return_dict_in_generate=True)
    return out.sequences, torch.stack(out.scores)


def answers(model: VLT5, data: dict) -> list[str]:
    return model.generate_from_batch(data["input_ids"], data["attention_mask"],
                                     data["pixel_values"], max_new_tokens=6, num_beams=2)


@pytest.mark.parametrize("method", ["dept", "lora"])
def test_generation_is_unchanged(method):
    """Also in train mode (a user's call mid-training): transformers 5.17 dropped the decoder's
    cache in a checkpointing block without gradients too, and decoded garbage."""
    model = tiny_model("test_vit")
    set_up(model, method)
    data = batch(model)
    model.eval()
    tokens, scores = generated(model, data)
    reference = answers(model, data)
    assert reference == [text.strip() for text in
                         model.tokenizer.batch_decode(tokens, skip_special_tokens=True)]
    model.enable_gradient_checkpointing()
    step(model, data)  # a training pass first (transformers turns the cache off in training)
    assert model.t5.config.use_cache
    for mode in (False, True):  # evaluation inside a training loop runs in either mode
        model.train(mode)
        assert answers(model, data) == reference
        with model._not_checkpointing():  # what generate_from_batch runs T5's generate in
            again = generated(model, data)
        assert torch.equal(again[0], tokens)
        torch.testing.assert_close(again[1], scores, **TIGHT)
        assert all(gate.training == mode for gate in model._checkpoint_gates())


def test_checkpointing_is_never_saved(tmp_path):
    model = tiny_model("test_vit")
    set_up(model, "dept")
    fingerprint = model.backbone_fingerprint()
    model.enable_gradient_checkpointing()
    assert model.backbone_fingerprint() == fingerprint
    model.save_pretrained(tmp_path / "backbone")
    model.save_adapter("vqa", tmp_path / "adapter")
    for path in (tmp_path / "backbone").rglob("*.json"):
        assert "gradient_checkpointing" not in path.read_text(), path
    assert "gradient_checkpointing" not in (tmp_path / "adapter" / "adapter_config.json").read_text()
    loaded = VLT5.from_pretrained(tmp_path / "backbone")
    assert not loaded.gradient_checkpointing
    assert not any(getattr(m, "gradient_checkpointing", False) for m in loaded.t5.modules())
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["method"] \
        == "dept"
