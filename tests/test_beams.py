"""Beam search (`num_beams`) in generate / evaluate / a run's evaluation: greedy decoding is
what it was, beams reach T5, mixed-adapter batches still give each example its own answer, and
beam search never scores below greedy where that is a theorem (two steps, no length penalty)."""

import pytest
import torch
from PIL import Image

from conftest import mixed_adapter_model
from dept_vl.training.config import ConfigError, TrainConfig
from dept_vl.data.records import CaptionRecord, VQARecord
from dept_vl.evaluate import evaluate
from dept_vl.methods.lora import LoraMethodConfig

QUESTIONS = ["what color is the circle ?", "how many objects are there ?", "is there a red ?",
             "what shape is the red object ?", "what size is the red circle ?",
             "is there a square left of the circle ?"]


def pictures(n):
    """Distinct flat-plus-noise images (seeded), so examples decode differently."""
    generator = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        base = torch.tensor([(70 * i) % 256, 220 - 25 * i, 30 + 35 * i]).view(3, 1, 1)
        noise = torch.randint(0, 40, (3, 32, 32), generator=generator)
        pixels = (base + noise).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        out.append(Image.fromarray(pixels, "RGB"))
    return out


@pytest.fixture(scope="module")
def model():
    model = mixed_adapter_model({"a": (3, 2, 24), "b": (0, 4, 24)})
    lora = model.add_adapter("l", LoraMethodConfig(lora_rank=2, target_modules=["q", "v"],
                                                   max_length=24, task="vqa"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # peft starts lora_B at zero: the adapter would change nothing
        for tensor in [*lora.tuner.weight_refs().values(), *lora.parameters()]:
            tensor.add_(0.5 * torch.randn(tensor.shape, generator=generator))
    with torch.no_grad():  # a caption adapter that is not the identity either
        for param in model.get_adapter("cap").parameters():
            param.add_(0.3 * torch.randn(param.shape, generator=generator))
    return model


class Recorder:
    """Wraps T5's generate while in a `with`: keeps each call's encoder inputs and returned
    token ids."""

    def __init__(self, t5):
        self.t5, self.calls = t5, []

    def __enter__(self):
        real = self.t5.generate

        def recorded(**kwargs):
            out = real(**kwargs)
            self.calls.append((kwargs["inputs_embeds"], kwargs["attention_mask"], out))
            return out

        self.t5.generate = recorded
        return self

    def __exit__(self, *_):
        del self.t5.generate  # the class's method again


def sequence_log_probs(model, inputs, mask, sequences):
    """Sum of log p(token) of each row of T5's output ids (decoder start dropped), up to and
    including the first end-of-sequence token; what follows it is padding."""
    eos = model.t5.config.eos_token_id
    with torch.no_grad():
        logits = model.t5(inputs_embeds=inputs, attention_mask=mask,
                          decoder_input_ids=sequences[:, :-1]).logits
    targets = sequences[:, 1:]
    token = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    ended_before = torch.cumsum((targets == eos).long(), 1) - (targets == eos).long()
    return (token * (ended_before == 0)).sum(1)


def decode_recorded(model, images, num_beams):
    """(answers, log-probability of each answer's tokens) of one caption call."""
    with Recorder(model.t5) as recorder:
        answers = model.generate(images, adapter="cap", num_beams=num_beams, max_new_tokens=2)
    (inputs, mask, sequences), = recorder.calls
    return answers, sequence_log_probs(model, inputs, mask, sequences)


def test_beam_search_never_scores_below_greedy_and_does_search(model, monkeypatch):
    """With length_penalty 0 a beam's score is its log-probability; over two steps the beams
    hold greedy's first token, so the best beam is at least greedy's sequence. Over more
    steps that is not a theorem (greedy's prefix can drop out of the beam), hence 2 tokens."""
    images = pictures(12)
    monkeypatch.setattr(model.t5.generation_config, "length_penalty", 0.0)
    greedy, greedy_lp = decode_recorded(model, images, 1)
    beams, beam_lp = decode_recorded(model, images, 3)
    assert len(beams) == len(images) and all(isinstance(text, str) for text in beams)
    assert torch.all(beam_lp >= greedy_lp - 1e-5), (beam_lp, greedy_lp)
    # the search did happen: some example found a better sequence than greedy's
    assert torch.any(beam_lp > greedy_lp + 1e-3), (beam_lp, greedy_lp)


def test_our_log_probability_is_transformers_beam_score(model, monkeypatch):
    """The scorer above, checked against T5's own beam scores (length_penalty 0: their sum)."""
    monkeypatch.setattr(model.t5.generation_config, "length_penalty", 0.0)
    images = pictures(4)
    batch = model.tokenize(["caption:"] * 4)
    model.engage("cap")
    inputs, mask = model.build_inputs(batch["input_ids"], batch["attention_mask"],
                                      model.vision.preprocess(images), adapter="cap")
    with torch.no_grad():
        out = model.t5.generate(inputs_embeds=inputs, attention_mask=mask, num_beams=3,
                                max_new_tokens=4, do_sample=False, output_scores=True,
                                return_dict_in_generate=True)
    ours = sequence_log_probs(model, inputs, mask, out.sequences)
    torch.testing.assert_close(ours, out.sequences_scores, atol=1e-4, rtol=1e-4)
    # and VLT5.generate with num_beams=3 decodes exactly these tokens
    texts = model.tokenizer.batch_decode(out.sequences, skip_special_tokens=True)
    assert model.generate(images, adapter="cap", num_beams=3, max_new_tokens=4) == [
        t.strip() for t in texts]


def test_greedy_is_unchanged_and_is_the_vqa_default(model):
    images, names = pictures(6), ["a", "b", "l", None, "a", "l"]
    default = model.generate(images, QUESTIONS, adapter=names)
    assert model.generate(images, QUESTIONS, adapter=names, num_beams=1) == default
    # greedy straight from T5 on the same inputs (one bare-backbone example)
    batch = model.tokenize([f"vqa: {QUESTIONS[3]}"])
    model.engage(None)
    inputs, mask = model.build_inputs(batch["input_ids"], batch["attention_mask"],
                                      model.vision.preprocess(images[3:4]), adapter=None)
    with torch.no_grad():
        tokens = model.t5.generate(inputs_embeds=inputs, attention_mask=mask, max_new_tokens=8,
                                   do_sample=False, num_beams=1)
    assert default[3] == model.tokenizer.batch_decode(tokens, skip_special_tokens=True)[0].strip()


def test_mixed_adapter_batches_with_beams_give_each_example_its_own_answer(model):
    images, names = pictures(6), ["a", "l", "b", None, "l", "a"]
    mixed = model.generate(images, QUESTIONS, adapter=names, num_beams=3)
    alone = [model.generate([image], [q], adapter=name, num_beams=3)[0]
             for image, q, name in zip(images, QUESTIONS, names)]
    assert mixed == alone


def test_evaluate_passes_num_beams_and_keeps_one_prediction_per_image(model):
    images = pictures(5)
    captions = [CaptionRecord(f"c{i}", image, ("a red circle", "a blue square"))
                for i, image in enumerate(images)]
    _, rows = evaluate(model, captions, adapter="cap", batch_size=2, num_beams=3)
    assert [r["prediction"] for r in rows] == model.generate(images, adapter="cap", num_beams=3)
    questions = [VQARecord(f"q{i}", image, QUESTIONS[i], ("red",)) for i, image in
                 enumerate(images)]
    _, default = evaluate(model, questions, adapter="a", batch_size=2)
    _, greedy = evaluate(model, questions, adapter="a", batch_size=2, num_beams=1)
    assert greedy == default


def test_num_beams_below_one_is_refused(model):
    with pytest.raises(ValueError, match="num_beams must be an integer >= 1"):
        model.generate(pictures(1), adapter="cap", num_beams=0)
    with pytest.raises(ConfigError, match="num_beams"):
        TrainConfig(num_beams=0)
    assert TrainConfig().num_beams is None and TrainConfig(num_beams=5).num_beams == 5


def test_a_runs_evaluation_and_frozen_baseline_use_the_configs_num_beams(monkeypatch):
    from dept_vl.training import results

    seen = []
    monkeypatch.setattr(results, "evaluate_many",
                        lambda *args, **kwargs: seen.append(kwargs.get("num_beams")) or {})

    class Task:
        name, kind, eval, test, adapter = "t", "vqa", ["r"], ["r"], "a"

    cfg = TrainConfig(num_beams=4)
    results.evaluate_tasks(None, [Task()], "eval", cfg)
    results.evaluate_tasks(None, [Task()], "test", cfg)
    results.evaluate_frozen(type("M", (), {"metadata": {}})(), [Task()], cfg)
    assert seen == [4, 4, 4]
