"""DePT arithmetic: budget, inits, the position-wise update, special cases, optimizer groups."""

import math

import pytest
import torch

from dept_vl.methods.dept import (
    DePTConfig, DePTPrompt, dept_budget, dept_param_groups, dept_split, dept_splits,
)
from dept_vl.methods.pt import init_prompt_from_embeddings


def test_t5_base_budgets_match_the_paper():
    # PT with 100 tokens on T5-Base (d=768) has 76,800 parameters; so do the released DePT splits
    assert dept_budget(100, 0, 256, 768) == 76_800
    for m, r in [(60, 30), (40, 45), (80, 15)]:
        assert dept_budget(m, r, 256, 768) == 76_800
        assert DePTConfig(prompt_length=m, rank=r, max_length=256).num_parameters(768) == 76_800
    splits = dept_splits(76_800, 768, 256)
    assert {(60, 30), (40, 45), (80, 15), (100, 0)} <= set(splits)
    assert all(dept_budget(m, r, 256, 768) == 76_800 for m, r in splits)
    assert dept_split(76_800, 768, 256, rank=30) == (60, 30)
    assert dept_split(76_800, 768, 256, prompt_length=40) == (40, 45)
    with pytest.raises(ValueError, match="no prompt length fits"):
        dept_split(76_800, 768, 256, rank=31)
    with pytest.raises(ValueError, match="exactly one"):
        dept_split(76_800, 768, 256)


def test_parameter_count_equals_budget():
    prompt = DePTPrompt(DePTConfig(prompt_length=6, rank=3, max_length=10), d_model=8)
    assert sum(p.numel() for p in prompt.parameters()) == dept_budget(6, 3, 10, 8)


def test_official_inits_make_step_zero_plain_prompt_tuning():
    config = DePTConfig(prompt_length=4, rank=5, max_length=12, alpha=8)
    prompt = DePTPrompt(config, d_model=16)
    assert torch.count_nonzero(prompt.lowrank_B) == 0
    assert prompt.lowrank_A.abs().max() > 0
    bound = 1 / math.sqrt(5)  # kaiming_uniform(a=√5) on fan_in = r
    assert prompt.lowrank_A.abs().max() <= bound + 1e-6
    assert config.scale == pytest.approx(8 / math.sqrt(5))
    embeds = torch.randn(2, 7, 16)
    out, _ = prompt(embeds, torch.ones(2, 7, dtype=torch.long))
    assert torch.equal(out[:, 4:], embeds)


def test_update_is_positionwise_on_text_only_and_prompt_prepended():
    config = DePTConfig(prompt_length=3, rank=2, max_length=10, alpha=4)
    prompt = DePTPrompt(config, d_model=6)
    torch.nn.init.normal_(prompt.lowrank_B)
    embeds = torch.randn(2, 5, 6)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    out, out_mask = prompt(embeds, mask)
    expected = embeds + config.scale * (prompt.lowrank_A @ prompt.lowrank_B)[:5]
    assert out.shape == (2, 8, 6)
    assert torch.allclose(out[:, 3:], expected, atol=1e-6)
    assert torch.equal(out[0, :3], prompt.prompt_embeddings.detach())
    assert torch.equal(out[1, :3], prompt.prompt_embeddings.detach())
    assert torch.equal(out_mask, torch.cat([torch.ones(2, 3, dtype=torch.long), mask], 1))
    # row i of A belongs to text position i, whatever the batch is padded to
    longer, _ = prompt(torch.cat([embeds, torch.zeros(2, 4, 6)], 1),
                       torch.cat([mask, torch.zeros(2, 4, dtype=torch.long)], 1))
    assert torch.allclose(longer[:, :8], out, atol=1e-6)


def test_text_longer_than_max_length_is_refused():
    prompt = DePTPrompt(DePTConfig(prompt_length=1, rank=2, max_length=4), d_model=4)
    with pytest.raises(ValueError, match="max_length s=4"):
        prompt(torch.randn(1, 5, 4), torch.ones(1, 5, dtype=torch.long))


def test_rank_zero_is_prompt_tuning_and_zero_length_is_lowrank_only():
    pt = DePTPrompt(DePTConfig(prompt_length=5, rank=0, max_length=8), d_model=4)
    assert pt.lowrank_A is None and sum(p.numel() for p in pt.parameters()) == 20
    embeds = torch.randn(1, 3, 4)
    out, mask = pt(embeds, torch.ones(1, 3, dtype=torch.long))
    assert torch.equal(out[:, 5:], embeds) and mask.shape == (1, 8)

    lowrank = DePTPrompt(DePTConfig(prompt_length=0, rank=2, max_length=8), d_model=4)
    assert lowrank.prompt_embeddings is None
    torch.nn.init.normal_(lowrank.lowrank_B)
    out, mask = lowrank(embeds, torch.ones(1, 3, dtype=torch.long))
    assert out.shape == (1, 3, 4) and not torch.equal(out, embeds)
    with pytest.raises(ValueError, match="prompt_length > 0 or rank > 0"):
        DePTConfig(prompt_length=0, rank=0)


def test_prompt_inits_from_vocabulary_and_text():
    table = torch.randn(50, 8)
    vocab = init_prompt_from_embeddings(DePTConfig(prompt_length=6, rank=1, max_length=4), table,
                                        generator=torch.Generator().manual_seed(0))
    assert vocab.shape == (6, 8)
    assert all(any(torch.equal(row, t) for t in table) for row in vocab)
    text_cfg = DePTConfig(prompt_length=5, rank=1, max_length=4, prompt_init="text",
                          prompt_init_text="x")
    text = init_prompt_from_embeddings(text_cfg, table, text_token_ids=[7, 9])
    assert torch.equal(text, table[[7, 9, 7, 9, 7]])  # tiled to m
    random_cfg = DePTConfig(prompt_length=5, rank=1, max_length=4, prompt_init="random")
    assert init_prompt_from_embeddings(random_cfg, table) is None
    with pytest.raises(ValueError, match="prompt_init"):
        DePTConfig(prompt_init="zeros")


def test_param_groups_have_separate_learning_rates_and_no_decay():
    prompt = DePTPrompt(DePTConfig(prompt_length=2, rank=2, max_length=4), d_model=4)
    projection = torch.nn.Linear(3, 4)
    groups = dept_param_groups(prompt, 0.3, 1e-4, [
        {"name": "projection", "params": list(projection.parameters()), "lr": 1e-3,
         "weight_decay": 0.01}])
    by_name = {g["name"]: g for g in groups}
    assert by_name["prompt"]["lr"] == 0.3 and by_name["prompt"]["weight_decay"] == 0
    assert by_name["lowrank"]["lr"] == 1e-4 and len(by_name["lowrank"]["params"]) == 2
    assert by_name["projection"]["lr"] == 1e-3
    pt = DePTPrompt(DePTConfig(prompt_length=2, rank=0, max_length=4), d_model=4)
    assert [g["name"] for g in dept_param_groups(pt, 0.3, 1e-4)] == ["prompt"]
    # every DePT parameter is trained, each in exactly one group
    assert sum(len(g["params"]) for g in groups) == 3 + 2


def test_every_dept_parameter_gets_a_gradient():
    prompt = DePTPrompt(DePTConfig(prompt_length=2, rank=2, max_length=6), d_model=4)
    out, _ = prompt(torch.randn(2, 4, 4), torch.ones(2, 4, dtype=torch.long))
    (out ** 2).sum().backward()
    # B starts at zero, yet A gets no gradient only through B: B's gradient must be non-zero
    assert prompt.prompt_embeddings.grad.abs().sum() > 0
    assert prompt.lowrank_B.grad.abs().sum() > 0
