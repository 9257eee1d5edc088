"""Decomposed Prompt Tuning (Shi & Lipani, ICLR 2024): a short soft prompt plus a low-rank
position-wise update of the input token embeddings, E' = E + scale·(A·B)[:L].

This module knows nothing of vision, data or files: it holds the DePT parameters and the
arithmetic on embedding tensors, so it can be checked in isolation against the paper.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn

from dept_vl.methods.base import check_int, check_number, group, where
from dept_vl.methods.registry import register
from dept_vl.methods.pt import PromptConfig, SoftPrompt

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class DePTConfig(PromptConfig):
    """Shape and initialisation of one DePT adapter.

    `rank=0` is vanilla prompt tuning and `prompt_length=0` is the low-rank update alone: one
    module covers all three, so their costs and outputs are directly comparable.
    """

    method = "dept"
    # P, and the pair A, B (official ranges 3e-1..4e-1 and 1e-4..5e-3)
    lr_roles = {"prompt": 3e-1, "lowrank": 1e-4}
    prompt_length: int = 60  # m: soft-prompt tokens prepended to the encoder input
    rank: int = 30  # r: rank of the position-wise update A @ B
    max_length: int = 256  # s: text positions covered by A (rows of A)
    alpha: float = 8.0  # update scale is alpha / sqrt(r), as in the official code

    def validate(self) -> None:
        super().validate()
        for name in ("rank", "max_length"):
            check_int(self, name, 0)
        check_number(self, "alpha")
        if self.prompt_length == 0 and self.rank == 0:
            raise ValueError("DePTConfig needs prompt_length > 0 or rank > 0 (both are 0)")
        if self.rank > 0 and self.max_length == 0:
            raise where(self).key("max_length").error("must be > 0 when rank > 0")

    @property
    def scale(self) -> float:
        return self.alpha / math.sqrt(self.rank) if self.rank else 0.0

    def num_parameters(self, d_model: int) -> int:
        return dept_budget(self.prompt_length, self.rank, self.max_length, d_model)


def dept_budget(prompt_length: int, rank: int, max_length: int, d_model: int) -> int:
    """Trainable parameters of DePT: m·d + r·(s + d). With r = 0 this is prompt tuning's l·d."""
    return prompt_length * d_model + rank * (max_length + d_model)


def dept_splits(budget: int, d_model: int, max_length: int) -> list[tuple[int, int]]:
    """Every (m, r) with m·d + r·(s+d) exactly equal to `budget`, rank ascending.

    E.g. budget 76,800 (PT l=100 on T5-Base) at s=256 includes (60, 30), (40, 45), (80, 15).
    """
    splits = []
    for rank in range(budget // (max_length + d_model) + 1):
        rest = budget - rank * (max_length + d_model)
        if rest % d_model == 0:
            splits.append((rest // d_model, rank))
    return splits


def dept_split(
    budget: int, d_model: int, max_length: int, *, rank: int | None = None,
    prompt_length: int | None = None,
) -> tuple[int, int]:
    """The (m, r) pair meeting `budget` exactly once one of m or r is fixed."""
    if (rank is None) == (prompt_length is None):
        raise ValueError("dept_split needs exactly one of rank= or prompt_length=")
    if rank is not None:
        rest = budget - rank * (max_length + d_model)
        if rest < 0 or rest % d_model:
            raise ValueError(
                f"no prompt length fits budget {budget} with rank {rank} "
                f"(d_model={d_model}, max_length={max_length}); exact splits: "
                f"{dept_splits(budget, d_model, max_length)[:10]}"
            )
        return rest // d_model, rank
    rest = budget - prompt_length * d_model
    if rest < 0 or rest % (max_length + d_model):
        raise ValueError(
            f"no rank fits budget {budget} with prompt_length {prompt_length} "
            f"(d_model={d_model}, max_length={max_length}); exact splits: "
            f"{dept_splits(budget, d_model, max_length)[:10]}"
        )
    return prompt_length, rest // (max_length + d_model)


@register
class DePTPrompt(SoftPrompt):
    """The trainable part of DePT: prompt P (m, d), A (s, r), B (r, d).

    `forward` turns frozen token embeddings E (B, L, d) into [P | E + scale·(A·B)[:L]]. Row i of
    A belongs to text position i, so slicing to the batch's length L keeps dynamic padding exact
    (the official code instead needs every input padded to s).
    """

    config_class = DePTConfig
    parts = ("prompt", "lowrank")

    def init_extra(self) -> None:
        s, r = self.config.max_length, self.config.rank
        self.lowrank_A = nn.Parameter(torch.empty(s, r)) if r else None
        self.lowrank_B = nn.Parameter(torch.zeros(r, self.d_model)) if r else None
        self._offsets: torch.Tensor | None = None  # inference cache of scale·A·B (s, d)
        self._offsets_key: tuple | None = None
        self.reset_lowrank()

    def reset_lowrank(self) -> None:
        """Official inits: A kaiming-uniform(a=√5), B zeros, so step 0 equals plain PT."""
        if self.lowrank_A is not None:
            nn.init.kaiming_uniform_(self.lowrank_A, a=math.sqrt(5))
            nn.init.zeros_(self.lowrank_B)

    def reset_parameters(self, init_prompt: torch.Tensor | None = None) -> None:
        self.reset_lowrank()
        self.reset_prompt(init_prompt)

    def offsets(self, length: int) -> torch.Tensor:
        """scale·(A·B)[:length], shape (length, d): from the first `length` rows of A while
        training, from a cached full product at inference (no grad), recomputed when A or B
        change."""
        if length > self.config.max_length:
            raise ValueError(
                f"text length {length} exceeds the DePT max_length s={self.config.max_length}; "
                "truncate inputs to max_length"
            )
        a, b = self.lowrank_A, self.lowrank_B
        if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
            return self.config.scale * (a[:length] @ b)
        # inference: scale·A·B once per weight version, so DePT costs what PT with m tokens
        # costs; any in-place change (optimizer step, copy_, load) bumps a tensor's _version
        key = (a._version, b._version, a.data_ptr(), b.data_ptr(), a.device, a.dtype)
        if self._offsets_key != key:
            self._offsets = (self.config.scale * (a @ b)).detach()
            self._offsets_key = key
        return self._offsets[:length]

    def update(self, embeds: torch.Tensor) -> torch.Tensor:
        if self.lowrank_A is None:
            return embeds
        return embeds + self.offsets(embeds.shape[1]).to(embeds.dtype)

    def param_groups(self, lrs: dict[str, float]) -> list[dict[str, Any]]:
        """The prompt and the low-rank pair learn at different rates (the paper's two learning
        rates, e.g. 3e-1 and 1e-4), weight decay 0 on both."""
        return [*super().param_groups(lrs),
                *group("lowrank", [self.lowrank_A, self.lowrank_B], lrs["lowrank"])]

    @classmethod
    def part_of(cls, key: str) -> str:
        return "lowrank" if key in ("lowrank_A", "lowrank_B") else super().part_of(key)

    def fit_source(self, tensors: dict[str, torch.Tensor], source: dict[str, Any],
                   where: str) -> dict[str, torch.Tensor]:
        """A source's A (s_source, r) → this adapter's s rows: row i belongs to text position
        i, so a longer A is truncated and a shorter one zero-extended, with a warning."""
        if "lowrank_A" not in tensors:
            return tensors
        return {**tensors, "lowrank_A": fit_max_length(tensors["lowrank_A"],
                                                       self.config.max_length, where)}


def fit_max_length(lowrank_a: torch.Tensor, max_length: int, source: str) -> torch.Tensor:
    """A (s_source, r) → (max_length, r): truncated, or zero-extended, with a warning."""
    rows = lowrank_a.shape[0]
    if rows == max_length:
        return lowrank_a
    if rows > max_length:
        logger.warning("%s: source max_length s=%d > target s=%d; lowrank_A truncated to its "
                       "first %d rows", source, rows, max_length, max_length)
        return lowrank_a[:max_length].clone()
    logger.warning("%s: source max_length s=%d < target s=%d; lowrank_A zero-extended (text "
                   "positions %d..%d start with no offset)", source, rows, max_length, rows,
                   max_length - 1)
    extended = lowrank_a.new_zeros(max_length, lowrank_a.shape[1])
    extended[:rows] = lowrank_a
    return extended


def dept_param_groups(
    prompt: DePTPrompt,
    prompt_lr: float,
    lowrank_lr: float,
    others: Iterable[dict[str, Any]] = (),
) -> list[dict[str, Any]]:
    """Optimizer groups of one DePT module plus `others` (e.g. the visual projection's group);
    empty groups are dropped."""
    kept = prompt.param_groups({"prompt": prompt_lr, "lowrank": lowrank_lr})
    for extra in others:
        kept += group(extra["name"], list(extra["params"]), extra["lr"],
                      extra.get("weight_decay", 0.0))
    return kept
