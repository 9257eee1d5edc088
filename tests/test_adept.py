"""ADePT (dept_vl/methods/adept.py): step 0 is prompt tuning, offsets depend on the token alone,
the deduplicated inference path equals the direct one bit for bit, dropout only in training, the
budget and its split helper, optimizer groups, files, and a training run."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_model
from dept_vl import (VLT5, ADePTConfig, adept_budget, adept_split, adept_splits, dept_budget)
from dept_vl.training.config import TrainConfig
from dept_vl.methods import get_method
from dept_vl.methods.adept import ADePTPrompt
from dept_vl.methods.pt import PTConfig
from test_model import batch_for, images
from test_train import dept_config

QUESTIONS = ["what color is the circle ?", "how many objects are there ?", "is there a red ?"]


def perturbed(module: ADePTPrompt, seed: int = 0) -> ADePTPrompt:
    """Non-zero W2, b2 (they start at zero, which would hide every offset)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.5 * torch.randn(param.shape, generator=generator))
    return module


def module(d_model=16, seed=0, **fields) -> ADePTPrompt:
    torch.manual_seed(seed)
    return perturbed(ADePTPrompt(ADePTConfig(**{"prompt_length": 3, "rank": 5, **fields}),
                                 d_model), seed)


def repeated_rows(batch=3, length=7, d_model=16, distinct=4, seed=0) -> torch.Tensor:
    """Embeddings drawn from a table of `distinct` rows, so tokens repeat within the batch."""
    generator = torch.Generator().manual_seed(seed)
    table = torch.randn(distinct, d_model, generator=generator)
    return table[torch.randint(0, distinct, (batch, length), generator=generator)]


def test_step_zero_equals_prompt_tuning_with_the_same_prompt():
    model = tiny_model("test_vit")
    for name, config in (("pt", PTConfig(prompt_length=4, max_length=24)),
                         ("adept", ADePTConfig(prompt_length=4, rank=3, max_length=24))):
        model.add_adapter(name, config, generator=torch.Generator().manual_seed(7))
    ids, mask, pixels = batch_for(model, ["vqa: what color is the circle ?", "vqa: how many ?"])
    for train, dedup in ((True, False), (False, False), (False, True)):
        model.train(train)
        model.adapters["adept"].tuner.dedup_at_inference = dedup
        with torch.set_grad_enabled(train):
            pt = model.build_inputs(ids, mask, pixels, adapter="pt")
            adept = model.build_inputs(ids, mask, pixels, adapter="adept")
        assert torch.equal(pt[0], adept[0]) and torch.equal(pt[1], adept[1])
    # the offset network is live: one step on W2 alone moves the inputs away from PT's
    with torch.no_grad():
        model.adapters["adept"].tuner.offset_out.bias.add_(0.1)
    assert not torch.equal(model.build_inputs(ids, mask, pixels, adapter="adept")[0],
                           model.build_inputs(ids, mask, pixels, adapter="pt")[0])


@pytest.mark.parametrize("grad, dedup", [(True, False), (False, False), (False, True)])
def test_a_token_gets_the_same_offset_at_any_position(grad, dedup):
    adept = module().train(grad)
    adept.dedup_at_inference = dedup
    embeds = torch.randn(2, 9, 16)
    embeds[1, 6] = embeds[0, 0]  # one token at position 0 of row 0 and position 6 of row 1
    with torch.set_grad_enabled(grad):
        offsets = adept.update(embeds) - embeds
    assert torch.equal(offsets[0, 0], offsets[1, 6])
    assert not torch.equal(offsets[0, 0], offsets[0, 1])  # other tokens: other offsets


def test_deduplicated_inference_equals_the_direct_path_bit_for_bit(monkeypatch):
    adept = module().eval()
    adept.dedup_at_inference = True
    direct = module().eval()
    assert not direct.dedup()  # the default (see the module's docstring)
    rows_seen = []
    run = ADePTPrompt.offset_rows
    monkeypatch.setattr(ADePTPrompt, "offset_rows",
                        lambda self, rows: rows_seen.append(rows.shape[0]) or run(self, rows))
    for batch, length, distinct in ((1, 1, 1), (1, 3, 2), (2, 5, 3), (3, 7, 4), (4, 11, 9),
                                    (5, 13, 40)):
        embeds = repeated_rows(batch, length, distinct=distinct, seed=batch)
        with torch.no_grad():
            rows_seen.clear()
            deduplicated = adept.update(embeds)
            assert rows_seen == [len(torch.unique(embeds.reshape(-1, 16), dim=0))]
            assert torch.equal(deduplicated, direct.update(embeds))
            # and each example alone gets what it gets in the batch (no row-count effect)
            for i in range(batch):
                assert torch.equal(direct.update(embeds[i:i + 1]), deduplicated[i:i + 1])


def test_the_network_sees_every_row_while_it_trains(monkeypatch):
    adept = module().train()
    adept.dedup_at_inference = True
    seen = []
    run = ADePTPrompt.offset_rows
    monkeypatch.setattr(ADePTPrompt, "offset_rows",
                        lambda self, rows: seen.append(rows.shape[0]) or run(self, rows))
    adept.update(repeated_rows(2, 5, distinct=2)).sum().backward()
    assert seen == [10] and adept.offset_in.weight.grad is not None
    adept.requires_grad_(False)  # frozen (e.g. a loaded adapter served): deduplicated again
    adept.update(repeated_rows(2, 5, distinct=2))
    assert seen[-1] <= 2


def test_dropout_acts_in_training_only():
    adept = module(dropout=0.5)
    adept.dedup_at_inference = True
    plain = module(dropout=0.0)
    embeds = torch.randn(2, 6, 16)
    adept.train()
    first, second = adept.update(embeds), adept.update(embeds)
    assert not torch.equal(first, second)
    with torch.no_grad():
        assert not adept.dedup()  # each position draws its own mask, even without gradients
    adept.eval()
    plain.eval()
    with torch.no_grad():
        assert adept.dedup()
        assert torch.equal(adept.update(embeds), plain.update(embeds))


@pytest.mark.parametrize("m, r, d", [(3, 5, 16), (0, 1, 32), (60, 19, 768), (12, 6, 192)])
def test_budget_equals_the_counted_parameters(m, r, d):
    config = ADePTConfig(prompt_length=m, rank=r)
    counted = sum(p.numel() for p in ADePTPrompt(config, d).parameters())
    assert ADePTPrompt.budget(config, d) == counted == adept_budget(m, r, d)
    assert get_method("adept") is ADePTPrompt


def test_param_groups_prompt_and_network_at_their_own_rates():
    adept = module()
    groups = {g["name"]: g for g in adept.param_groups({"prompt": 0.3, "offset": 5e-3})}
    assert set(groups) == {"prompt", "offset"}
    assert groups["prompt"]["lr"] == 0.3 and groups["offset"]["lr"] == 5e-3
    assert all(g["weight_decay"] == 0.0 for g in groups.values())
    assert groups["prompt"]["params"] == [adept.prompt_embeddings]
    assert {id(p) for p in groups["offset"]["params"]} == {
        id(p) for p in (*adept.offset_in.parameters(), *adept.offset_out.parameters())}
    assert {ADePTPrompt.part_of(k) for k in adept.tensors()} == {"prompt", "offset"}


def test_split_helper_picks_the_closest_budget():
    assert adept_split(76_800, 768, prompt_length=60) == (60, 19, -749)
    assert adept_split(4_992, 192, prompt_length=12) == (12, 6, -186)
    for budget, d, m in ((76_800, 768, 60), (4_992, 192, 12), (53_760, 512, 60), (900, 16, 3)):
        split = adept_split(budget, d, prompt_length=m)
        assert split.difference == adept_budget(m, split.rank, d) - budget
        best = min(abs(adept_budget(m, r, d) - budget) for r in range(1, 200))
        assert abs(split.difference) == best
    fixed_rank = adept_split(76_800, 768, rank=19)
    assert fixed_rank.rank == 19 and abs(fixed_rank.difference) < 768
    near = adept_splits(76_800, 768, tolerance=30)
    assert (61, 19, 19) in near and all(abs(s.difference) <= 30 for s in near)
    assert adept_splits(4_992, 192, tolerance=0) == []  # the count is ≡ r (mod d): none exact
    assert [s.rank for s in adept_splits(4_992, 192)] == list(range(1, 13))
    with pytest.raises(ValueError, match="exactly one"):
        adept_split(100, 16)
    with pytest.raises(ValueError, match="rank"):
        adept_split(100, 16, rank=0)


def test_config_checks_fields_and_round_trips():
    config = ADePTConfig(prompt_length=4, rank=3, dropout=0.1, max_length=24)
    assert ADePTConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match=r"ADePTConfig: rank: must be >= 1, got 0"):
        ADePTConfig(rank=0)
    with pytest.raises(ValueError, match=r"ADePTConfig: dropout: must be in \[0, 1\), got 1.0"):
        ADePTConfig(dropout=1.0)
    values = config.to_dict()
    del values["dropout"]
    with pytest.raises(ValueError, match="missing key 'dropout'"):
        ADePTConfig.from_dict(values)


def test_from_train_config_reads_the_method_block():
    cfg = TrainConfig(method={"name": "adept", "prompt_length": 12, "rank": 6, "dropout": 0.2,
                              "lr": {"offset": 5e-3}}, max_length=32)
    config = ADePTConfig.from_train_config(cfg, 192, "vqa")
    assert (config.prompt_length, config.rank, config.dropout, config.max_length) == \
        (12, 6, 0.2, 32)
    assert cfg.method["lr"] == {"prompt": 0.3, "offset": 5e-3}  # its own roles
    # the closest budget to DePT(12, 12)'s, as configs/compare_shapes.yaml's comment says
    assert adept_split(dept_budget(12, 12, 32, 192), 192, prompt_length=12).rank == 6
    assert abs(config.num_parameters(192) - dept_budget(12, 12, 32, 192)) == 186


def test_save_load_round_trip_gives_identical_generations(tmp_path):
    model = tiny_model("test_vit").eval()
    adapter = model.add_adapter("vqa", ADePTConfig(prompt_length=3, rank=4, dropout=0.1,
                                                   max_length=24))
    perturbed(adapter.tuner)
    expected = model.generate(images(3), QUESTIONS, adapter="vqa")
    model.save_adapter("vqa", tmp_path / "vqa")
    meta = json.loads((tmp_path / "vqa" / "adapter_config.json").read_text())
    assert (meta["method"], meta["rank"], meta["dropout"]) == ("adept", 4, 0.1)
    fresh = tiny_model("test_vit").eval()
    fresh.load_adapter(tmp_path / "vqa", name="vqa")
    assert fresh.generate(images(3), QUESTIONS, adapter="vqa") == expected
    for key, value in adapter.state_dict().items():
        assert torch.equal(value, fresh.adapters["vqa"].state_dict()[key])


def test_training_run_with_method_adept(tmp_path, corpus_dir, backbone):
    from dept_vl.cli.train import main

    main(["--config", dept_config(tmp_path, corpus_dir, backbone, eval_file=None,
                                  method={"name": "adept", "prompt_length": 4, "rank": 3,
                                          "dropout": 0.1})])
    run = tmp_path / "run"
    meta = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert (meta["method"], meta["prompt_length"], meta["rank"], meta["dropout"]) == \
        ("adept", 4, 3, 0.1)
    tensors = load_file(run / "adapter" / "adapter_model.safetensors")
    assert {"prompt_embeddings", "offset_in.weight", "offset_out.weight",
            "offset_out.bias"} <= set(tensors)
    assert tensors["offset_out.weight"].abs().sum() > 0  # W2 left zero: the network trained
    results = json.loads((run / "eval_results.json").read_text())
    projection = sum(v.numel() for k, v in tensors.items() if k.startswith("visual_projection"))
    assert results["trainable_parameters"] == adept_budget(4, 3, 32) + projection
    model = VLT5.from_pretrained(backbone)
    model.load_adapter(run / "adapter", name="vqa")
    assert len(model.generate(images(2), QUESTIONS[:2], adapter="vqa")) == 2
