"""LoRA adapters (dept_vl/methods/lora.py) round-trip and serve beside prompt adapters: a real
`--method lora` run's adapter/ loads back (load_adapter, `python -m dept_vl.evaluate`, the demo)
with the run's own test predictions; mixed batches of LoRA and prompt adapters give every example
its answer alone (generate, evaluate_many, the serving batcher); switching keeps requires_grad;
deleting an adapter (also after a failed load) leaves the backbone exactly as it was; two LoRA
adapters with different target_modules live side by side; a LoRA source starts a LoRA target;
an adapter of another backbone is refused."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import split, tiny_model, write_config
from dept_vl import DePTConfig, VLT5
from dept_vl.batching import MixedBatcher, Request
from dept_vl.data.formats import load_records
from dept_vl.evaluate import evaluate, evaluate_many
from dept_vl.cli.eval import main as evaluate_main
from dept_vl.methods.lora import LoraMethodConfig
from dept_vl.methods.pt import PTConfig
from dept_vl.model import AdapterMismatchError
from dept_vl.training.transfer import initialize

QUESTIONS = ["what color is the circle ?", "how many objects are there ?", "is there a red ?",
             "what shape is the red object ?", "what size is the red circle ?",
             "is there a square left of the circle ?"]


def picture(i):
    return Image.new("RGB", (32, 32), ((60 * i) % 256, 200 - 20 * i, 40 + 30 * i))


def perturb(adapter, scale=0.5, seed=0):
    """Non-trivial weights everywhere (peft starts lora_B at zero: LoRA would change nothing)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*adapter.tuner.weight_refs().values(), *adapter.parameters()]:
            tensor.add_(scale * torch.randn(tensor.shape, generator=generator))
    return adapter


def lora(targets=("q", "v"), rank=2, task="vqa"):
    return LoraMethodConfig(lora_rank=rank, target_modules=list(targets), max_length=24,
                            task=task)


def bare_logits(model):
    """The bare backbone's logits on a fixed batch (no adapter)."""
    batch = model.tokenize([f"vqa: {q}" for q in QUESTIONS[:3]])
    with torch.no_grad():
        return model(batch["input_ids"], batch["attention_mask"],
                     model.vision.preprocess([picture(i) for i in range(3)]),
                     labels=batch["input_ids"], adapter=None).logits


# ---------------------------------------------------------------- a real `--method lora` run
@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, corpus_dir, backbone):
    out = tmp_path_factory.mktemp("lora-run")
    config = write_config(
        out / "lora.yaml", method={"name": "lora", "lora_rank": 4, "lr": 2e-2}, task="vqa",
        backbone=backbone,
        train_file=split(corpus_dir, "train", "vqa"), test_file=split(corpus_dir, "test", "vqa"),
        output_dir=str(out / "run"), max_length=24, max_steps=4,
        batch_size=8, save_steps=100, logging_steps=1, warmup_steps=1, seed=1)
    from dept_vl.cli.train import main

    main(["--config", config])
    return out / "run"


def test_a_lora_run_saves_its_lora_weights_and_config(lora_run):
    meta = json.loads((lora_run / "adapter" / "adapter_config.json").read_text())
    assert meta["method"] == "lora" and meta["lora_rank"] == 4
    assert meta["target_modules"] == ["q", "v"] and meta["task"] == "vqa"
    tensors = load_file(lora_run / "adapter" / "adapter_model.safetensors")
    lora_b = [k for k in tensors if k.startswith("t5.") and k.endswith("lora_B.weight")]
    assert lora_b and any(tensors[k].abs().sum() > 0 for k in lora_b)  # it trained
    assert meta["trainable_parameters"] == sum(t.numel() for t in tensors.values())


def test_load_adapter_reproduces_the_runs_test_predictions(lora_run, backbone, corpus_dir):
    expected = json.loads((lora_run / "test_predictions.json").read_text())
    model = VLT5.from_pretrained(backbone)
    name = model.load_adapter(lora_run / "adapter", name="lora")
    records = load_records(f"{corpus_dir}/test_vqa.jsonl", "vqa")
    _, rows = evaluate(model, records, name, max_length=24)
    assert [r["prediction"] for r in rows] == [r["prediction"] for r in expected]
    # the loaded LoRA weights act: without them T5 computes something else
    batch = model.tokenize(["vqa: what color is the circle ?"])
    pixels = model.vision.preprocess([picture(0)])
    with torch.no_grad():
        on = model(batch["input_ids"], batch["attention_mask"], pixels,
                   labels=batch["input_ids"], adapter=name).logits
        for key, tensor in model.get_adapter(name).tuner.weight_refs().items():
            if "lora_B" in key:
                tensor.zero_()
        off = model(batch["input_ids"], batch["attention_mask"], pixels,
                    labels=batch["input_ids"], adapter=name).logits
    assert not torch.allclose(on, off, atol=1e-4)


def test_evaluate_cli_reproduces_the_runs_test_predictions(lora_run, backbone, corpus_dir,
                                                           tmp_path):
    expected = json.loads((lora_run / "test_predictions.json").read_text())
    evaluate_main(["--backbone", backbone, "--adapter", str(lora_run / "adapter"),
                   "--data", f"{corpus_dir}/test_vqa.jsonl", "--out", str(tmp_path / "out.json")])
    result = json.loads((tmp_path / "out.json").read_text())
    assert [r["prediction"] for r in result["predictions"]] == \
        [r["prediction"] for r in expected]
    reported = json.loads((lora_run / "eval_results.json").read_text())["vqa_accuracy"]
    assert result["metrics"]["vqa_accuracy"] == pytest.approx(reported)


def test_the_demo_serves_a_lora_run_beside_a_prompt_adapter(lora_run, backbone, corpus_dir,
                                                            tmp_path):
    from dept_vl.cli.demo import parse_adapters
    from dept_vl.demo import DemoService

    model = VLT5.from_pretrained(backbone)
    perturb(model.add_adapter("dept", DePTConfig(prompt_length=3, rank=2, max_length=24)))
    model.save_adapter("dept", tmp_path / "dept")
    service = DemoService(backbone, parse_adapters([f"lora={lora_run / 'adapter'}",
                                                    f"vqa={tmp_path / 'dept'}"]))
    assert [label for label, _ in service.tasks] == ["lora (question answering, lora)",
                                                     "vqa (question answering, dept)"]
    rows = [json.loads(line) for line in
            Path(corpus_dir, "test_vqa.jsonl").read_text().splitlines()[:6]]
    expected = {r["id"]: r["prediction"] for r in
                json.loads((lora_run / "test_predictions.json").read_text())}
    for row in rows:
        answer, _ = service.answer(str(Path(corpus_dir, row["image"])), row["question"], "lora")
        assert answer == expected[row["id"]]
    # one mixed batch through the batcher: each request its answer alone
    requests = [Request(service.load_image(str(Path(corpus_dir, row["image"]))), row["question"],
                        "lora" if i % 2 else "vqa") for i, row in enumerate(rows)]
    alone = [service.model.generate([r.image], [r.text], adapter=r.adapter)[0] for r in requests]
    service.batcher._run(requests)
    assert [r.answer.result(timeout=60) for r in requests] == alone
    assert service.batcher.batch_sizes[len(requests)] == 1  # one batch, not one by one


def test_a_multitask_lora_run_tests_its_adapters_together_and_starts_a_target(
        tmp_path, corpus_dir, backbone):
    """One LoRA adapter per task: the run's test evaluation mixes them (each in its own
    batches), each saved adapter reproduces its task's predictions, and the adapters start a
    LoRA target (init_from, part "lora", the best source by zero-step loss)."""
    from dept_vl.cli.train import main

    tasks = {name: {"task": "vqa", "question_types": [name],
                    "train_file": split(corpus_dir, "train", "vqa"),
                    "test_file": split(corpus_dir, "test", "vqa")} for name in ("color", "shape")}
    common = dict(method={"name": "lora", "lora_rank": 2, "lr": 2e-2}, backbone=backbone,
                  max_length=24,
                  max_steps=2, batch_size=8, save_steps=100, logging_steps=1, warmup_steps=1,
                  seed=1)
    main(["--config", write_config(tmp_path / "src.yaml", tasks=tasks, adapter_per_task=True,
                                   output_dir=str(tmp_path / "src"), **common)])
    expected = json.loads((tmp_path / "src" / "test_predictions.json").read_text())
    model = VLT5.from_pretrained(backbone)
    records = load_records(f"{corpus_dir}/test_vqa.jsonl", "vqa")
    for name in tasks:
        model.load_adapter(tmp_path / "src" / "adapters" / name)
        mine = [r for r in records if r.question_type == name]
        _, rows = evaluate(model, mine, name, max_length=24)
        assert [r["prediction"] for r in rows] == [r["prediction"] for r in expected[name]]
    main(["--config", write_config(
        tmp_path / "tgt.yaml", task="vqa", train_file=split(corpus_dir, "train", "vqa"),
        init_from=str(tmp_path / "src" / "adapters"), init_parts=["lora"],
        output_dir=str(tmp_path / "tgt"), **common)])
    report = json.loads((tmp_path / "tgt" / "init.json").read_text())
    (adapter_report,) = report.values()
    assert adapter_report["parts"] == ["lora"]
    assert set(adapter_report["scores"]) == {"scratch", *(str(tmp_path / "src" / "adapters" / n)
                                                          for n in tasks)}


# ---------------------------------------------------------------- serving beside prompt adapters
@pytest.fixture(scope="module")
def mixed():
    """Two LoRA adapters on different layers, DePT, PT and a caption adapter on one backbone."""
    model = tiny_model("test_vit").eval()
    perturb(model.add_adapter("qv", lora(("q", "v"))), seed=1)
    perturb(model.add_adapter("ko", lora(("k", "o", "wi"), rank=3)), seed=2)
    perturb(model.add_adapter("dept", DePTConfig(prompt_length=3, rank=2, max_length=24)), 0.3, 3)
    perturb(model.add_adapter("pt", PTConfig(prompt_length=4, max_length=24)), 0.3, 4)
    perturb(model.add_adapter("cap", lora(("q",), task="caption")), seed=5)
    return model


NAMES = ["qv", "dept", "ko", None, "cap", "qv", "pt", "dept", "ko"]


def test_mixed_generate_gives_every_example_its_answer_alone(mixed):
    texts = [QUESTIONS[i % 6] if n != "cap" else "" for i, n in enumerate(NAMES)]
    pictures = [picture(i) for i in range(len(NAMES))]
    together = mixed.generate(pictures, texts, adapter=NAMES)
    alone = [mixed.generate([p], [t], adapter=n)[0] for p, t, n in zip(pictures, texts, NAMES)]
    assert together == alone
    # the adapters differ: the same question gets other answers under other adapters
    assert len({mixed.generate([pictures[0]], [texts[0]], adapter=n)[0]
                for n in ("qv", "ko", "dept", None)}) > 1
    # a forward (training) batch still refuses to mix a LoRA adapter with others
    batch = mixed.tokenize([f"vqa: {q}" for q in QUESTIONS[:2]])
    with pytest.raises(ValueError, match="own batch"):
        mixed(batch["input_ids"], batch["attention_mask"],
              mixed.vision.preprocess(pictures[:2]), adapter=["qv", "dept"])


def test_evaluate_many_mixes_lora_and_prompt_groups(mixed, corpus_dir):
    records = load_records(f"{corpus_dir}/test_vqa.jsonl", "vqa")[:12]
    groups = {"a": (records[:5], "qv"), "b": (records[5:9], "dept"),
              "c": (records[9:], "ko"), "d": (records[:4], "pt")}
    together = evaluate_many(mixed, groups, batch_size=16, max_length=24)
    for name, (rows, adapter) in groups.items():
        _, alone = evaluate(mixed, rows, adapter, batch_size=16, max_length=24)
        assert [r["prediction"] for r in together[name][1]] == [r["prediction"] for r in alone]


def test_the_batcher_answers_a_mixed_lora_batch_as_one_request_each(mixed):
    names = [n for n in NAMES if n is not None]
    requests = [Request(picture(i), QUESTIONS[i % 6] if n != "cap" else "", n)
                for i, n in enumerate(names)]
    alone = [mixed.generate([r.image], [r.text], adapter=r.adapter)[0] for r in requests]
    batcher = MixedBatcher(mixed)
    batcher._run(requests)
    assert [r.answer.result(timeout=60) for r in requests] == alone
    assert batcher.batch_sizes == {len(requests): 1}


# ---------------------------------------------------------------- peft details
def test_switching_adapters_keeps_every_requires_grad_flag():
    model = tiny_model("test_vit")
    model.add_adapter("a", lora())
    model.add_adapter("b", lora(("q", "k")))
    model.add_adapter("d", DePTConfig(prompt_length=2, rank=2, max_length=24))
    for param in model.get_adapter("b").tuner.weight_refs().values():
        param.requires_grad_(False)  # e.g. a source kept frozen while "a" trains
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    assert any(flags.values()) and not all(flags.values())
    for name in ("b", "a", None, "d", "b", None, "a"):
        model.engage(name)
        assert {k: p.requires_grad for k, p in model.named_parameters()} == flags, name


def test_deleting_lora_adapters_leaves_the_backbone_exactly_as_before():
    model = tiny_model("test_vit").eval()
    state = {k: v.clone() for k, v in model.t5.state_dict().items()}
    before, fingerprint = bare_logits(model), model.backbone_fingerprint()
    perturb(model.add_adapter("a", lora()), seed=1)
    perturb(model.add_adapter("b", lora(("q", "wo"))), seed=2)
    b_alone = model.generate([picture(1)], [QUESTIONS[1]], adapter="b")
    model.delete_adapter("a")
    assert model.generate([picture(1)], [QUESTIONS[1]], adapter="b") == b_alone
    assert torch.equal(bare_logits(model), before)
    model.delete_adapter("b")
    assert torch.equal(bare_logits(model), before)
    after = model.t5.state_dict()  # the layers peft wrapped are plain again
    assert list(after) == list(state) and all(torch.equal(after[k], state[k]) for k in state)
    assert model.backbone_fingerprint() == fingerprint and not hasattr(model.t5, "peft_config")


@pytest.mark.parametrize("damage", ["drop-tensor", "other-targets"])
def test_a_failed_lora_load_leaves_the_backbone_as_before(tmp_path, damage):
    source = tiny_model("test_vit")
    perturb(source.add_adapter("a", lora()))
    source.save_adapter("a", tmp_path / "a")
    if damage == "drop-tensor":
        file = tmp_path / "a" / "adapter_model.safetensors"
        tensors = load_file(file)
        tensors.pop(next(k for k in tensors if "lora_A" in k))
        save_file(tensors, file)
    else:
        config = tmp_path / "a" / "adapter_config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()),
                                      "target_modules": ["q", "k"]}))
    model = tiny_model("test_vit").eval()
    kept = perturb(model.add_adapter("kept", lora(("q",))), seed=3)
    keys, before = list(model.t5.state_dict()), bare_logits(model)
    kept_answer = model.generate([picture(2)], [QUESTIONS[2]], adapter="kept")
    with pytest.raises(AdapterMismatchError, match="adapter_model.safetensors: missing tensors"):
        model.load_adapter(tmp_path / "a", name="again")
    assert "again" not in model.adapters and kept is model.get_adapter("kept")
    assert list(model.t5.state_dict()) == keys and torch.equal(bare_logits(model), before)
    assert model.generate([picture(2)], [QUESTIONS[2]], adapter="kept") == kept_answer


def test_lora_adapters_with_different_targets_round_trip_side_by_side(mixed, tmp_path):
    for name in ("qv", "ko", "cap"):
        mixed.save_adapter(name, tmp_path / name)
    fresh = tiny_model("test_vit").eval()
    for name in ("ko", "qv", "cap"):  # another order than they were added in
        fresh.load_adapter(tmp_path / name)
    names = ["qv", "ko", "cap", "ko", "qv"]
    texts = [QUESTIONS[i] if n != "cap" else "" for i, n in enumerate(names)]
    pictures = [picture(i) for i in range(len(names))]
    assert fresh.generate(pictures, texts, adapter=names) == \
        mixed.generate(pictures, texts, adapter=names)
    for name in ("qv", "ko", "cap"):
        loaded, saved = fresh.get_adapter(name).weights(), mixed.get_adapter(name).weights()
        assert loaded.keys() == saved.keys()
        assert all(torch.equal(loaded[k], saved[k]) for k in saved)


def test_a_lora_source_starts_a_lora_target(tmp_path):
    source = tiny_model("test_vit")
    perturb(source.add_adapter("src", lora(rank=2)))
    source.save_adapter("src", tmp_path / "src")
    saved = load_file(tmp_path / "src" / "adapter_model.safetensors")
    model = tiny_model("test_vit")
    target = model.add_adapter("tgt", lora(rank=2))
    projection = {k: v.clone() for k, v in target.weights().items() if "visual_projection" in k}
    report = initialize(model, "tgt", tmp_path / "src", parts=["lora"])
    assert report["parts"] == ["lora"] and report["selected"] == str(tmp_path / "src")
    weights = target.weights()
    lora_keys = [k for k in saved if k.startswith("t5.")]
    assert lora_keys and all(torch.equal(weights[k], saved[k]) for k in lora_keys)
    assert all(torch.equal(weights[k], v) for k, v in projection.items())  # not copied
    initialize(model, "tgt", tmp_path / "src")  # every part
    assert all(torch.equal(target.weights()[k], saved[k]) for k in saved)
    other = model.add_adapter("wide", lora(rank=3))
    with pytest.raises(AdapterMismatchError, match=r"lora_A\.weight \(lora\) has shape"):
        initialize(model, "wide", tmp_path / "src", parts=["lora"])
    assert other.weights().keys() == target.weights().keys()


def test_a_lora_adapter_of_another_backbone_is_refused(tmp_path):
    source = tiny_model("test_vit")
    perturb(source.add_adapter("a", lora()))
    source.save_adapter("a", tmp_path / "a")
    wider = tiny_model("test_vit", d_model=48)
    with pytest.raises(AdapterMismatchError, match="d_model=32"):
        wider.load_adapter(tmp_path / "a")
    retrained = tiny_model("test_vit", seed=1)
    keys = list(retrained.t5.state_dict())
    with pytest.raises(AdapterMismatchError, match="fingerprint"):
        retrained.load_adapter(tmp_path / "a")
    assert not retrained.adapters and list(retrained.t5.state_dict()) == keys
    assert retrained.load_adapter(tmp_path / "a", strict=False) == "a"  # when asked to


def test_lora_dropout_acts_in_training_only_although_the_frozen_t5_stays_in_eval_mode():
    model = tiny_model("test_vit")
    adapter = model.add_adapter("l", LoraMethodConfig(lora_rank=2, lora_dropout=0.5, task="vqa"))
    perturb(adapter)
    ids, mask = torch.tensor([[5, 6, 7, 1]]), torch.ones(1, 4, dtype=torch.long)
    features = torch.randn(1, model.projection.num_tokens or 4, model.vision.feature_dim)
    labels = torch.tensor([[5, 1]])

    def loss() -> float:
        return float(model(input_ids=ids, attention_mask=mask, visual_features=features,
                           labels=labels, adapter="l").loss.detach())

    model.train()
    assert not model.t5.training  # the frozen backbone: its own dropout stays off
    torch.manual_seed(0)
    assert len({loss() for _ in range(4)}) > 1  # LoRA's dropout draws a new mask each pass
    model.eval()
    assert len({loss() for _ in range(4)}) == 1


def test_a_lora_adapters_reported_budget_is_r_times_in_plus_out_of_the_layers_it_wraps():
    model = tiny_model("test_vit")
    adapter = model.add_adapter("l", lora(rank=2))
    counted = sum(t.numel() for t in adapter.tuner.tensors().values())
    assert adapter.tuner.reported_budget() == counted > 0
