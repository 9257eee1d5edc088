"""Decomposed Prompt Tuning (Shi & Lipani, ICLR 2024): a short soft prompt plus a low-rank
position-wise update of the input token embeddings.

This module knows nothing of vision, data or files: it holds the DePT parameters and the
arithmetic on embedding tensors, so it can be checked in isolation against the paper.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

PROMPT_INITS = ("vocab", "text", "random")


@dataclass
class DePTConfig:
    """Shape and initialisation of one DePT adapter.

    `rank=0` is vanilla prompt tuning and `prompt_length=0` is the low-rank update alone: one
    module covers all three, so their costs and outputs are directly comparable.
    """

    prompt_length: int = 60  # m: soft-prompt tokens prepended to the encoder input
    rank: int = 30  # r: rank of the position-wise update A @ B
    max_length: int = 256  # s: text positions covered by A (rows of A)
    alpha: float = 8.0  # update scale is alpha / sqrt(r), as in the official code
    prompt_init: str = "vocab"  # "vocab" rows, "text" token embeddings (tiled), or "random"
    prompt_init_text: str | None = None  # used with prompt_init="text"
    task_prefix: str = "vqa:"  # prefix the adapter's inputs carry ("vqa:", "caption:", ...)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form metadata, saved as is

    def __post_init__(self) -> None:
        for name in ("prompt_length", "rank", "max_length"):
            if getattr(self, name) < 0:
                raise ValueError(f"DePTConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.prompt_length == 0 and self.rank == 0:
            raise ValueError("DePTConfig needs prompt_length > 0 or rank > 0 (both are 0)")
        if self.rank > 0 and self.max_length == 0:
            raise ValueError("DePTConfig.max_length must be > 0 when rank > 0")
        if self.prompt_init not in PROMPT_INITS:
            raise ValueError(
                f"DePTConfig.prompt_init must be one of {PROMPT_INITS}, got {self.prompt_init!r}"
            )
        if self.prompt_init == "text" and not self.prompt_init_text:
            raise ValueError("DePTConfig.prompt_init='text' needs prompt_init_text")

    @property
    def scale(self) -> float:
        return self.alpha / math.sqrt(self.rank) if self.rank else 0.0

    def num_parameters(self, d_model: int) -> int:
        return dept_budget(self.prompt_length, self.rank, self.max_length, d_model)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


class DePTPrompt(nn.Module):
    """The trainable part of DePT: prompt P (m, d), A (s, r), B (r, d).

    `forward` turns frozen token embeddings E (B, L, d) into [P | E + scale·(A·B)[:L]]. Row i of
    A belongs to text position i, so slicing to the batch's length L keeps dynamic padding exact
    (the official code instead needs every input padded to s).
    """

    def __init__(self, config: DePTConfig, d_model: int, init_prompt: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        self.d_model = d_model
        m, r, s = config.prompt_length, config.rank, config.max_length
        self.prompt_embeddings = nn.Parameter(torch.empty(m, d_model)) if m else None
        self.lowrank_A = nn.Parameter(torch.empty(s, r)) if r else None
        self.lowrank_B = nn.Parameter(torch.zeros(r, d_model)) if r else None
        self._offsets: torch.Tensor | None = None  # inference cache of scale·A·B (s, d)
        self._offsets_key: tuple | None = None
        self.reset_parameters(init_prompt)

    def reset_parameters(self, init_prompt: torch.Tensor | None = None) -> None:
        """Official inits: A kaiming-uniform(a=√5), B zeros, so step 0 equals plain PT."""
        if self.lowrank_A is not None:
            nn.init.kaiming_uniform_(self.lowrank_A, a=math.sqrt(5))
            nn.init.zeros_(self.lowrank_B)
        if self.prompt_embeddings is None:
            return
        with torch.no_grad():
            if init_prompt is None:
                nn.init.normal_(self.prompt_embeddings, std=0.5)
            else:
                if init_prompt.shape != self.prompt_embeddings.shape:
                    raise ValueError(
                        f"init_prompt has shape {tuple(init_prompt.shape)}, expected "
                        f"{tuple(self.prompt_embeddings.shape)}"
                    )
                self.prompt_embeddings.copy_(init_prompt)

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

    def forward(
        self, embeds: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, d), (B, L) → [P | E'] of shape (B, m+L, d) and its mask (B, m+L)."""
        if self.lowrank_A is not None:
            embeds = embeds + self.offsets(embeds.shape[1]).to(embeds.dtype)
        if self.prompt_embeddings is None:
            return embeds, attention_mask
        batch = embeds.shape[0]
        prompt = self.prompt_embeddings.to(embeds.dtype).unsqueeze(0).expand(batch, -1, -1)
        prompt_mask = attention_mask.new_ones(batch, self.config.prompt_length)
        return torch.cat([prompt, embeds], dim=1), torch.cat([prompt_mask, attention_mask], dim=1)


def init_prompt_from_embeddings(
    config: DePTConfig,
    embeddings: torch.Tensor,
    text_token_ids: list[int] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor | None:
    """The starting prompt (m, d) for `config.prompt_init`, taken from a frozen embedding table.

    "vocab": m rows sampled from the vocabulary; "text": the embeddings of a sentence, tiled to m
    (the official default); "random": None, so DePTPrompt draws it.
    """
    m = config.prompt_length
    if m == 0 or config.prompt_init == "random":
        return None
    if config.prompt_init == "vocab":
        rows = torch.randint(0, embeddings.shape[0], (m,), generator=generator)
        return embeddings[rows].detach().clone().float()
    if not text_token_ids:
        raise ValueError("prompt_init='text' needs the init text's token ids")
    ids = (text_token_ids * math.ceil(m / len(text_token_ids)))[:m]
    return embeddings[torch.tensor(ids)].detach().clone().float()


def dept_param_groups(
    prompt: DePTPrompt,
    prompt_lr: float,
    lowrank_lr: float,
    others: Iterable[dict[str, Any]] = (),
) -> list[dict[str, Any]]:
    """Optimizer groups: the prompt and the low-rank pair learn at different rates (the paper's
    two learning rates, e.g. 3e-1 and 1e-4), weight decay 0 on both. `others` (e.g. the visual
    projection's group) are appended; empty groups are dropped."""
    groups = [
        {"name": "prompt", "params": [prompt.prompt_embeddings], "lr": prompt_lr,
         "weight_decay": 0.0},
        {"name": "lowrank", "params": [prompt.lowrank_A, prompt.lowrank_B], "lr": lowrank_lr,
         "weight_decay": 0.0},
        *others,
    ]
    kept = []
    for group in groups:
        params = [p for p in group["params"] if p is not None and p.requires_grad]
        if params:
            kept.append({**group, "params": params})
    return kept
