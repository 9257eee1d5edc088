"""Prompt tuning (Lester et al., 2021): a soft prompt P (l, d) prepended to the frozen text
embeddings. `SoftPrompt` is also the prompt half of DePT and ADePT."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dept_vl.checks import Choice, checked
from dept_vl.methods.base import (
    PROMPT_INITS, MethodConfig, MethodModule, check_int, group, where,
)
from dept_vl.methods.registry import register

if TYPE_CHECKING:
    from dept_vl.model import VLT5


@dataclass(kw_only=True)
class PromptConfig(MethodConfig):
    """The soft-prompt fields shared by pt, dept and adept."""

    optional = ("prompt_init", "prompt_init_text")
    lr_roles = {"prompt": 3e-1}  # P (the official range 3e-1..4e-1)

    prompt_length: int = 60  # tokens prepended to the encoder input
    prompt_init: str = "vocab"  # "vocab" rows, "text" token embeddings (tiled), or "random"
    prompt_init_text: str | None = None  # used with prompt_init="text"

    def validate(self) -> None:
        check_int(self, "prompt_length", 0)
        checked(str | None, None, self.prompt_init_text, where(self).key("prompt_init_text"),
                strict=True)
        checked(str, Choice(PROMPT_INITS), self.prompt_init, where(self).key("prompt_init"),
                strict=True)
        if self.prompt_init == "text" and not self.prompt_init_text:
            raise where(self).key("prompt_init").error("'text' needs prompt_init_text")

    def num_parameters(self, d_model: int) -> int:
        """Trainable parameters of the method at width d_model (the prompt alone: m·d)."""
        return self.prompt_length * d_model


@dataclass(kw_only=True)
class PTConfig(PromptConfig):
    method = "pt"

    def validate(self) -> None:
        super().validate()
        check_int(self, "prompt_length", 1)

    @classmethod
    def legacy(cls, values: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        # dept_vl 0.1 saved pt adapters as DePT with rank 0 (and alpha, unused)
        if values.get("rank", 0) != 0:
            raise ValueError(f"key 'method' is 'pt' but key 'rank' is {values['rank']!r} (a pt "
                             "adapter has rank 0; a dept adapter has method 'dept')")
        return kwargs


def init_prompt_from_embeddings(
    config: PromptConfig,
    embeddings: torch.Tensor,
    text_token_ids: list[int] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor | None:
    """The starting prompt (m, d) for `config.prompt_init`, taken from a frozen embedding table.

    "vocab": m rows sampled from the vocabulary; "text": the embeddings of a sentence, tiled to m
    (the official default); "random": None, so the module draws it.
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


def initial_prompt(config: PromptConfig, host: "VLT5", generator: torch.Generator | None
                   ) -> torch.Tensor | None:
    """`init_prompt_from_embeddings` on the host's frozen input embeddings."""
    text_ids = None
    if config.prompt_init == "text":
        text_ids = host.tokenizer(config.prompt_init_text, add_special_tokens=False)["input_ids"]
    return init_prompt_from_embeddings(config, host.t5.get_input_embeddings().weight, text_ids,
                                       generator)


class SoftPrompt(MethodModule):
    """P (m, d), prepended after `update` has changed the text embeddings (a no-op here)."""

    parts = ("prompt",)

    def __init__(self, config: PromptConfig, d_model: int, init_prompt: torch.Tensor | None = None):
        super().__init__(config, d_model)
        m = config.prompt_length
        self.prompt_embeddings = nn.Parameter(torch.empty(m, d_model)) if m else None
        self.init_extra()
        self.reset_prompt(init_prompt)

    def init_extra(self) -> None:
        """Create (and initialise) what the method adds besides P, before P is drawn."""

    @classmethod
    def build(cls, config: PromptConfig, host: "VLT5", generator: torch.Generator | None,
              name: str = "default") -> "SoftPrompt":
        return cls(config, host.d_model, initial_prompt(config, host, generator))

    @classmethod
    def budget(cls, config: PromptConfig, d_model: int) -> int:
        return config.num_parameters(d_model)

    def reset_prompt(self, init_prompt: torch.Tensor | None = None) -> None:
        if self.prompt_embeddings is None:
            return
        with torch.no_grad():
            if init_prompt is None:
                nn.init.normal_(self.prompt_embeddings, std=0.5)
                return
            if init_prompt.shape != self.prompt_embeddings.shape:
                raise ValueError(f"init_prompt has shape {tuple(init_prompt.shape)}, expected "
                                 f"{tuple(self.prompt_embeddings.shape)}")
            self.prompt_embeddings.copy_(init_prompt)

    def update(self, embeds: torch.Tensor) -> torch.Tensor:
        """The method's change to the text embeddings E (B, L, d); prompt tuning: none."""
        return embeds

    def apply(self, embeds: torch.Tensor, mask: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, d), (B, L) → [P | update(E)] of shape (B, m+L, d) and its mask (B, m+L)."""
        embeds = self.update(embeds)
        if self.prompt_embeddings is None:
            return embeds, mask
        batch = embeds.shape[0]
        prompt = self.prompt_embeddings.to(embeds.dtype).unsqueeze(0).expand(batch, -1, -1)
        prompt_mask = mask.new_ones(batch, self.config.prompt_length)
        return torch.cat([prompt, embeds], dim=1), torch.cat([prompt_mask, mask], dim=1)

    def param_groups(self, lrs: dict[str, float]) -> list[dict[str, Any]]:
        return group("prompt", [self.prompt_embeddings], lrs["prompt"])

    @classmethod
    def part_of(cls, key: str) -> str:
        if key == "prompt_embeddings":
            return "prompt"
        raise KeyError(key)


@register
class PromptTuning(SoftPrompt):
    """Vanilla prompt tuning: P alone."""

    config_class = PTConfig
