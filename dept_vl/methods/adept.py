"""ADePT (Tang et al., ICLR 2025): DePT's position-wise offset A·B replaced by a token-shared
two-layer network on each text embedding,

    e' = e + ReLU(e·W1 + b1)·W2 + b2        (W1: d×r, b1: r, W2: r×d, b2: d)

plus the soft prompt P (m, d) of prompt tuning. W2 and b2 start at zero, so step 0 is prompt
tuning with the same P. An offset depends on the embedding alone, never on its position: there
is no `max_length`-sized table (max_length only truncates text), and a token gets the same
offset wherever it stands.

Inference cost: the network costs 4·d·r FLOPs per text token (58k at d=768, r=19), next to
T5-Base's encoder alone some 170M, so serving ADePT(m, r) costs what PT(m) costs without any
cache. Running it once per distinct embedding row instead (`dedup_at_inference = True`:
`torch.unique` over the rows, the network on those, a gather back; its cost then scales with
the distinct tokens, not batch × length) gives bit-identical outputs on CPU (see ROW_BLOCK),
but finding the distinct rows should cost about what it saves: the network touches each embedding
element ~4r times in fast matmuls, while torch.unique(dim=0) on CPU sorts rows and compares
them one tensor op per row. So the default runs the network on every row; `benchmarks/methods.py`
(`adept_inference`) times both, on distinct and on repeated rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from dept_vl.methods.base import check_int, check_number, group
from dept_vl.methods.registry import register
from dept_vl.methods.pt import PromptConfig, SoftPrompt

# the offset network runs on a multiple of this many rows (zero rows appended): BLAS computes a
# row of a matmul differently when the row count is small or odd (other kernels, or the sum over
# d split across threads; seen on CPU for counts < 28 that are not multiples of 4), so without
# it a token's offset would depend on how many other rows share its batch
ROW_BLOCK = 8


@dataclass(kw_only=True)
class ADePTConfig(PromptConfig):
    """Shape of one ADePT adapter: m prompt tokens and an offset network of hidden width r."""

    method = "adept"
    lr_roles = {"prompt": 3e-1, "offset": 1e-4}  # P, and the offset network (DePT's A·B rate)
    prompt_length: int = 60  # m: soft-prompt tokens prepended to the encoder input
    rank: int = 19  # r: hidden width of the offset network (d → r → d)
    dropout: float = 0.0  # on the network's hidden layer, in training only
    max_length: int = 256  # text truncation only: the offsets have no per-position table

    def validate(self) -> None:
        super().validate()
        check_int(self, "rank", 1)  # r = 0 would leave a lone bias b2: use method "pt"
        check_number(self, "dropout", positive=False, high=1)

    def num_parameters(self, d_model: int) -> int:
        return adept_budget(self.prompt_length, self.rank, d_model)


def adept_budget(prompt_length: int, rank: int, d_model: int) -> int:
    """Trainable parameters of ADePT: m·d + r·(2d + 1) + d (P, then W1 and b1, W2, b2)."""
    return prompt_length * d_model + rank * (2 * d_model + 1) + d_model


class ADePTSplit(NamedTuple):
    prompt_length: int
    rank: int
    difference: int  # adept_budget(prompt_length, rank, d) - the budget asked for


def adept_split(budget: int, d_model: int, *, prompt_length: int | None = None,
                rank: int | None = None) -> ADePTSplit:
    """The (m, r) closest to `budget` once one of m or r is fixed: ADePT's count moves in steps
    of 2d+1 (r) and d (m), so a PT(l) or DePT(m, r) budget is usually met only approximately.
    Ties go to the smaller count. E.g. 76,800 (PT(100), DePT(60, 30) at d=768, s=256) with
    m=60: r=19, 749 parameters short."""
    if (rank is None) == (prompt_length is None):
        raise ValueError("adept_split needs exactly one of rank= or prompt_length=")
    fixed = rank if rank is not None else prompt_length
    if isinstance(fixed, bool) or not isinstance(fixed, int) or fixed < (rank is not None):
        raise ValueError(f"adept_split: rank must be an integer >= 1 and prompt_length >= 0, "
                         f"got rank={rank!r}, prompt_length={prompt_length!r}")
    if rank is not None:
        room = budget - rank * (2 * d_model + 1) - d_model
        candidates = [ADePTSplit(m, rank, 0) for m in _near(room, d_model, low=0)]
    else:
        room = budget - prompt_length * d_model - d_model
        candidates = [ADePTSplit(prompt_length, r, 0)
                      for r in _near(room, 2 * d_model + 1, low=1)]
    best = min(candidates, key=lambda s: (abs(_difference(s, budget, d_model)),
                                          _difference(s, budget, d_model)))
    return best._replace(difference=_difference(best, budget, d_model))


def adept_splits(budget: int, d_model: int, tolerance: int | None = None) -> list[ADePTSplit]:
    """For each rank r, the m whose count is closest to `budget`, rank ascending; with
    `tolerance`, only those within it. The count is ≡ r (mod d), so an exact split needs
    r ≡ budget (mod d): at budget 76,800 and d=768 none has r < 768, while m=61, r=19 is 19
    over."""
    splits = []
    for rank in range(1, max(budget - d_model, 0) // (2 * d_model + 1) + 1):
        split = adept_split(budget, d_model, rank=rank)
        if tolerance is None or abs(split.difference) <= tolerance:
            splits.append(split)
    return splits


def _near(room: int, step: int, low: int) -> list[int]:
    """The counts n >= low whose n·step is just below and just above `room`."""
    below = room // step
    return sorted({max(below, low), max(below + 1, low)})


def _difference(split: ADePTSplit, budget: int, d_model: int) -> int:
    return adept_budget(split.prompt_length, split.rank, d_model) - budget


@register
class ADePTPrompt(SoftPrompt):
    """The trainable part of ADePT: P (m, d) and the offset network d → r → d."""

    config_class = ADePTConfig
    parts = ("prompt", "offset")
    # True: without gradients, the network runs once per distinct embedding row (see above)
    dedup_at_inference: ClassVar[bool] = False

    def init_extra(self) -> None:
        self.offset_in = nn.Linear(self.d_model, self.config.rank)  # W1, b1
        self.offset_out = nn.Linear(self.config.rank, self.d_model)  # W2, b2
        self.reset_offset()

    def reset_offset(self) -> None:
        """W1, b1 as nn.Linear draws them; W2, b2 zeros, so the offsets start at exactly 0."""
        self.offset_in.reset_parameters()
        nn.init.zeros_(self.offset_out.weight)
        nn.init.zeros_(self.offset_out.bias)

    def reset_parameters(self, init_prompt: torch.Tensor | None = None) -> None:
        self.reset_offset()
        self.reset_prompt(init_prompt)

    def offset_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """ReLU(x·W1 + b1)·W2 + b2 for each row x of `rows` (n, d), dropout on the hidden
        layer in training. Rows are padded to a multiple of ROW_BLOCK so a row's result does
        not depend on n."""
        count = rows.shape[0]
        x = rows.to(self.offset_in.weight.dtype)
        if count % ROW_BLOCK:
            x = F.pad(x, (0, 0, 0, ROW_BLOCK - count % ROW_BLOCK))
        hidden = F.dropout(torch.relu(self.offset_in(x)), self.config.dropout, self.training)
        return self.offset_out(hidden)[:count]

    def dedup(self) -> bool:
        """Whether this call may run the network once per distinct row: not while gradients
        flow into it, and not with active dropout (each position draws its own mask)."""
        if not self.dedup_at_inference or (self.training and self.config.dropout > 0):
            return False
        return not (torch.is_grad_enabled()
                    and any(p.requires_grad for p in self.offset_parameters()))

    def update(self, embeds: torch.Tensor) -> torch.Tensor:
        """E (B, L, d) → E + offsets, each row's offset from that row alone."""
        rows = embeds.reshape(-1, embeds.shape[-1])
        if self.dedup():
            distinct, index = torch.unique(rows, dim=0, return_inverse=True)
            offsets = self.offset_rows(distinct)[index]
        else:
            offsets = self.offset_rows(rows)
        return embeds + offsets.view(embeds.shape).to(embeds.dtype)

    def offset_parameters(self) -> list[nn.Parameter]:
        return [*self.offset_in.parameters(), *self.offset_out.parameters()]

    def param_groups(self, lrs: dict[str, float]) -> list[dict[str, Any]]:
        """The prompt at its rate, the network at the `offset` rate, weight decay 0 on both,
        as for DePT."""
        return [*super().param_groups(lrs),
                *group("offset", self.offset_parameters(), lrs["offset"])]

    @classmethod
    def part_of(cls, key: str) -> str:
        if key.startswith(("offset_in.", "offset_out.")):
            return "offset"
        return super().part_of(key)
