"""Mixed-adapter batches equal per-example runs; the inference cache of A·B is reused and is
invalidated when the weights change."""

import pytest
import torch
from PIL import Image

from conftest import mixed_adapter_model
from dept_vl import DePTConfig
from dept_vl.methods.dept import DePTPrompt

QUESTIONS = ["what color is the circle ?", "how many objects are there ?", "is there a red ?",
             "what shape is the red object ?", "what size is the red circle ?"]


def images(n):
    colors = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (90, 90, 90)]
    return [Image.new("RGB", (32, 32), colors[i % 5]) for i in range(n)]


@pytest.fixture(scope="module")
def model():
    # different m (and PT, m = 0)
    return mixed_adapter_model({"a": (3, 2, 24), "b": (6, 0, 24), "c": (0, 4, 24),
                                "d": (2, 2, 24)})


def test_mixed_forward_equals_each_example_alone(model):
    names = ["a", "b", None, "c", "d"]
    batch = model.tokenize([f"vqa: {q}" for q in QUESTIONS])
    pixels = model.vision.preprocess(images(5))
    labels = model.tokenize(["red", "two", "yes", "circle", "small"])["input_ids"]
    with torch.no_grad():
        mixed = model(batch["input_ids"], batch["attention_mask"], pixels, labels=labels,
                      adapter=names).logits
        for i, name in enumerate(names):
            one = model.tokenize([f"vqa: {QUESTIONS[i]}"])
            alone = model(one["input_ids"], one["attention_mask"], pixels[i:i + 1],
                          labels=labels[i:i + 1], adapter=name).logits
            torch.testing.assert_close(mixed[i:i + 1], alone, atol=1e-5, rtol=1e-4)
        # the adapters do differ: example 1 under adapter "a" is not what "b" gives
        one = model.tokenize([f"vqa: {QUESTIONS[1]}"])
        other = model(one["input_ids"], one["attention_mask"], pixels[1:2], labels=labels[1:2],
                      adapter="a").logits
        assert not torch.allclose(mixed[1:2], other, atol=1e-3)


def test_mixed_generate_equals_per_example_and_splits_tasks(model):
    names = ["a", "cap", "b", "d", "cap", "c"]
    texts = QUESTIONS[:1] + [""] + QUESTIONS[1:3] + [""] + QUESTIONS[3:4]
    pictures = images(6)
    mixed = model.generate(pictures, texts, adapter=names)
    alone = [model.generate([p], [t], adapter=n)[0] for p, t, n in zip(pictures, texts, names)]
    assert mixed == alone
    with pytest.raises(ValueError, match="adapter names"):
        model.generate(pictures, texts, adapter=names[:2])


def test_mixed_batch_trains_each_adapter_from_its_own_examples(model):
    model.train()
    batch = model.tokenize(["vqa: what color is the circle ?"] * 2)
    labels = model.tokenize(["red", "blue"])["input_ids"]
    loss = model(batch["input_ids"], batch["attention_mask"], model.vision.preprocess(images(2)),
                 labels=labels, adapter=["a", "d"]).loss
    loss.backward()
    assert model.get_adapter("a").tuner.lowrank_B.grad.abs().sum() > 0
    assert model.get_adapter("d").tuner.lowrank_B.grad.abs().sum() > 0
    assert model.get_adapter("c").tuner.lowrank_B.grad is None
    model.zero_grad(set_to_none=True)
    model.eval()


def test_lowrank_product_is_cached_at_inference_and_invalidated_by_updates():
    prompt = DePTPrompt(DePTConfig(prompt_length=2, rank=3, max_length=10), d_model=8)
    with torch.no_grad():
        prompt.lowrank_B.normal_()
        first = prompt.offsets(7)
        assert prompt.offsets(4).data_ptr() == first.data_ptr()  # reused, not recomputed
        torch.testing.assert_close(first, prompt.config.scale * prompt.lowrank_A[:7] @ prompt.lowrank_B)
    # an optimizer step changes B in place: the next inference sees the new product
    optimizer = torch.optim.SGD(prompt.parameters(), lr=0.5)
    loss = prompt.offsets(7).pow(2).sum()  # grad enabled: computed fresh, with a graph
    assert loss.requires_grad
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        after = prompt.offsets(7)
        torch.testing.assert_close(after, prompt.config.scale * prompt.lowrank_A[:7] @ prompt.lowrank_B)
        assert not torch.allclose(after, first)
        prompt.lowrank_A.copy_(torch.zeros_like(prompt.lowrank_A))  # e.g. loading weights
        assert torch.count_nonzero(prompt.offsets(7)) == 0


def test_multitask_evaluation_in_mixed_batches_equals_each_task_alone(model, corpus_dir):
    from dept_vl.data.formats import load_records
    from dept_vl.evaluate import evaluate, evaluate_many

    records = load_records(f"{corpus_dir}/test_vqa.jsonl", "vqa")
    model.max_text_length = 24
    tasks = {"count": ([r for r in records if r.question_type == "count"], "a"),
             "color": ([r for r in records if r.question_type == "color"], "b"),
             "size": ([r for r in records if r.question_type == "size"], "c")}
    together = evaluate_many(model, tasks, batch_size=7, max_length=24)  # batches mix adapters
    for name, (subset, adapter) in tasks.items():
        alone_metrics, alone_rows = evaluate(model, subset, adapter, batch_size=7, max_length=24)
        assert together[name][1] == alone_rows
        assert together[name][0]["vqa_accuracy"] == alone_metrics["vqa_accuracy"]
